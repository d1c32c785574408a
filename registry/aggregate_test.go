package registry_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// onDatabases runs a test of the registry's HTTP API on a registry over
// SQLite, then on one over PostgreSQL: db is the option that picks it.
func onDatabases(t *testing.T, test func(t *testing.T, db registrytest.Option)) {
	t.Run("sqlite", func(t *testing.T) { test(t, registrytest.WithConfig(func(*registry.Config) {})) })
	t.Run("postgres", func(t *testing.T) {
		test(t, registrytest.WithConfig(func(c *registry.Config) { c.DBPath = testenv.Postgres(t).NewDatabase(t) }))
	})
}

// rowsOf names rows (after, last] of ledger, count of them, with a root
// derived from tag (the registry cannot check it; it keeps it).
func rowsOf(ledger string, after, last, count int64, tag string) *contract.RowCommitment {
	root := sha256.Sum256([]byte(tag))
	return &contract.RowCommitment{Ledger: ledger, AfterSeq: after, LastSeq: last, Count: count, Root: root[:]}
}

// servedAgg sums n served accesses of one sample of 100 bytes each,
// priced right.
func servedAgg(n int64) contract.MeteringAggregate {
	now := time.Now().UTC()
	return contract.MeteringAggregate{Kind: contract.EventAccess, Outcome: contract.OutcomeServed, Job: "job1", Epoch: 1,
		Events: n, Samples: n, Bytes: 100 * n, Units: n, CostNanoUSD: n * sampleNano, FirstTime: now.Add(-time.Second), LastTime: now}
}

// signAggregate signs an aggregate batch from sc.
func signAggregate(t *testing.T, sc *sidecar, contractID string, rows *contract.RowCommitment, aggs ...contract.MeteringAggregate) string {
	t.Helper()
	b := &contract.MeteringBatch{Contract: contractID, BatchID: verify.NewID(), Sidecar: sc.jkt, IssuedAt: time.Now().Unix(),
		Aggregates: aggs, Rows: rows}
	jws, err := verify.SignMeteringBatch(sc.key, b)
	if err != nil {
		t.Fatal(err)
	}
	return jws
}

// mustStatus posts jws and wants the error status and code.
func mustStatus(t *testing.T, sc *sidecar, contractID, token, jws string, status int, code string) error {
	t.Helper()
	_, err := sc.client.PostMetering(context.Background(), contractID, token, verify.NewID(), jws)
	if contract.StatusOf(err) != status || contract.CodeOf(err) != code {
		t.Fatalf("got %v, want %d %s", err, status, code)
	}
	return err
}

// billed is the registry's billed samples and cost of the contract.
func billed(t *testing.T, sc *sidecar, contractID string) (int64, int64, int64) {
	t.Helper()
	tot, err := sc.h.Client.MeteringTotals(context.Background(), contractID, "", -1)
	if err != nil {
		t.Fatal(err)
	}
	return tot.AccessEvents, tot.BilledSamples, tot.BilledCostNanoUSD
}

