package e2e_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/audit"
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
	out, stderr, code := runProvgate(t, "audit", "export", "--registry", e.front.URL(), "--ledger", ledger,
		"--contract", e.c.ContractID, "--rows", "2,5", "-o", bundlePath)
	if code != 0 {
		t.Fatalf("audit export: exit %d\n%s%s", code, out, stderr)
	}
	e.front.down.Store(true) // from here on, nothing reaches the registry

	vkey := e.c.Log.CheckpointKey
	out, stderr, code = runProvgate(t, "audit", "verify", "--checkpoint-key", vkey, bundlePath)
	if code != 0 || !strings.Contains(out, "audit verify: OK") || !strings.Contains(out, "6 events (6 samples, 6000 bytes") ||
		!strings.Contains(out, "2 rows disclosed and proven") {
		t.Fatalf("audit verify of the genuine bundle: exit %d\n%s%s", code, out, stderr)
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
	if b := fresh(t); len(b.Batches) != 2 || len(b.Checkpoints) == 0 || len(b.Rows) != 2 {
		t.Fatalf("bundle has %d batches, %d earlier checkpoints, %d rows; want 2, at least 1, 2", len(b.Batches), len(b.Checkpoints), len(b.Rows))
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
		}, []string{"batch " + fresh(t).Batches[0].Batch + ": the bundle says it counted 3 events (2 samples"}},

		{"a batch's entry rewritten to count fewer events", func(t *testing.T, b *audit.Bundle) {
			e := entryOf(t, b, seqOf(t, b, 1))
			e.Accepted = e.Accepted[1:]
			raw, err := contract.EncodeEntry(e)
			if err != nil {
				t.Fatal(err)
			}
			b.Batches[1].Entry = raw
		}, []string{"batch " + fresh(t).Batches[1].Batch + ": its entry does not match its receipt's leaf"}},

		{"a dropped batch", func(t *testing.T, b *audit.Bundle) {
			dropped := b.Batches[1]
			b.Batches = b.Batches[:1]
			b.Totals.Events -= dropped.Counted.Events
			b.Totals.Samples -= dropped.Counted.Samples
			b.Totals.Bytes -= dropped.Counted.Bytes
			b.Totals.Units -= dropped.Counted.Units
			b.Totals.CostNanoUSD -= dropped.Counted.CostNanoUSD
			b.Rows = b.Rows[:1]
		}, []string{"batch " + fresh(t).Batches[1].Batch + ": entry", "the bundle leaves it out"}},

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
		}, []string{"row seq 2: inclusion proof does not verify against batch " + fresh(t).Rows[0].Batch}},

		{"a disclosed row with fewer bytes", func(t *testing.T, b *audit.Bundle) {
			b.Rows[1].Row = strings.Replace(b.Rows[1].Row, `"bytes":1000`, `"bytes":10`, 1)
		}, []string{"row seq 5: inclusion proof does not verify"}},
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

	// Compliance: clean traffic has no findings.
	out, stderr, code = runProvgate(t, "audit", "check", "--ledger", ledger, "--bundle", bundlePath, "--checkpoint-key", vkey,
		"--purpose", "training", "--cache-dir", filepath.Join(filepath.Dir(sc.StateDir()), "cache"))
	if code != 0 || !strings.Contains(out, "no findings") {
		t.Fatalf("audit check of clean traffic: exit %d\n%s%s", code, out, stderr)
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
