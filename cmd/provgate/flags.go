package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// errHelp is returned when -h was asked for; it exits 0.
var errHelp = errors.New("help requested")

// newFlagSet makes a flag set for a subcommand that prints its usage to
// stderr.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("provgate "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: provgate %s\n\nFlags (each also read from PROVGATE_<FLAG>):\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args, first applying PROVGATE_<FLAG> environment
// variables (--cache-size reads PROVGATE_CACHE_SIZE); flags on the command
// line win. A -h gives errHelp, a bad flag a usageError.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if fs.Lookup("config") != nil {
		if path := configPath(args); path != "" {
			if err := applyConfigFile(fs, path); err != nil {
				return &usageError{msg: err.Error()}
			}
		}
	}
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		env := "PROVGATE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = &usageError{msg: fmt.Sprintf("%s: %v", env, err)}
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return &usageError{}
	}
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }

// Set appends; a comma-separated value (as from the environment) adds each.
func (s *stringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}

// configPath finds --config in args, else PROVGATE_CONFIG.
func configPath(args []string) string {
	for i, a := range args {
		for _, p := range []string{"--config", "-config"} {
			if a == p && i+1 < len(args) {
				return args[i+1]
			}
			if v, ok := strings.CutPrefix(a, p+"="); ok {
				return v
			}
		}
		if a == "--" {
			break
		}
	}
	return os.Getenv("PROVGATE_CONFIG")
}

// applyConfigFile sets flags from a JSON object whose keys are flag names
// ({"cache-size": "10GiB", "contract": ["a", "b"]}). The order of
// precedence is: command line, then PROVGATE_* environment, then the file,
// then defaults. Unknown keys are an error, so a typo is never ignored.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	for k, raw := range m {
		if k == "config" || fs.Lookup(k) == nil {
			return fmt.Errorf("config %s: unknown setting %q", path, k)
		}
		var v any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("config %s: %s: %w", path, k, err)
		}
		var vals []string
		if list, ok := v.([]any); ok {
			for _, e := range list {
				vals = append(vals, fmt.Sprint(e))
			}
		} else {
			vals = []string{fmt.Sprint(v)}
		}
		for _, v := range vals {
			if err := fs.Set(k, v); err != nil {
				return fmt.Errorf("config %s: %s: %w", path, k, err)
			}
		}
	}
	return nil
}
