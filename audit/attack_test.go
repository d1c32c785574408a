package audit_test

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/audit"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// forgedContract is a contract for forged logs: 0.0005 USD a sample.
func forgedContract(t *testing.T) *contract.Contract {
	t.Helper()
	k, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	return registrytest.NewContract("did:example:forged", "bucket", &registrytest.Contributor{ID: "did:example:alice", Key: k})
}

// access is a served access event of ledger row seq: one sample, priced
// at 500000 nano-USD (the forged contract's price).
func access(ledger string, seq int64, at time.Time, termsSeq uint64) contract.MeteringEvent {
	return contract.MeteringEvent{ID: ledger + "-" + strconv.FormatInt(seq, 10), Time: at, Kind: contract.EventAccess, Name: "a.bin",
		Samples: 1, Bytes: 10, Units: 1, CostNanoUSD: 500000, Epoch: 1, TermsSeq: termsSeq}
}

// aggregateOf is an aggregate batch of rows (after, last] of ledger, all
// served accesses of one sample each.
func aggregateOf(ledger string, after, last int64, at time.Time, termsSeq uint64, nano int64) *contract.MeteringBatch {
	n := last - after
	return &contract.MeteringBatch{BatchID: "agg-" + strconv.FormatInt(after, 10),
		Rows: &contract.RowCommitment{Ledger: ledger, AfterSeq: after, LastSeq: last, Count: n, Root: bytes.Repeat([]byte{7}, 32)},
		Aggregates: []contract.MeteringAggregate{{Kind: contract.EventAccess, Epoch: 1, TermsSeq: termsSeq, Events: n, Samples: n, Bytes: 10 * n,
			Units: n, CostNanoUSD: nano * n, FirstTime: at, LastTime: at}}}
}

// TestVerifyRefusesRowsCountedTwiceWhenTheLedgerIDHasAHyphen: ledger ids
// are base64url, so a quarter of them hold a "-". A registry that counts
// row 3 of such a ledger as an event and again in an aggregate batch of
// rows (0, 5] bills it twice; the bundle must not verify.
func TestVerifyRefusesRowsCountedTwiceWhenTheLedgerIDHasAHyphen(t *testing.T) {
	for _, ledger := range []string{"Qx7Lm2", "Qx-7L_m2"} {
		t.Run(ledger, func(t *testing.T) {
			at := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
			f := newForgery(t, forgedContract(t), at.Add(-time.Hour))
			ev := access(ledger, 3, at, 0)
			f.meter(&contract.MeteringBatch{BatchID: "ev-3", Events: []contract.MeteringEvent{ev}}, []string{ev.ID}, at)
			f.meter(aggregateOf(ledger, 0, 5, at, 0, 500000), nil, at)
			wantIn(t, problems(t, f.bundle("another"), audit.VerifyOptions{}), "entry 3: ", "counted one by one")
		})
	}
}

// TestVerifyRefusesSupersededCheaperTerms: the price rose at entry 2; a
// batch of reads two hours later priced under entry 1's cheaper terms is
// what the registry refuses (terms superseded beyond the clock skew), so
// a log that counts it must not verify: as an aggregate nor as events.
func TestVerifyRefusesSupersededCheaperTerms(t *testing.T) {
	start := time.Now().Add(-3 * time.Hour).UTC().Truncate(time.Second)
	at := start.Add(2 * time.Hour)
	for _, tc := range []struct {
		name     string
		termsSeq uint64
		nano     int64
		want     string
	}{
		{"in force", 2, 1000000, ""},
		{"superseded", 1, 500000, "superseded"},
	} {
		for _, agg := range []bool{true, false} {
			t.Run(tc.name+"/"+strconv.FormatBool(agg), func(t *testing.T) {
				c := forgedContract(t)
				f := newForgery(t, c, start)
				dear := *f.terms
				dear.Pricing.PriceUSD = 0.001
				f.addTerms(&dear, start.Add(time.Hour))
				if agg {
					f.meter(aggregateOf("L1", 0, 4, at, tc.termsSeq, tc.nano), nil, at)
				} else {
					ev := access("L1", 1, at, tc.termsSeq)
					ev.CostNanoUSD = tc.nano
					f.meter(&contract.MeteringBatch{BatchID: "ev-1", Events: []contract.MeteringEvent{ev}}, []string{ev.ID}, at)
				}
				b := f.bundle("another")
				if tc.want == "" {
					if _, err := audit.Verify(b, audit.VerifyOptions{}); err != nil {
						t.Fatal(err)
					}
					return
				}
				wantIn(t, problems(t, b, audit.VerifyOptions{}), "entry 3: ", tc.want)
			})
		}
	}
}