// An aggregate batch is counted once: its answer and receipt, the same
// batch again under its Idempotency-Key (the first answer), under another
// key or re-signed (a duplicate); totals count it once.
func TestAggregateCountedOnce(t *testing.T) {
	onDatabases(t, func(t *testing.T, db registrytest.Option) {
		ctx := context.Background()
		h, c, acme, _, tok, _ := licensedSetup(t, db)
		jws := signAggregate(t, acme, c.ContractID, rowsOf("L1", 0, 12, 10, "a"), servedAgg(7), func() contract.MeteringAggregate {
			a := servedAgg(3)
			a.Epoch = 2
			return a
		}())
		first, err := acme.client.PostMetering(ctx, c.ContractID, tok, "k1", jws)
		if err != nil {
			t.Fatal(err)
		}
		want := contract.Sums{Samples: 10, Bytes: 1000, Units: 10, CostNanoUSD: 10 * sampleNano}
		if first.Accepted != 10 || first.Duplicates != 0 || first.Counted != want || first.Licensee != "acme" || first.Receipt == nil {
			t.Fatalf("first answer %+v, want 10 rows accepted with their sums for acme, and a receipt", first)
		}
		e, err := contract.DecodeEntry(first.Receipt.Entry)
		if err != nil || e.JWS != jws || len(e.Accepted) != 0 {
			t.Fatalf("receipted entry %+v, %v: want the batch as sent, listing no events", e, err)
		}
		again, err := acme.client.PostMetering(ctx, c.ContractID, tok, "k1", jws)
		if err != nil || again.Accepted != 10 || again.Seq != first.Seq {
			t.Errorf("retry under the same key = %+v, %v; want the first answer", again, err)
		}
		for name, body := range map[string]string{
			"the same batch under another key": jws,
			"the same rows re-signed":          signAggregate(t, acme, c.ContractID, rowsOf("L1", 0, 12, 10, "a"), servedAgg(10)),
		} {
			dup, err := acme.client.PostMetering(ctx, c.ContractID, tok, verify.NewID(), body)
			if err != nil || dup.Accepted != 0 || dup.Duplicates != 10 || dup.Counted != (contract.Sums{}) || dup.Receipt != nil {
				t.Errorf("%s = %+v, %v; want 10 duplicates, nothing counted", name, dup, err)
			}
		}
		if n, samples, cost := billed(t, acme, c.ContractID); n != 10 || samples != 10 || cost != 10*sampleNano {
			t.Errorf("totals: %d events, %d samples, %d nano-USD; want 10 once", n, samples, cost)
		}
		r, err := h.Client.MeteringTotals(ctx, c.ContractID, "job1", 2)
		if err != nil || r.BilledSamples != 3 {
			t.Errorf("totals of job1 epoch 2 = %+v, %v; want 3 samples", r, err)
		}
	})
}

