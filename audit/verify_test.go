package audit_test

import (
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/audit"
	"github.com/provgate/provgate/verify"
)

// TestExportVerifyRoundTrip: a bundle of real traffic verifies offline,
// pinned to the contract's key, and its totals are the ledger's.
func TestExportVerifyRoundTrip(t *testing.T) {
	w := newWorld(t, nil)
	w.traffic(t)
	b := w.export(t, audit.ExportOptions{Rows: []int64{1, 5}})
	data, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := audit.ParseBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(parsed, audit.VerifyOptions{CheckpointKey: w.c.Log.CheckpointKey})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Pinned || rep.Totals.Events != 6 || rep.Totals.Samples != 6 || rep.Totals.CostNanoUSD != 6*500_000 {
		t.Errorf("report %+v, want 6 events, 6 samples at 500000 nano-USD, pinned", rep)
	}
	if rep.Batches != 2 || rep.Rows != 2 || rep.Attestations != 3 || len(rep.Facts.Terms) != 1 {
		t.Errorf("report %+v: want 2 batches, 2 rows, 3 attestations, 1 terms version", rep)
	}
	// Scope: epoch 2 only.
	b2 := w.export(t, audit.ExportOptions{Epochs: &audit.EpochRange{From: 2, To: 2}})
	if rep2, err := audit.Verify(b2, audit.VerifyOptions{}); err != nil || rep2.Totals.Events != 3 {
		t.Fatalf("epoch 2: %v, %+v; want 3 events", err, rep2)
	}
}

// problems runs Verify and returns the problems' text, failing if there
// are none.
func problems(t *testing.T, b *audit.Bundle, opts audit.VerifyOptions) string {
	t.Helper()
	_, err := audit.Verify(b, opts)
	var ve *audit.VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("Verify: %v, want a *VerifyError", err)
	}
	return ve.Error()
}

func wantIn(t *testing.T, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("problems do not say %q:\n%s", w, got)
		}
	}
}

// TestVerifyNamesCheckpointProblems: a bundle checked against another log
// key than the one it names, or without the witness cosignatures the
// auditor requires, fails at the checkpoint.
func TestVerifyNamesCheckpointProblems(t *testing.T) {
	w := newWorld(t, nil)
	w.traffic(t)
	b := w.export(t, audit.ExportOptions{})
	_, otherKey, err := verify.GenerateCheckpointKey(w.c.Log.Origin)
	if err != nil {
		t.Fatal(err)
	}
	got := problems(t, b, audit.VerifyOptions{CheckpointKey: otherKey})
	wantIn(t, got, "checkpoint: the bundle names log key", "checkpoint: "+verify.ErrCheckpoint.Error())

	_, witnessKey, err := note.GenerateKey(rand.Reader, "witness.example")
	if err != nil {
		t.Fatal(err)
	}
	wp, err := verify.NewWitnessPolicy([]string{witnessKey}, 1)
	if err != nil {
		t.Fatal(err)
	}
	got = problems(t, b, audit.VerifyOptions{CheckpointKey: w.c.Log.CheckpointKey, Witnesses: wp})
	wantIn(t, got, "checkpoint: ", "0 valid witness cosignatures, 1 required")
}
