package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	fnote "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/witness"
)

// TestWitnessCommand runs `provgate witness` as a user would: it makes its
// key file, prints its verifier key and a loopback URL, and cosigns a
// registry-signed checkpoint with that key; a restart keeps the key.
func TestWitnessCommand(t *testing.T) {
	dir := t.TempDir()
	skey, vkey, err := note.GenerateKey(rand.Reader, "registry.test")
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"witness", "--listen", "127.0.0.1:0", "--key", filepath.Join(dir, "w.key"), "--db", filepath.Join(dir, "w.db"),
		"--name", "witness.test/cli", "--log", "registry.test/log/*=" + vkey}
	start := func() (string, string, func()) {
		ctx, cancel := context.WithCancel(context.Background())
		out := &testenv.SyncBuffer{}
		done := make(chan int, 1)
		go func() { done <- run(ctx, args, out, io.Discard) }()
		re := regexp.MustCompile(`witness verifier key: (\S+)\nprovgate witness on (http://127\.0\.0\.1:\d+) `)
		deadline := time.Now().Add(10 * time.Second)
		for re.FindStringSubmatch(out.String()) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("no verifier key and URL printed: %q", out.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
		m := re.FindStringSubmatch(out.String())
		return m[1], m[2], func() {
			cancel()
			if code := <-done; code != 0 {
				t.Errorf("witness exited %d", code)
			}
		}
	}
	wvkey, url, stop := start()
	if fi, err := os.Stat(filepath.Join(dir, "w.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v: want mode 0600", fi, err)
	}
	signer, err := verify.NewCheckpointSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := signer.Sign("registry.test/log/did:example:c1", 0, rfc6962.DefaultHasher.EmptyRoot())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(url+"/add-checkpoint", "text/plain", bytes.NewReader((&witness.AddCheckpoint{Checkpoint: cp}).Marshal()))
	if err != nil {
		t.Fatal(err)
	}
	sigs, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	v, err := fnote.NewVerifierForCosignatureV1(wvkey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := note.Open(append(cp, sigs...), note.VerifierList(v)); resp.StatusCode != 200 || err != nil {
		t.Fatalf("add-checkpoint: %d %q: %v", resp.StatusCode, sigs, err)
	}
	stop()
	again, _, stop := start()
	stop()
	if again != wvkey {
		t.Fatalf("restart printed key %s, want the same %s", again, wvkey)
	}
	// The logs can come from a config file instead of flags.
	cfgFile := filepath.Join(dir, "witness.json")
	if err := os.WriteFile(cfgFile, []byte(`{"log": ["registry.test/log/*=`+vkey+`"], "name": "witness.test/cli"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	args = []string{"witness", "--listen", "127.0.0.1:0", "--key", filepath.Join(dir, "w.key"), "--db", filepath.Join(dir, "w.db"), "--config", cfgFile}
	fromFile, _, stop := start()
	stop()
	if fromFile != wvkey {
		t.Fatalf("witness configured from a file printed key %s, want %s", fromFile, wvkey)
	}
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"witness", "--key", "k", "--db", "d"}, io.Discard, &stderr); code != 2 {
		t.Errorf("witness without --log exited %d, want 2 (%s)", code, stderr.String())
	}
	if code := run(context.Background(), []string{"registry", "--db", filepath.Join(dir, "r.db"), "--key", filepath.Join(dir, "r.jwk"),
		"--witness", "http://127.0.0.1:1"}, io.Discard, &stderr); code != 2 {
		t.Errorf("registry --witness without a key exited %d, want 2", code)
	}
}