// Overlapping ranges of one sender's ledger are refused with 409; the
// next range, another ledger, or the same rows from another sender count.
// Events inside a counted range are duplicates; a range over an event
// counted one by one is refused.
func TestAggregateOverlapRefused(t *testing.T) {
	onDatabases(t, func(t *testing.T, db registrytest.Option) {
		ctx := context.Background()
		_, c, acme, evil, tok, evilTok := licensedSetup(t, db)
		post := func(sc *sidecar, token, jws string) *contract.MeteringResponse {
			t.Helper()
			r, err := sc.client.PostMetering(ctx, c.ContractID, token, verify.NewID(), jws)
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		post(acme, tok, signAggregate(t, acme, c.ContractID, rowsOf("L1", 10, 20, 10, "a"), servedAgg(10)))
		for name, rows := range map[string]*contract.RowCommitment{
			"overlapping the end":   rowsOf("L1", 15, 25, 10, "b"),
			"overlapping the start": rowsOf("L1", 5, 11, 6, "b"),
			"inside":                rowsOf("L1", 12, 14, 2, "b"),
			"around":                rowsOf("L1", 0, 30, 30, "b"),
			"same range, new root":  rowsOf("L1", 10, 20, 10, "b"),
			"same range, new count": rowsOf("L1", 10, 20, 9, "a"),
		} {
			t.Run(name, func(t *testing.T) {
				err := mustStatus(t, acme, c.ContractID, tok, signAggregate(t, acme, c.ContractID, rows, servedAgg(rows.Count)), http.StatusConflict, contract.CodeConflict)
				if !strings.Contains(err.Error(), "overlap") {
					t.Errorf("409 does not say why: %v", err)
				}
			})
		}
		if n, _, _ := billed(t, acme, c.ContractID); n != 10 {
			t.Fatalf("after refused overlaps: %d events counted, want 10", n)
		}
		post(acme, tok, signAggregate(t, acme, c.ContractID, rowsOf("L1", 20, 30, 10, "c"), servedAgg(10)))
		post(acme, tok, signAggregate(t, acme, c.ContractID, rowsOf("L2", 10, 20, 10, "a"), servedAgg(10)))
		post(evil, evilTok, signAggregate(t, evil, c.ContractID, rowsOf("L1", 10, 20, 10, "a"), servedAgg(10)))
		if n, _, _ := billed(t, acme, c.ContractID); n != 40 {
			t.Fatalf("%d events counted, want 40", n)
		}

		// Events of counted rows, sent one by one: duplicates; others count.
		r := post(acme, tok, signEvents(t, acme, c.ContractID, servedIDs("L1", 19, 31)...))
		if r.Accepted != 1 || r.Duplicates != 12 {
			t.Errorf("events 19..31 of L1 after ranges (10, 30]: accepted %d, duplicates %d; want 1 and 12", r.Accepted, r.Duplicates)
		}
		// A range over row 31, counted as an event: refused.
		mustStatus(t, acme, c.ContractID, tok, signAggregate(t, acme, c.ContractID, rowsOf("L1", 30, 40, 10, "d"), servedAgg(10)), http.StatusConflict, contract.CodeConflict)
		if n, _, _ := billed(t, acme, c.ContractID); n != 41 {
			t.Errorf("%d events counted, want 41", n)
		}
	})
}

// An aggregate whose cost, units or amounts are not what the contract's
// price makes of its sums is refused whole, and nothing is counted.
func TestAggregateForgedAmountsRefused(t *testing.T) {
	_, c, acme, _, tok, _ := licensedSetup(t)
	for _, tc := range []struct {
		name   string
		forge  func(a *contract.MeteringAggregate)
		events int64
	}{
		{"cost below units times price", func(a *contract.MeteringAggregate) { a.CostNanoUSD-- }, 10},
		{"cost of fewer units", func(a *contract.MeteringAggregate) { a.Units, a.CostNanoUSD = 5, 5*sampleNano }, 10},
		{"zero cost", func(a *contract.MeteringAggregate) { a.Units, a.CostNanoUSD = 0, 0 }, 10},
		{"refused outcome carrying cost", func(a *contract.MeteringAggregate) { a.Outcome = contract.OutcomeRefused }, 10},
		{"epoch summary carrying cost", func(a *contract.MeteringAggregate) { a.Kind, a.Outcome = contract.EventEpoch, "" }, 10},
		{"more samples than its events may carry", func(a *contract.MeteringAggregate) {
			a.Samples = 2*contract.MaxEventSamples + 1
			a.Units, a.CostNanoUSD = a.Samples, a.Samples*sampleNano
		}, 2},
		{"unknown outcome", func(a *contract.MeteringAggregate) { a.Outcome, a.Units, a.CostNanoUSD = "free", 0, 0 }, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := servedAgg(tc.events)
			tc.forge(&a)
			err := mustStatus(t, acme, c.ContractID, tok, signAggregate(t, acme, c.ContractID, rowsOf("L1", 0, tc.events, tc.events, tc.name), a),
				http.StatusBadRequest, contract.CodeBadRequest)
			if !strings.Contains(err.Error(), "aggregate") {
				t.Errorf("error does not name the aggregate: %v", err)
			}
		})
	}
	// Aggregates that do not add up to the rows they claim.
	bad := servedAgg(9)
	mustStatus(t, acme, c.ContractID, tok, signAggregate(t, acme, c.ContractID, rowsOf("L1", 0, 10, 10, "x"), bad), http.StatusBadRequest, contract.CodeBadRequest)
	if n, _, cost := billed(t, acme, c.ContractID); n != 0 || cost != 0 {
		t.Errorf("forged aggregates counted %d events, %d nano-USD", n, cost)
	}
}

