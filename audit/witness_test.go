package audit_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/audit"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/witness"
)

// TestWitnessedBundle: a bundle of a log a witness cosigned verifies under
// a policy requiring that witness; a registry sharing the log key that
// shows another tree (a split view) makes a bundle that verifies without
// witnesses (the attack), and fails at the checkpoint with them.
func TestWitnessedBundle(t *testing.T) {
	ctx := context.Background()
	skey, vkey, err := note.GenerateKey(rand.Reader, "registrytest")
	if err != nil {
		t.Fatal(err)
	}
	wskey, wvkey, err := witness.GenerateKey("witness.audit/w1")
	if err != nil {
		t.Fatal(err)
	}
	w, err := witness.New(ctx, witness.Config{Key: wskey, DBPath: filepath.Join(t.TempDir(), "witness.db"),
		Logs: map[string]string{"registrytest/log/*": vkey}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ws := httptest.NewServer(w.Handler())
	t.Cleanup(func() { ws.Close(); w.Close() })
	shared := registrytest.WithConfig(func(c *registry.Config) {
		c.CheckpointKey = skey
		c.Witnesses = []registry.Witness{{URL: ws.URL, VKey: wvkey}}
	})
	policy, err := verify.NewWitnessPolicy([]string{wvkey}, 1)
	if err != nil {
		t.Fatal(err)
	}
	cosigned := func(h *registrytest.Harness, id string) bool {
		raw, err := h.Client.Checkpoint(ctx, id)
		if err != nil || !bytes.Contains(raw, []byte("\n2\n")) {
			return false
		}
		v, _ := fnote.NewVerifierForCosignatureV1(wvkey)
		_, err = note.Open(raw, note.VerifierList(v))
		return err == nil
	}

	a := newWorldOn(t, registrytest.Start(t, shared), "did:example:audit-witnessed")
	a.alice.Attest(t, a.c.ContractID, registrytest.Object("honest.bin", []byte("honest")))
	waitUntil(t, "the witness to cosign A's tree", func() bool { return cosigned(a.h, a.c.ContractID) })
	rep, err := audit.Verify(a.export(t, audit.ExportOptions{}), audit.VerifyOptions{CheckpointKey: vkey, Witnesses: policy})
	if err != nil || !rep.Witnessed {
		t.Fatalf("A's bundle under the witness policy: %v (witnessed %v)", err, rep.Witnessed)
	}

	// Registry B: the same log key and contract id, another tree.
	b := newWorldOn(t, registrytest.Start(t, shared), "did:example:audit-witnessed")
	b.alice.Attest(t, b.c.ContractID, registrytest.Object("evil.bin", []byte("evil")))
	fork := b.export(t, audit.ExportOptions{})
	if _, err := audit.Verify(fork, audit.VerifyOptions{CheckpointKey: vkey}); err != nil {
		t.Fatalf("B's bundle without witnesses should verify (the split view): %v", err)
	}
	wantIn(t, problems(t, fork, audit.VerifyOptions{CheckpointKey: vkey, Witnesses: policy}), "checkpoint: ", "witness")
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
