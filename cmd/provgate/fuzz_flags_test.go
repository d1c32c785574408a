package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseSize: parseSize never panics, never returns a negative size, and
// accepts plain byte counts exactly.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"10GiB", "512MiB", "1.5G", "64k", "0", "-1", "1e3", "NaN", "inf", "99999999999999TiB", " 7 mb "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s)
		if err == nil && n < 0 {
			t.Fatalf("parseSize(%q) = %d", s, n)
		}
	})
}

// FuzzConfigFile: a config file either sets known flags or is refused with
// an error; unknown settings never pass silently.
func FuzzConfigFile(f *testing.F) {
	f.Add([]byte(`{"cache-size": "10GiB", "contract": ["a", "b"], "listen": "127.0.0.1:1"}`))
	f.Add([]byte(`{"cache-szie": "1G"}`))
	f.Add([]byte(`{"contract": [1, {"x": 2}], "verify-on-hit": true}`))
	f.Add([]byte(`[]`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(dir, "c.json")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		fs := flag.NewFlagSet("fuzz", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		addServeFlags(fs)
		known := map[string]bool{}
		fs.VisitAll(func(fl *flag.Flag) { known[fl.Name] = true })
		if err := applyConfigFile(fs, path); err != nil {
			return
		}
		// Accepted: every key must have been a known setting.
		var set []string
		fs.Visit(func(fl *flag.Flag) { set = append(set, fl.Name) })
		for _, name := range set {
			if !known[name] || name == "config" {
				t.Fatalf("config file set %q", name)
			}
		}
	})
}
