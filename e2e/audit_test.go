package e2e_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"

	"github.com/provgate/provgate/audit"
	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// TestAuditBundleEndToEnd: two epochs of real traffic through a sidecar,
// `provgate audit export`, then `provgate audit verify` with the registry
// unreachable passes; each edit an interested party could make to the
// bundle fails it, naming what broke.
func TestAuditBundleEndToEnd(t *testing.T) {
	e := newEnv(t, envOpt{})
	names := []string{"a.bin", "b.bin", "c.bin"}
	for _, n := range names {
		e.put(n, randomBytes(t, 1000), true)
	}
	sc := e.sidecar(nil)
	for epoch := int64(1); epoch <= 2; epoch++ {
		for _, n := range names {
			if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, n, epoch, "train"); code != 200 {
				t.Fatalf("epoch %d %s: %d", epoch, n, code)
			}
		}
		drain(t, sc, e.c.ContractID)
	}
	// Another contract of the same registry, for a swapped checkpoint.
	other := e.reg.CreateContract(t, registrytest.NewContract("did:example:e2e-audit-other", e.bucket, e.alice))
	otherCP, err := e.client.Checkpoint(context.Background(), other.ContractID)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	bundlePath := filepath.Join(dir, "bundle.json")
	ledger := filepath.Join(sc.StateDir(), sidecar.LedgerFile)
	export := func(rows string) *audit.Bundle {
		t.Helper()
		out, stderr, code := runProvgate(t, "audit", "export", "--registry", e.front.URL(), "--ledger", ledger,
			"--contract", e.c.ContractID, "--rows", rows, "-o", bundlePath)
		if code != 0 {
			t.Fatalf("audit export: exit %d\n%s%s", code, out, stderr)
		}
		b, err := os.ReadFile(bundlePath)
		if err != nil {
			t.Fatal(err)
		}
		bu, err := audit.ParseBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		return bu
	}
	// Disclose row 2 and every row of the batch that holds row 5 (the
	// syncer cut the batches: ask the bundle where).
	b := export("2")
	var last []string
	for _, bt := range b.Batches {
		if bt.AfterSeq < 5 && 5 <= bt.LastSeq {
			for s := bt.AfterSeq + 1; s <= bt.LastSeq; s++ {
				if s != 2 {
					last = append(last, fmt.Sprint(s))
				}
			}
		}
	}
	b = export("2," + strings.Join(last, ","))
	e.front.down.Store(true) // from here on, nothing reaches the registry

	vkey := e.c.Log.CheckpointKey
	out, stderr, code := runProvgate(t, "audit", "verify", "--checkpoint-key", vkey, bundlePath)
	if code != 0 || !strings.Contains(out, "audit verify: OK") || !strings.Contains(out, "6 events (6 samples, 6000 bytes") ||
		!strings.Contains(out, fmt.Sprintf("%d rows disclosed and proven", len(b.Rows))) {
		t.Fatalf("audit verify of the genuine bundle: exit %d\n%s%s", code, out, stderr)
	}
	if len(b.Batches) < 2 || len(b.Checkpoints) == 0 || len(b.Rows) < 2 {
		t.Fatalf("bundle has %d batches, %d earlier checkpoints, %d rows; want at least 2, 1, 2", len(b.Batches), len(b.Checkpoints), len(b.Rows))
	}

	orig, err := os.ReadFile(bundlePath)
	if err != nil {
		t.Fatal(err)
	}
	fresh := func(t *testing.T) *audit.Bundle {
		b, err := audit.ParseBytes(orig)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	first, lastBatch := b.Batches[0], b.Batches[len(b.Batches)-1]
	var row5 int
	for i, r := range b.Rows {
		if r.Seq == 5 {
			row5 = i
		}
	}
	entryOf := func(t *testing.T, b *audit.Bundle, seq uint64) *contract.Entry {
		e, err := contract.DecodeEntry(b.Entries[seq-1])
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	seqOf := func(t *testing.T, b *audit.Bundle, i int) uint64 {
		e, err := contract.DecodeEntry(b.Batches[i].Entry)
		if err != nil {
			t.Fatal(err)
		}
		return e.Seq
	}

	attacks := []struct {
		name  string
		edit  func(t *testing.T, b *audit.Bundle)
		wants []string
	}{
		{"a changed count in a batch", func(t *testing.T, b *audit.Bundle) {
			b.Batches[0].Counted.Samples--
			b.Batches[0].Counted.CostNanoUSD -= 500_000
			b.Totals.Samples--
			b.Totals.CostNanoUSD -= 500_000
		}, []string{fmt.Sprintf("batch %s: the bundle says it counted %d events (%d samples", first.Batch, first.Counted.Events, first.Counted.Samples-1)}},

		{"a batch's entry rewritten", func(t *testing.T, b *audit.Bundle) {
			e := entryOf(t, b, seqOf(t, b, 0))
			e.Time = e.Time.Add(-time.Hour)
			raw, err := contract.EncodeEntry(e)
			if err != nil {
				t.Fatal(err)
			}
			b.Batches[0].Entry = raw
		}, []string{"batch " + first.Batch + ": its entry does not match its receipt's leaf"}},

		{"a dropped batch", func(t *testing.T, b *audit.Bundle) {
			dropped := b.Batches[len(b.Batches)-1]
			b.Batches = b.Batches[:len(b.Batches)-1]
			b.Totals.Events -= dropped.Counted.Events
			b.Totals.Samples -= dropped.Counted.Samples
			b.Totals.Bytes -= dropped.Counted.Bytes
			b.Totals.Units -= dropped.Counted.Units
			b.Totals.CostNanoUSD -= dropped.Counted.CostNanoUSD
			var rows []audit.DisclosedRow
			for _, r := range b.Rows {
				if r.Batch != dropped.Batch {
					rows = append(rows, r)
				}
			}
			b.Rows = rows
		}, []string{"batch " + lastBatch.Batch + ": entry", "the bundle leaves it out"}},

		{"a checkpoint of another contract", func(t *testing.T, b *audit.Bundle) {
			b.Checkpoint = string(otherCP)
		}, []string{"checkpoint: "}},

		{"an older checkpoint", func(t *testing.T, b *audit.Bundle) {
			b.Checkpoint = b.Checkpoints[0].Checkpoint
		}, []string{"checkpoint: it commits to"}},

		{"an older checkpoint made to claim the full size", func(t *testing.T, b *audit.Bundle) {
			lines := strings.SplitN(b.Checkpoints[0].Checkpoint, "\n", 3)
			lines[1] = strings.TrimSpace(strings.Split(b.Checkpoint, "\n")[1])
			b.Checkpoint = strings.Join(lines, "\n")
		}, []string{"checkpoint: ", "signature"}},

		{"a forged attestation", func(t *testing.T, b *audit.Bundle) {
			// Mallory signs b.bin's attestation with her key, under Alice's
			// name and key id, and puts it in the log in its place.
			mallory, err := verify.GenerateKey(jose.EdDSA)
			if err != nil {
				t.Fatal(err)
			}
			mallory.KeyID = e.alice.Key.KeyID
			const seq = 3 // terms, a.bin, b.bin
			en := entryOf(t, b, seq)
			at, err := verify.AttestationUnverified(en.JWS)
			if err != nil || at.Object == nil || at.Object.Name != "b.bin" {
				t.Fatalf("entry %d is not b.bin's attestation: %v", seq, err)
			}
			at.Object.DecodedSHA256 = strings.Repeat("0", 64)
			if en.JWS, err = verify.SignAttestation(mallory, at); err != nil {
				t.Fatal(err)
			}
			if b.Entries[seq-1], err = contract.EncodeEntry(en); err != nil {
				t.Fatal(err)
			}
		}, []string{"attestation for name b.bin (entry 3): signature", "entry 4: prev_hash", "checkpoint: the bundle's"}},

		{"a row disclosed with a wrong proof", func(t *testing.T, b *audit.Bundle) {
			b.Rows[0].Proof[0][0] ^= 1
		}, []string{"row seq 2: inclusion proof does not verify against batch " + b.Rows[0].Batch}},

		{"a disclosed row with fewer bytes", func(t *testing.T, b *audit.Bundle) {
			b.Rows[row5].Row = strings.Replace(b.Rows[row5].Row, `"bytes":1000`, `"bytes":10`, 1)
		}, []string{"row seq 5: inclusion proof does not verify"}},

		{"a disclosed row with fewer bytes, its tree rebuilt to match", func(t *testing.T, b *audit.Bundle) {
			// The exporter edits row 5 and rebuilds the batch's row tree:
			// the proofs lead to the bundle's root, not to the one the
			// sidecar signed in the batch.
			b.Rows[row5].Row = strings.Replace(b.Rows[row5].Row, `"bytes":1000`, `"bytes":10`, 1)
			rebuildRowTree(t, b, b.Rows[row5].Batch)
		}, []string{"row seq 5: inclusion proof does not verify against batch " + b.Rows[row5].Batch,
			"batch " + b.Rows[row5].Batch + ": the bundle's row tree"}},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			b := fresh(t)
			a.edit(t, b)
			data, err := b.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "edited.json")
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			_, stderr, code := runProvgate(t, "audit", "verify", "--checkpoint-key", vkey, path)
			if code != 1 {
				t.Fatalf("audit verify of the edited bundle: exit %d, want 1\n%s", code, stderr)
			}
			for _, w := range a.wants {
				if !strings.Contains(stderr, w) {
					t.Errorf("audit verify does not say %q:\n%s", w, stderr)
				}
			}
		})
	}

	// Compliance: clean traffic has no findings, with the copies the
	// sidecar's cache holds (its journal lists the three objects) checked
	// against the retention.
	cacheDir := filepath.Join(filepath.Dir(sc.StateDir()), "cache")
	waitFor(t, "the cache journal to list the three objects", 10*time.Second, func() bool {
		entries, err := cache.ReadJournal(cacheDir)
		n := 0
		for _, e := range entries {
			if e.Contract == b.Contract && e.Committed.After(time.Now().Add(-time.Hour)) {
				n++
			}
		}
		return err == nil && n == 3
	})
	out, stderr, code = runProvgate(t, "audit", "check", "--ledger", ledger, "--bundle", bundlePath, "--checkpoint-key", vkey,
		"--purpose", "training", "--cache-dir", cacheDir)
	if code != 0 || !strings.Contains(out, "no findings") {
		t.Fatalf("audit check of clean traffic: exit %d\n%s%s", code, out, stderr)
	}
	// The same traffic, declared for a purpose the contract does not allow.
	out, stderr, code = runProvgate(t, "audit", "check", "--ledger", ledger, "--bundle", bundlePath, "--checkpoint-key", vkey, "--purpose", "marketing")
	if code != 1 || !strings.Contains(out, `purpose "marketing" is not one the terms of entry 1 allow`) {
		t.Fatalf("audit check --purpose marketing: exit %d\n%s%s", code, out, stderr)
	}
}

