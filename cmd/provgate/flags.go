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
			resetList(f) // the environment replaces a list from the file
			if err := fs.Set(f.Name, v); err != nil {
				envErr = &usageError{msg: fmt.Sprintf("%s: %v", env, err)}
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	// A list named on the command line replaces the environment's and the
	// file's, like any other flag.
	for _, name := range flagNames(args) {
		if f := fs.Lookup(name); f != nil {
			resetList(f)
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return &usageError{}
	}
	return nil
}

// resetList empties a list flag before a higher-precedence source sets it.
func resetList(f *flag.Flag) {
	if l, ok := f.Value.(*stringList); ok {
		*l = nil
	}
}

// flagNames lists the flag names given in args (up to "--").
func flagNames(args []string) []string {
	var names []string
	for _, a := range args {
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			continue
		}
		name := strings.TrimLeft(a, "-")
		name, _, _ = strings.Cut(name, "=")
		names = append(names, name)
	}
	return names
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
		_, isList := fs.Lookup(k).Value.(*stringList)
		var vals []string
		switch t := v.(type) {
		case []any:
			if !isList {
				return fmt.Errorf("config %s: %s takes one value, not a list", path, k)
			}
			for _, e := range t {
				if !scalar(e) {
					return fmt.Errorf("config %s: %s: list items must be strings, numbers or booleans", path, k)
				}
				vals = append(vals, fmt.Sprint(e))
			}
		default:
			if !scalar(t) {
				return fmt.Errorf("config %s: %s must be a string, number or boolean", path, k)
			}
			vals = []string{fmt.Sprint(t)}
		}
		for _, v := range vals {
			if err := fs.Set(k, v); err != nil {
				return fmt.Errorf("config %s: %s: %w", path, k, err)
			}
		}
	}
	return nil
}

func scalar(v any) bool {
	switch v.(type) {
	case string, json.Number, bool:
		return true
	}
	return false
}

// aliasFlag is an old name of a flag, kept working: setting it sets the
// flag it names.
type aliasFlag struct{ f *flag.Flag }

func (a aliasFlag) String() string {
	if a.f == nil {
		return ""
	}
	return a.f.Value.String()
}

func (a aliasFlag) Set(v string) error { return a.f.Value.Set(v) }