// Sums that overflow int64, within a batch or with what the contract
// counted, are refused.
func TestAggregateSumsOverflowRefused(t *testing.T) {
	onDatabases(t, func(t *testing.T, db registrytest.Option) {
		_, c, acme, _, tok, _ := licensedSetup(t, db)
		// As many samples as int64 cost allows, over enough events.
		big := func(epoch int64) contract.MeteringAggregate {
			a := servedAgg(1 << 10)
			a.Epoch = epoch
			a.Samples = math.MaxInt64 / sampleNano
			a.Units, a.CostNanoUSD, a.Bytes = a.Samples, a.Samples*sampleNano, 0
			return a
		}
		err := mustStatus(t, acme, c.ContractID, tok, signAggregate(t, acme, c.ContractID, rowsOf("L1", 0, 2048, 2048, "x"), big(1), big(2)),
			http.StatusBadRequest, contract.CodeBadRequest)
		if !strings.Contains(err.Error(), "overflow") {
			t.Errorf("error does not say overflow: %v", err)
		}
		if _, err := acme.client.PostMetering(context.Background(), c.ContractID, tok, verify.NewID(),
			signAggregate(t, acme, c.ContractID, rowsOf("L1", 0, 1024, 1024, "y"), big(1))); err != nil {
			t.Fatal(err)
		}
		err = mustStatus(t, acme, c.ContractID, tok, signAggregate(t, acme, c.ContractID, rowsOf("L1", 1024, 2048, 1024, "z"), big(2)),
			http.StatusBadRequest, contract.CodeBadRequest)
		if !strings.Contains(err.Error(), "overflow") {
			t.Errorf("error does not say overflow: %v", err)
		}
	})
}

// An aggregate naming a lease or a licensee that is not the sender's is
// refused: no sender can move its use onto another's quota or bill.
func TestAggregateForAnotherLeaseOrLicenseeRefused(t *testing.T) {
	onDatabases(t, func(t *testing.T, db registrytest.Option) {
		_, c, acme, evil, acmeTok, evilTok := licensedSetup(t, db)
		acmeClaims, _ := peekClaims(acmeTok)
		evilClaims, _ := peekClaims(evilTok)
		if acmeClaims.Lease == "" || evilClaims.Lease == "" {
			t.Fatal("tokens without leases")
		}
		a := servedAgg(5)
		a.Lease = acmeClaims.Lease
		err := mustStatus(t, evil, c.ContractID, evilTok, signAggregate(t, evil, c.ContractID, rowsOf("E", 0, 5, 5, "x"), a), http.StatusForbidden, contract.CodeForbidden)
		if !strings.Contains(err.Error(), "lease") {
			t.Errorf("error does not name the lease: %v", err)
		}
		a = servedAgg(5)
		a.Licensee = "acme"
		mustStatus(t, evil, c.ContractID, evilTok, signAggregate(t, evil, c.ContractID, rowsOf("E", 0, 5, 5, "x"), a), http.StatusForbidden, contract.CodeForbidden)
		if n, _, _ := billed(t, acme, c.ContractID); n != 0 {
			t.Fatalf("%d events counted", n)
		}
		// Its own lease and licensee: counted, for evil.
		a.Licensee, a.Lease = "evil", evilClaims.Lease
		r, err := evil.client.PostMetering(context.Background(), c.ContractID, evilTok, verify.NewID(), signAggregate(t, evil, c.ContractID, rowsOf("E", 0, 5, 5, "x"), a))
		if err != nil || r.Accepted != 5 || r.Licensee != "evil" {
			t.Fatalf("evil's own aggregate = %+v, %v", r, err)
		}
	})
}

