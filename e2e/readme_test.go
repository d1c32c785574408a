package e2e_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/provgate/provgate/internal/clicheck"
	"github.com/provgate/provgate/internal/testenv"
)

// TestREADMECommands checks every provgate command line in the README
// against the real binary's subcommands and flags, and that the two
// commands it promises are the ones the project runs.
func TestREADMECommands(t *testing.T) {
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	bin := provgateBinary(t)
	checked := 0
	inCode := false
	for _, line := range strings.Split(string(readme), "\n") {
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
			continue
		}
		line = strings.TrimSpace(line)
		if !inCode || !strings.HasPrefix(line, "provgate ") {
			continue
		}
		clicheck.CheckArgs(t, bin, strings.Fields(line)[1:])
		checked++
	}
	if checked < 5 {
		t.Errorf("checked only %d provgate command lines in the README", checked)
	}
	for _, want := range []string{"go run ./cmd/provgate demo --once", "./scripts/test.sh"} {
		if !strings.Contains(string(readme), "    "+want+"\n") {
			t.Errorf("README does not give the command %q", want)
		}
	}
	ci, err := os.ReadFile(filepath.Join(root, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ci), "./scripts/test.sh") {
		t.Errorf(".ci/run does not call ./scripts/test.sh:\n%s", ci)
	}
}

// TestREADMEServeFlagTable checks that the README's `provgate serve` flag
// table lists exactly the flags `provgate serve -h` prints: none missing,
// none that the binary does not have.
func TestREADMEServeFlagTable(t *testing.T) {
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	table := serveFlagTable(t, string(readme))
	binary := clicheck.Flags(t, provgateBinary(t), "serve")
	for f := range binary {
		if !table[f] {
			t.Errorf("provgate serve -h has --%s, the README's flag table does not", f)
		}
	}
	for f := range table {
		if !binary[f] {
			t.Errorf("the README's flag table has --%s, provgate serve -h does not", f)
		}
	}
}

var tableFlag = regexp.MustCompile("`--([a-z0-9][a-z0-9-]*)")

// serveFlagTable returns the flags named in the first column of the table
// under the "Configuration (`provgate serve`)" heading.
func serveFlagTable(t *testing.T, readme string) map[string]bool {
	t.Helper()
	_, section, ok := strings.Cut(readme, "## Configuration (`provgate serve`)")
	if !ok {
		t.Fatal("README has no serve configuration section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	flags := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `--") {
			continue
		}
		first := strings.SplitN(strings.ReplaceAll(line, `\|`, "/"), "|", 3)[1]
		for _, m := range tableFlag.FindAllStringSubmatch(first, -1) {
			flags[m[1]] = true
		}
	}
	if len(flags) < 10 {
		t.Fatalf("found only %d flags in the README's serve table", len(flags))
	}
	return flags
}
