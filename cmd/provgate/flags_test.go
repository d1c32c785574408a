package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFlagPrecedence: command line beats environment beats config file
// beats default, for lists too (a list is replaced, never merged), and bad
// config values are refused.
func TestFlagPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.json")
	os.WriteFile(cfg, []byte(`{"contract": ["from-file"], "cache-size": "1GiB", "allow-host": ["file.example"], "purpose": "p-file"}`), 0o600)
	t.Setenv("PROVGATE_CONTRACT", "from-env")
	t.Setenv("PROVGATE_PURPOSE", "p-env")
	fs := newFlagSet("serve", "", io.Discard)
	f := addServeFlags(fs)
	if err := parseFlags(fs, []string{"--config", cfg, "--contract", "from-cli", "--contract", "second-cli"}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.contracts, ","); got != "from-cli,second-cli" {
		t.Errorf("contracts %q, want the command line's only", got)
	}
	if f.purpose != "p-env" {
		t.Errorf("purpose %q, want the environment's", f.purpose)
	}
	if got := strings.Join(f.allowHosts, ","); got != "file.example" || f.cacheSize != 1<<30 {
		t.Errorf("file settings: allow %q cache %d", got, f.cacheSize)
	}
	for _, bad := range []string{`{"purpose": null}`, `{"purpose": ["a"]}`, `{"contract": [{"x": 1}]}`, `{"purpsoe": "x"}`, `not json`} {
		os.WriteFile(cfg, []byte(bad), 0o600)
		fs := newFlagSet("serve", "", io.Discard)
		addServeFlags(fs)
		var ue *usageError
		if err := parseFlags(fs, []string{"--config", cfg}); !errors.As(err, &ue) {
			t.Errorf("config %s: got %v, want a usage error", bad, err)
		}
	}
}
