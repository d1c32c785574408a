package e2e_test

import (
	"os"
	"path/filepath"
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