// TestCheckFindsReadsUnderSupersededTerms: the price rises; a ledger that
// keeps pricing reads under the older, cheaper terms pays less. A read
// stamped within the registry's clock skew of the change is no finding; one
// ten minutes after it is not_in_force.
func TestCheckFindsReadsUnderSupersededTerms(t *testing.T) {
	w := newWorld(t, nil)
	w.alice.Attest(t, w.c.ContractID, registrytest.Object("a.bin", []byte("data of a.bin")))
	dear := *w.c
	dear.Pricing.PriceUSD = 0.001
	updated, err := w.h.Client.UpdateContract(context.Background(), w.h.AdminToken, &dear, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	w.read(t, "a.bin", 1, "train", now.Add(time.Minute))    // row 1: within the skew
	w.read(t, "a.bin", 1, "train", now.Add(10*time.Minute)) // row 2: ledger still on entry 1's terms
	var seqs []int64
	for _, f := range audit.Check(w.checkInput(t)) {
		if f.Kind != audit.FindingNotInForce || !strings.Contains(f.Detail, "superseded by entry "+strconv.FormatUint(updated.TermsSeq, 10)) {
			t.Errorf("unexpected finding %+v", f)
			continue
		}
		seqs = append(seqs, f.Seq)
	}
	if !sameSeqs(seqs, []int64{2}) {
		t.Fatalf("not_in_force findings at rows %v, want [2]", seqs)
	}
}

// TestParseRefusesDuplicateKeys: Go's decoder keeps the last of two equal
// keys and matches keys without regard to case; other readers keep the
// first, or see "Totals" as another key. A bundle whose inflated totals a
// reader of "totals" sees, while provgate verifies the real ones after
// them, must not parse.
func TestParseRefusesDuplicateKeys(t *testing.T) {
	w := newWorld(t, nil)
	w.traffic(t)
	data, err := w.export(t, audit.ExportOptions{}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.ParseBytes(data); err != nil {
		t.Fatal(err)
	}
	inflated := `{"events": 999, "samples": 999, "bytes": 0, "units": 999, "cost_nano_usd": 999000000}`
	for name, edit := range map[string][2]string{
		"totals twice":  {`"totals": `, `"totals": ` + inflated + `, "totals": `},
		"Totals":        {`"totals": `, `"totals": ` + inflated + `, "Totals": `},
		"counted twice": {`"counted": `, `"counted": ` + inflated + `, "counted": `},
		"FORMAT alone":  {`"format": `, `"FORMAT": `},
	} {
		t.Run(name, func(t *testing.T) {
			if !strings.Contains(string(data), edit[0]) {
				t.Fatalf("no %s in the bundle", edit[0])
			}
			forged := strings.Replace(string(data), edit[0], edit[1], 1)
			if _, err := audit.ParseBytes([]byte(forged)); !errors.Is(err, audit.ErrMalformed) {
				t.Fatalf("ParseBytes: %v, want ErrMalformed", err)
			}
		})
	}
}

// TestVerifyRefusesAggregatesThatMisstateTheirRows: four rows, two of job
// train and two of job eval, one sample each, every one disclosed. The
// sidecar's aggregates move two samples from train to eval: the batch's
// sums are right, each aggregate is priced right, but a bill for job
// train counts one sample, not two. Each aggregate must be the sum of the
// disclosed rows it holds.
func TestVerifyRefusesAggregatesThatMisstateTheirRows(t *testing.T) {
	at := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	const ledger = "L1"
	var rows []meter.Row
	for i, job := range []string{"train", "eval", "train", "eval"} {
		seq := int64(i + 1)
		rows = append(rows, meter.Row{Seq: seq, ID: ledger + "-" + strconv.FormatInt(seq, 10), Kind: contract.EventAccess, Time: at,
			Contract: "did:example:forged", Name: "a.bin", Samples: 1, Bytes: 10, Units: 1, CostNanoUSD: 500000, Epoch: 1, Job: job,
			TermsSeq: 1, Outcome: contract.OutcomeServed})
	}
	agg := func(job string, samples int64) contract.MeteringAggregate {
		return contract.MeteringAggregate{Kind: contract.EventAccess, Outcome: contract.OutcomeServed, Job: job, Epoch: 1, TermsSeq: 1,
			Events: 2, Samples: samples, Bytes: 20, Units: samples, CostNanoUSD: 500000 * samples, FirstTime: at, LastTime: at}
	}
	for _, tc := range []struct {
		name        string
		train, eval int64
		want        string
	}{
		{"true", 2, 2, ""},
		{"shifted", 1, 3, "aggregate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newForgery(t, forgedContract(t), at.Add(-time.Hour))
			seq := f.meter(&contract.MeteringBatch{BatchID: "agg-0",
				Rows:       &contract.RowCommitment{Ledger: ledger, AfterSeq: 0, LastSeq: 4, Count: 4, Root: meter.RowsRoot(rows)},
				Aggregates: []contract.MeteringAggregate{agg("train", tc.train), agg("eval", tc.eval)}}, nil, at)
			b := f.bundle(ledger)
			b.Ledger.Job = "train"
			f.withBatches(b, seq)
			disclose(t, b, "agg-0", rows)
			if tc.want == "" {
				if _, err := audit.Verify(b, audit.VerifyOptions{}); err != nil {
					t.Fatal(err)
				}
				return
			}
			wantIn(t, problems(t, b, audit.VerifyOptions{}), "batch agg-0: ", tc.want)
		})
	}
}

// TestVerifyRefusesAnEventInsideACountedRange: the aggregate batch of
// entry 2 counted rows (0, 5]; entry 3 counts row 3 again, as an event of
// a batch that lists its events. The registry calls such an event a
// duplicate; a log that counts it bills the row twice.
func TestVerifyRefusesAnEventInsideACountedRange(t *testing.T) {
	for _, seq := range []int64{6, 3} {
		t.Run(strconv.FormatInt(seq, 10), func(t *testing.T) {
			at := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
			f := newForgery(t, forgedContract(t), at.Add(-time.Hour))
			f.meter(aggregateOf("L1", 0, 5, at, 0, 500000), nil, at)
			ev := access("L1", seq, at, 0)
			f.meter(&contract.MeteringBatch{BatchID: "ev", Events: []contract.MeteringEvent{ev}}, []string{ev.ID}, at)
			b := f.bundle("another")
			if seq > 5 {
				if _, err := audit.Verify(b, audit.VerifyOptions{}); err != nil {
					t.Fatal(err)
				}
				return
			}
			wantIn(t, problems(t, b, audit.VerifyOptions{}), "entry 3: ", "counted")
		})
	}
}

// TestVerifyRefusesAggregatesUnderTermsNotYetInForce: the price halved at
// entry 2; an aggregate whose first row was read an hour before, priced
// under entry 2's cheaper terms, is what the registry refuses.
func TestVerifyRefusesAggregatesUnderTermsNotYetInForce(t *testing.T) {
	start := time.Now().Add(-3 * time.Hour).UTC().Truncate(time.Second)
	cut := start.Add(2 * time.Hour)
	for _, tc := range []struct {
		name  string
		first time.Time
		want  string
	}{
		{"after the cut", cut.Add(time.Minute), ""},
		{"before the cut", cut.Add(-time.Hour), "in force only from"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newForgery(t, forgedContract(t), start)
			cheap := *f.terms
			cheap.Pricing.PriceUSD = 0.00025
			f.addTerms(&cheap, cut)
			mb := aggregateOf("L1", 0, 4, cut.Add(2*time.Minute), 2, 250000)
			mb.Aggregates[0].FirstTime = tc.first
			f.meter(mb, nil, cut.Add(3*time.Minute))
			b := f.bundle("another")
			if tc.want == "" {
				if _, err := audit.Verify(b, audit.VerifyOptions{}); err != nil {
					t.Fatal(err)
				}
				return
			}
			wantIn(t, problems(t, b, audit.VerifyOptions{}), "entry 3: ", tc.want)
		})
	}
}

