package audit_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/audit"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/registry/registrytest"
)

// checkInput is the compliance input of the world: the verified log's
// facts and the ledger's rows.
func (w *world) checkInput(t *testing.T) audit.CheckInput {
	t.Helper()
	rep, err := audit.Verify(w.export(t, audit.ExportOptions{}), audit.VerifyOptions{CheckpointKey: w.c.Log.CheckpointKey})
	if err != nil {
		t.Fatal(err)
	}
	in := audit.CheckInput{Facts: rep.Facts, Purpose: "training", Cached: []audit.CachedObject{}}
	err = w.ledger.Rows(context.Background(), 0, func(r *meter.Row) error {
		in.Rows = append(in.Rows, *r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// TestCheckCleanTrafficHasNoFindings: reads within the terms, of live
// names, recently cached, find nothing.
func TestCheckCleanTrafficHasNoFindings(t *testing.T) {
	w := newWorld(t, nil)
	w.traffic(t)
	in := w.checkInput(t)
	in.Cached = []audit.CachedObject{{Name: "a.bin", DecodedSHA: "sha-a.bin", Committed: time.Now().Add(-time.Hour)}}
	if f := audit.Check(in); len(f) != 0 {
		t.Fatalf("findings on clean traffic: %+v", f)
	}
}

// TestCheckFindsEachViolation: one violation of each kind, seeded in a
// real ledger against a real log, is found and named; nothing else is.
func TestCheckFindsEachViolation(t *testing.T) {
	ctx := context.Background()
	expires := time.Now().Add(time.Minute)
	w := newWorld(t, func(c *contract.Contract) {
		c.Licensees[0].Terms.MaxSamples = 5
		c.Licensees[0].Terms.ExpiresAt = expires
	})
	for _, n := range []string{"a.bin", "b.bin", "gone.bin"} {
		w.alice.Attest(t, w.c.ContractID, registrytest.Object(n, []byte("data of "+n)))
	}
	start := time.Now()
	w.read(t, "a.bin", 1, "train", start) // row 1
	w.read(t, "b.bin", 1, "train", start) // row 2
	w.read(t, "gone.bin", 1, "train", start)
	// Redacted: gone.bin is read after its redaction.
	w.alice.Redact(t, w.c.ContractID, "gone.bin")
	time.Sleep(10 * time.Millisecond)
	w.read(t, "gone.bin", 1, "train", time.Now()) // row 4
	// Quota: the licensee may read 5 samples; row 6 is the sixth.
	w.read(t, "a.bin", 2, "train", time.Now())
	w.read(t, "b.bin", 2, "train", time.Now()) // row 6
	// Not in force: new terms logged now, and a read stamped before them
	// priced under them.
	c2 := *w.c
	c2.Pricing.PriceUSD = 0.001
	updated, err := w.h.Client.UpdateContract(ctx, w.h.AdminToken, &c2, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.ledger.SetTerms(ctx, w.c.ContractID, updated.Pricing, updated.TermsSeq); err != nil {
		t.Fatal(err)
	}
	w.read(t, "a.bin", 3, "train", start.Add(-time.Minute)) // row 7
	// Expired: a read after the licensee's terms expired.
	w.read(t, "b.bin", 3, "train", expires.Add(time.Minute)) // row 8

	in := w.checkInput(t)
	in.Purpose = "marketing"
	in.Cached = []audit.CachedObject{{Name: "b.bin", DecodedSHA: "sha-b.bin", Committed: time.Now().Add(-31 * 24 * time.Hour)}}
	got := map[string][]audit.Finding{}
	for _, f := range audit.Check(in) {
		got[f.Kind] = append(got[f.Kind], f)
	}
	want := map[string]struct {
		seqs   []int64
		detail string
	}{
		audit.FindingRedacted:   {[]int64{4}, "after its redaction (entry 5"},
		audit.FindingQuota:      {[]int64{6}, `6 samples read, more than the 5 licensee "`},
		audit.FindingNotInForce: {[]int64{7}, "under the terms of entry 6, in force only from"},
		// One finding per terms version read under (entries 1 and 6).
		audit.FindingPurpose: {[]int64{1, 7}, `purpose "marketing" is not one the terms of entry`},
		audit.FindingExpired: {[]int64{8}, "terms expired at"},
		// The copy of b.bin is past retention, and so are reads served
		// from it (rows 2, 6 and 8, by name and content).
		audit.FindingRetention: {[]int64{2, 6, 8, 0}, "past retention_days 30"},
	}
	for kind, wf := range want {
		fs := got[kind]
		var seqs []int64
		for _, f := range fs {
			seqs = append(seqs, f.Seq)
			if !strings.Contains(f.Detail, wf.detail) {
				t.Errorf("%s finding %q does not say %q", kind, f.Detail, wf.detail)
			}
		}
		if !sameSeqs(seqs, wf.seqs) {
			t.Errorf("%s findings at rows %v, want %v: %+v", kind, seqs, wf.seqs, fs)
		}
	}
	for kind, fs := range got {
		if _, ok := want[kind]; !ok {
			t.Errorf("unexpected %s findings: %+v", kind, fs)
		}
	}
	// A grace longer than the time between the redaction and the read:
	// the sidecar could not have known yet.
	in.RedactionGrace = time.Hour
	for _, f := range audit.Check(in) {
		if f.Kind == audit.FindingRedacted {
			t.Errorf("a read within the redaction grace is a finding: %+v", f)
		}
	}
}

func sameSeqs(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	count := map[int64]int{}
	for _, s := range a {
		count[s]++
	}
	for _, s := range b {
		count[s]--
	}
	for _, n := range count {
		if n != 0 {
			return false
		}
	}
	return true
}