// rebuildRowTree recomputes a batch's row root and its disclosed rows'
// proofs from the rows the bundle discloses (all of the batch's).
func rebuildRowTree(t *testing.T, b *audit.Bundle, batch string) {
	t.Helper()
	tree := testonly.New(rfc6962.DefaultHasher)
	var idx []int
	for i, r := range b.Rows {
		if r.Batch == batch {
			idx = append(idx, i)
		}
	}
	sort.Slice(idx, func(i, j int) bool { return b.Rows[idx[i]].Index < b.Rows[idx[j]].Index })
	for _, i := range idx {
		tree.AppendData([]byte(b.Rows[i].Row))
	}
	for _, i := range idx {
		p, err := tree.InclusionProof(b.Rows[i].Index, tree.Size())
		if err != nil {
			t.Fatal(err)
		}
		b.Rows[i].Proof = p
	}
	for i := range b.Batches {
		if b.Batches[i].Batch == batch {
			if b.Batches[i].Rows.Count != tree.Size() {
				t.Fatalf("batch %s has %d rows, %d disclosed", batch, b.Batches[i].Rows.Count, tree.Size())
			}
			b.Batches[i].Rows.Root = tree.Hash()
		}
	}
}

// runProvgate runs the provgate binary and returns its stdout, stderr and
// exit code.
func runProvgate(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(provgateBinary(t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	}
	t.Fatalf("provgate %v: %v", args, err)
	return "", "", -1
}