// TestVerifyOfManyRowsDecodesTheirBatchOnce: a bundle of 20,000 junk rows
// of one batch whose entry is some 250 KB (a thousand aggregates). Each
// row must not cost a decoding of the batch's entry: 5 GB of JSON for a
// 2 MB bundle would keep a verifier busy for minutes.
func TestVerifyOfManyRowsDecodesTheirBatchOnce(t *testing.T) {
	at := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	f := newForgery(t, forgedContract(t), at.Add(-time.Hour))
	const n = 1000
	mb := &contract.MeteringBatch{BatchID: "agg-0", Rows: &contract.RowCommitment{Ledger: "L1", AfterSeq: 0, LastSeq: n, Count: n,
		Root: bytes.Repeat([]byte{7}, 32)}}
	for i := range n {
		job := strconv.Itoa(i) + strings.Repeat("j", 10)
		mb.Aggregates = append(mb.Aggregates, contract.MeteringAggregate{Kind: contract.EventAccess, Job: job, Epoch: 1, Events: 1,
			Samples: 1, Units: 1, CostNanoUSD: 500000, FirstTime: at, LastTime: at})
	}
	seq := f.meter(mb, nil, at)
	if len(f.entries[seq-1]) < 200<<10 {
		t.Fatalf("entry of %d bytes, want some 250 KB", len(f.entries[seq-1]))
	}
	b := f.withBatches(f.bundle("L1"), seq)
	for i := range 20000 {
		b.Rows = append(b.Rows, audit.DisclosedRow{Seq: int64(i%n) + 1, Batch: "agg-0", Row: "x"})
	}
	start := time.Now()
	_, err := audit.Verify(b, audit.VerifyOptions{})
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("Verify took %s", took)
	}
	var ve *audit.VerifyError
	if !errors.As(err, &ve) || len(ve.Problems) != 20000 {
		t.Fatalf("Verify: want one problem per junk row, got %v", err)
	}
}

// TestScopeIsTheLedgerNotAPrefix: ledger ids may hold "-", so the events
// of ledger "Qx-9" ("Qx-9-5") start with "Qx-". A bundle of ledger Qx
// must not count them (another sidecar could name its ledger so, to put
// its use on Qx's bill): with no batch of its own, it verifies with no
// totals; a bundle of ledger Qx-9 counts them.
func TestScopeIsTheLedgerNotAPrefix(t *testing.T) {
	at := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	f := newForgery(t, forgedContract(t), at.Add(-time.Hour))
	ev := access("Qx-9", 5, at, 0)
	f.meter(&contract.MeteringBatch{BatchID: "ev-5", Events: []contract.MeteringEvent{ev}}, []string{ev.ID}, at)
	if rep, err := audit.Verify(f.bundle("Qx"), audit.VerifyOptions{}); err != nil || rep.Totals.Events != 0 {
		t.Fatalf("ledger Qx: %v, totals %s; want none", err, rep.Totals)
	}
	wantIn(t, problems(t, f.bundle("Qx-9"), audit.VerifyOptions{}), "batch ev-5: ", "leaves it out")
}
