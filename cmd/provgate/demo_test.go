package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemoOnce runs the README's run command in-process and checks what a
// user reads in its report: the log verified, both epochs read, cache hits
// on the second epoch, and the registry's metering equal to what was read.
func TestDemoOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if code := run(ctx, []string{"demo", "--once", "--samples", "30", "--dir", t.TempDir()}, &stdout, &stderr); code != 0 {
		t.Fatalf("demo exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"licensee  did:example:licensee-acme: up to 100000 samples",
		"did:example:licensee-acme enrolled sidecar key",
		"log verified, 31 entries",
		"witness   cosigned that checkpoint",
		"epoch 1   read 30 samples",
		"epoch 2   read 30 samples",
		"every sha256 checked",
		"metering, as the registry recorded it",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	// The second epoch is served from the cache: 30 misses, 30 hits.
	if m := regexp.MustCompile(`cache\s+(\d+) hits, (\d+) misses`).FindStringSubmatch(out); m == nil || m[1] != "30" || m[2] != "30" {
		t.Errorf("cache line: got %v, want 30 hits and 30 misses:\n%s", m, out)
	}
	// Per-epoch rows: epoch, billed reads, billed bytes, billed samples, cost.
	rows := regexp.MustCompile(`(?m)^\s+([12])\s+(\d+)\s+(\d+)\s+(\d+)\s+\$(\S+)$`).FindAllStringSubmatch(out, -1)
	if len(rows) != 2 {
		t.Fatalf("want 2 epoch rows in the metering report, got %d:\n%s", len(rows), out)
	}
	read := regexp.MustCompile(`epoch \d   read 30 samples \((\d+) bytes\)`).FindStringSubmatch(out)
	if read == nil {
		t.Fatalf("no bytes figure for epoch 1:\n%s", out)
	}
	for _, r := range rows {
		if r[2] != "30" || r[4] != "30" {
			t.Errorf("epoch %s: registry billed %s reads and %s samples, want 30 and 30", r[1], r[2], r[4])
		}
		if r[3] != read[1] {
			t.Errorf("epoch %s: registry recorded %s bytes, the client read %s", r[1], r[3], read[1])
		}
		// 30 samples at $0.0005 each.
		if cost, _ := strconv.ParseFloat(r[5], 64); cost != 0.015 {
			t.Errorf("epoch %s: cost $%s, want $0.015", r[1], r[5])
		}
	}
}
