package main

import (
	"bytes"
	"context"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"

	jose "github.com/go-jose/go-jose/v4"
)

// TestPrefetchThenCacheVerify warms a cache with `provgate prefetch`
// against a registry in marketplace mode, checks it with `provgate cache
// verify`, damages one file and checks that verify finds and removes it.
func TestPrefetchThenCacheVerify(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	env := &demoEnv{dir: dir, logger: slog.New(slog.DiscardHandler)}
	defer env.close()
	s3c, err := env.startOrigin()
	if err != nil {
		t.Fatal(err)
	}
	if err := env.startRegistry(ctx, s3c); err != nil {
		t.Fatal(err)
	}
	ckey, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	client, err := contract.NewClient(env.regURL)
	if err != nil {
		t.Fatal(err)
	}
	lkey, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	c, err := createDemoContract(ctx, client, ckey, lkey)
	if err != nil {
		t.Fatal(err)
	}
	enrolment, _, _, err := demoEnrol(filepath.Join(dir, "state"), lkey, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	const n = 12
	if _, err := env.contribute(ctx, client, s3c, c, ckey, n); err != nil {
		t.Fatal(err)
	}

	cacheDir := filepath.Join(dir, "cache")
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"prefetch", "--registry", env.regURL, "--contract", c.ContractID, "--purpose", demoPurpose,
		"--state-dir", filepath.Join(dir, "state"), "--cache-dir", cacheDir, "--cache-size", "64MiB", "--concurrency", "4", "--enrolment", enrolment,
		"--log-level", "error"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("prefetch exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	if want := "cache: 12 entries"; !strings.Contains(stdout.String(), want) {
		t.Errorf("prefetch stdout lacks %q:\n%s", want, stdout.String())
	}
	if want := "12/12 objects"; !strings.Contains(stderr.String(), want) {
		t.Errorf("progress on stderr lacks %q:\n%s", want, stderr.String())
	}

	stdout.Reset()
	stderr.Reset()
	if code := run(ctx, []string{"cache", "verify", "--cache-dir", cacheDir}, &stdout, &stderr); code != 0 {
		t.Fatalf("cache verify exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	if want := "checked 12 entries"; !strings.Contains(stdout.String(), want) || !strings.Contains(stdout.String(), "0 damaged") {
		t.Errorf("cache verify output lacks %q and 0 damaged:\n%s", want, stdout.String())
	}

	// Damage one file (same size): verify removes it and exits 1.
	var victim string
	filepath.WalkDir(filepath.Join(cacheDir, "objects"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && victim == "" {
			victim = p
		}
		return nil
	})
	b, err := os.ReadFile(victim)
	if err != nil || len(b) == 0 {
		t.Fatalf("read %s: %v", victim, err)
	}
	b[0] ^= 0xff
	os.WriteFile(victim, b, 0o600)
	stdout.Reset()
	stderr.Reset()
	if code := run(ctx, []string{"cache", "verify", "--cache-dir", cacheDir, "--quiet"}, &stdout, &stderr); code != 1 {
		t.Errorf("cache verify of a damaged cache exited %d, want 1\n%s%s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "1 damaged") || !strings.Contains(stdout.String(), "removed: ") {
		t.Errorf("cache verify did not report the damaged entry:\n%s", stdout.String())
	}
	if _, err := os.Stat(victim); err == nil {
		t.Error("damaged file still on disk")
	}
	cc, err := cache.Open(cache.Config{Dir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	if s := cc.Stats(); s.Entries != n-1 {
		t.Errorf("%d entries after verify, want %d", s.Entries, n-1)
	}
	cc.Close()
}

func TestFormatProgress(t *testing.T) {
	got := formatProgress("c1", cache.Progress{Objects: 50, TotalObjects: 200, Bytes: 256 << 20, TotalBytes: 1 << 30, Elapsed: 4 * time.Second})
	for _, want := range []string{"c1 [======>", " 25%", "256.0 MiB/1.0 GiB", "50/200 objects", "64.0 MiB/s", "ETA 12s"} {
		if !strings.Contains(got, want) {
			t.Errorf("progress %q lacks %q", got, want)
		}
	}
	done := formatProgress("c1", cache.Progress{Objects: 3, TotalObjects: 3, Bytes: 10, TotalBytes: 10, Failed: 1, Elapsed: time.Second})
	if !strings.Contains(done, "100%") || !strings.Contains(done, "ETA 0s") || !strings.Contains(done, "1 FAILED") {
		t.Errorf("final progress %q", done)
	}
}
