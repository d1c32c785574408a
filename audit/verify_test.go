package audit_test

import (
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"
	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/audit"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// TestExportVerifyRoundTrip: a bundle of real traffic verifies offline,
// pinned to the contract's key, and its totals are the ledger's, whether
// the sidecar sent aggregate batches or every row as an event.
func TestExportVerifyRoundTrip(t *testing.T) {
	for _, form := range []string{"aggregate", "per-event"} {
		t.Run(form, func(t *testing.T) {
			w := newWorld(t, nil)
			if form == "per-event" {
				w = newWorldPerEvent(t)
			}
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
			// Scope: epoch 2 only; job "other" holds nothing.
			b2 := w.export(t, audit.ExportOptions{Epochs: &audit.EpochRange{From: 2, To: 2}})
			if rep2, err := audit.Verify(b2, audit.VerifyOptions{}); err != nil || rep2.Totals.Events != 3 || len(b2.Batches) != 1 {
				t.Fatalf("epoch 2: %v, %+v; want 3 events in 1 batch", err, rep2)
			}
			b3 := w.export(t, audit.ExportOptions{Job: "other"})
			if rep3, err := audit.Verify(b3, audit.VerifyOptions{}); err != nil || rep3.Totals.Events != 0 || len(b3.Batches) != 0 {
				t.Fatalf("job other: %v, %+v; want nothing", err, rep3)
			}
		})
	}
}

// TestRowEditedWithItsTreeRebuilt: an exporter edits a disclosed row and
// rebuilds the row tree to match. For a batch that lists its events the
// row no longer matches the signed event; for an aggregate batch the proof
// no longer leads to the root its signed entry commits to.
func TestRowEditedWithItsTreeRebuilt(t *testing.T) {
	for _, form := range []string{"aggregate", "per-event"} {
		t.Run(form, func(t *testing.T) {
			w := newWorld(t, nil)
			want := "row seq 5: inclusion proof does not verify against batch "
			if form == "per-event" {
				w = newWorldPerEvent(t)
				want = "row seq 5: the disclosed row is not the event batch "
			}
			w.traffic(t)
			b := w.export(t, audit.ExportOptions{Rows: []int64{4, 5, 6}})
			tree := testonly.New(rfc6962.DefaultHasher)
			for i := range b.Rows {
				if b.Rows[i].Seq == 5 {
					b.Rows[i].Row = strings.Replace(b.Rows[i].Row, `"bytes":100,`, `"bytes":1,`, 1)
				}
				tree.AppendData([]byte(b.Rows[i].Row))
			}
			var err error
			for i := range b.Rows {
				if b.Rows[i].Proof, err = tree.InclusionProof(b.Rows[i].Index, tree.Size()); err != nil {
					t.Fatal(err)
				}
			}
			b.Batches[1].Rows.Root = tree.Hash()
			wantIn(t, problems(t, b, audit.VerifyOptions{}), want)
		})
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

// TestVerifyNamesForgedTermsAndKeys: cheaper terms signed by another key
// in place of entry 1, and a sidecar key swapped for another, each fail
// where they were made.
func TestVerifyNamesForgedTermsAndKeys(t *testing.T) {
	w := newWorld(t, nil)
	w.traffic(t)
	fresh := func() *audit.Bundle { return w.export(t, audit.ExportOptions{}) }

	b := fresh()
	e, err := contract.DecodeEntry(b.Entries[0])
	if err != nil {
		t.Fatal(err)
	}
	skey, _, err := verify.GenerateCheckpointKey(w.c.Log.Origin)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := verify.NewCheckpointSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	cheap := w.c
	cheap.Pricing.PriceUSD = 0.0000001
	if e.Note, err = signer.SignTerms(&contract.TermsVersion{Contract: w.c.ContractID, EffectiveFrom: w.c.CreatedAt, Terms: *cheap}); err != nil {
		t.Fatal(err)
	}
	if b.Entries[0], err = contract.EncodeEntry(e); err != nil {
		t.Fatal(err)
	}
	wantIn(t, problems(t, b, audit.VerifyOptions{CheckpointKey: w.c.Log.CheckpointKey}), "terms at entry 1: ", "entry 2: prev_hash")

	b = fresh()
	other, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	for kid := range b.Keys.Sidecars {
		b.Keys.Sidecars[kid] = other.Public()
	}
	wantIn(t, problems(t, b, audit.VerifyOptions{}), "entry 5: ", "has thumbprint")
}
