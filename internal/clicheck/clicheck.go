// Package clicheck checks command lines written in the examples (pod
// manifests, compose files, walkthroughs) against the flags of the real
// provgate binary, built from this module, so that a renamed flag breaks a
// test instead of a user's deployment.
package clicheck

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/provgate/provgate/internal/testenv"
)

// Build compiles ./cmd/provgate into dir and returns the binary's path.
func Build(tb testing.TB, dir string) string {
	tb.Helper()
	root, err := testenv.ModuleRoot()
	if err != nil {
		tb.Fatal(err)
	}
	bin := filepath.Join(dir, "provgate")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/provgate")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build ./cmd/provgate: %v\n%s", err, out)
	}
	return bin
}

var flagLine = regexp.MustCompile(`^\s+-{1,2}([A-Za-z0-9][A-Za-z0-9-]*)`)

// Flags returns the flags `provgate <subcommand...> -h` documents. It fails
// the test if the subcommand does not exist.
func Flags(tb testing.TB, bin string, subcommand ...string) map[string]bool {
	tb.Helper()
	args := append(append([]string{}, subcommand...), "-h")
	cmd := exec.Command(bin, args...)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("provgate %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	flags := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := flagLine.FindStringSubmatch(sc.Text()); m != nil {
			flags[m[1]] = true
		}
	}
	if len(flags) == 0 {
		tb.Fatalf("provgate %s lists no flags:\n%s", strings.Join(args, " "), out)
	}
	return flags
}

// cleanEnv is the environment without PROVGATE_ settings, which would
// change what -h parses.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PROVGATE_") {
			env = append(env, kv)
		}
	}
	return env
}

// twoWord are the subcommands that take a verb.
var twoWord = map[string]bool{"contract": true, "meter": true, "cache": true, "ca": true, "verify": true, "audit": true, "registry": true}

// Split splits a provgate command line (without the program name) into its
// subcommand words and its flag names ("--cache-size=1G" and "--cache-size
// 1G" both give "cache-size").
func Split(args []string) (subcommand, flags []string) {
	if len(args) == 0 {
		return nil, nil
	}
	subcommand = []string{args[0]}
	rest := args[1:]
	if twoWord[args[0]] && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		subcommand = append(subcommand, rest[0])
		rest = rest[1:]
	}
	for _, a := range rest {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name := strings.TrimLeft(a, "-")
		if i := strings.IndexByte(name, '='); i >= 0 {
			name = name[:i]
		}
		flags = append(flags, name)
	}
	return subcommand, flags
}

// CheckArgs fails the test if args (a provgate command line without the
// program name) names a subcommand or flag the binary does not have. It
// returns the flags used, by name.
func CheckArgs(tb testing.TB, bin string, args []string) map[string]bool {
	tb.Helper()
	sub, used := Split(args)
	if len(sub) == 0 {
		tb.Fatal("empty provgate command line")
	}
	known := Flags(tb, bin, sub...)
	got := map[string]bool{}
	for _, f := range used {
		if !known[f] {
			tb.Errorf("provgate %s: unknown flag --%s (binary has %v)", strings.Join(sub, " "), f, keys(known))
		}
		got[f] = true
	}
	return got
}

// CheckEnv fails the test if a PROVGATE_<FLAG> variable names no flag of
// the subcommand.
func CheckEnv(tb testing.TB, bin string, subcommand []string, env []string) {
	tb.Helper()
	known := Flags(tb, bin, subcommand...)
	for _, name := range env {
		f, ok := strings.CutPrefix(name, "PROVGATE_")
		if !ok {
			continue
		}
		flag := strings.ReplaceAll(strings.ToLower(f), "_", "-")
		if !known[flag] {
			tb.Errorf("%s: provgate %s has no flag --%s", name, strings.Join(subcommand, " "), flag)
		}
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