// The receipt's entry commits the aggregate batch: a count or a sum
// changed in the entry no longer proves against the signed checkpoint.
func TestAggregateReceiptCommitsTheBatch(t *testing.T) {
	onDatabases(t, func(t *testing.T, db registrytest.Option) {
		ctx := context.Background()
		_, c, acme, _, tok, _ := licensedSetup(t, db)
		resp, err := acme.client.PostMetering(ctx, c.ContractID, tok, verify.NewID(), signAggregate(t, acme, c.ContractID, rowsOf("L1", 0, 10, 10, "a"), servedAgg(10)))
		if err != nil {
			t.Fatal(err)
		}
		cpv, err := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := verify.VerifyMeteringReceipt(cpv, c.ContractID, resp.Receipt); err != nil {
			t.Fatalf("receipt: %v", err)
		}
		for name, edit := range map[string]func(b map[string]any){
			"rows.count": func(b map[string]any) { b["rows"].(map[string]any)["count"] = 11 },
			"samples":    func(b map[string]any) { b["aggregates"].([]any)[0].(map[string]any)["samples"] = 9 },
		} {
			t.Run(name, func(t *testing.T) {
				var e map[string]any
				if err := json.Unmarshal(resp.Receipt.Entry, &e); err != nil {
					t.Fatal(err)
				}
				parts := strings.Split(e["jws"].(string), ".")
				payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
				var b map[string]any
				if err := json.Unmarshal(payload, &b); err != nil {
					t.Fatal(err)
				}
				edit(b)
				payload, _ = json.Marshal(b)
				e["jws"] = fmt.Sprintf("%s.%s.%s", parts[0], base64.RawURLEncoding.EncodeToString(payload), parts[2])
				forged := *resp.Receipt
				forged.Entry, _ = json.Marshal(e)
				forged.Leaf = contract.LeafHash(forged.Entry)
				if _, _, err := verify.VerifyMeteringReceipt(cpv, c.ContractID, &forged); err == nil {
					t.Fatal("a receipt with the entry's batch changed verifies")
				}
			})
		}
	})
}

// An aggregate is priced under the terms version it names while that
// version was in force at its last row (within the skew): rows synced
// after a contract update count at their old price, but an aggregate of
// later rows cannot pick the older, cheaper terms, nor terms not in the
// log.
func TestAggregatePricedUnderTheTermsOfItsTime(t *testing.T) {
	onDatabases(t, func(t *testing.T, db registrytest.Option) {
		ctx := context.Background()
		h, c, acme, _, tok, _ := licensedSetup(t, db)
		next := *c
		next.Version, next.Pricing.PriceUSD = "2026-02-01", c.Pricing.PriceUSD*2
		updated, err := h.Client.UpdateContract(ctx, h.AdminToken, &next, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		late := servedAgg(4)
		late.TermsSeq = c.TermsSeq
		if _, err := acme.client.PostMetering(ctx, c.ContractID, tok, verify.NewID(), signAggregate(t, acme, c.ContractID, rowsOf("L", 0, 4, 4, "a"), late)); err != nil {
			t.Errorf("rows of the old terms synced after the update: %v", err)
		}
		cheap := servedAgg(4)
		cheap.TermsSeq, cheap.LastTime = c.TermsSeq, time.Now().Add(time.Hour)
		nowhere := servedAgg(4)
		nowhere.TermsSeq = updated.TermsSeq + 7
		for name, a := range map[string]contract.MeteringAggregate{"old terms for later rows": cheap, "terms not in the log": nowhere} {
			mustStatus(t, acme, c.ContractID, tok, signAggregate(t, acme, c.ContractID, rowsOf("L", 4, 8, 4, name), a), http.StatusBadRequest, contract.CodeBadRequest)
		}
		// The current terms: twice the price.
		now := servedAgg(4)
		now.TermsSeq, now.CostNanoUSD = updated.TermsSeq, 4*2*sampleNano
		if _, err := acme.client.PostMetering(ctx, c.ContractID, tok, verify.NewID(), signAggregate(t, acme, c.ContractID, rowsOf("L", 4, 8, 4, "b"), now)); err != nil {
			t.Fatal(err)
		}
		if _, samples, cost := billed(t, acme, c.ContractID); samples != 8 || cost != 4*sampleNano+4*2*sampleNano {
			t.Errorf("billed %d samples for %d nano-USD, want 4 at the old price and 4 at the new", samples, cost)
		}
	})
}
