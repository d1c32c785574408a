package meter_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/registry/registrytest"
)

// entryPayload is the metering batch a log entry's JWS carries.
func entryPayload(tb testing.TB, jws string) *contract.MeteringBatch {
	tb.Helper()
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		tb.Fatalf("not a compact JWS: %q", jws)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		tb.Fatal(err)
	}
	var b contract.MeteringBatch
	if err := json.Unmarshal(payload, &b); err != nil {
		tb.Fatal(err)
	}
	return &b
}

// By default the outbox sends aggregate batches: the registry's totals
// equal the ledger's, every batch made an entry committing the root of
// exactly its rows, and any row of a batch can be disclosed and checked
// against the root in the receipted entry.
func TestAggregateSyncCommitsRows(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	c := h.CreateContract(t, newContract(t, "did:example:aggregated"))
	sc := newSidecar(t, h.URL, nil)
	l := openLedger(t, filepath.Join(t.TempDir(), "ledger.db"), c.ContractID)
	write(t, l, c.ContractID, 0, 2500)
	for _, o := range []string{meter.OutcomeRefused, meter.OutcomeRange, meter.OutcomeAborted} {
		if _, err := l.Record(ctx, meter.Event{Contract: c.ContractID, Name: "x", Bytes: 7, Outcome: o, Job: "a", TokenID: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.EndEpoch(ctx, c.ContractID, "a", 1); err != nil {
		t.Fatal(err)
	}
	sy, err := meter.NewSyncer(l, meter.SyncConfig{Client: sc.client, Key: sc.key, Tokens: sc.tokens, AggregateRows: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := sy.Sync(ctx); err != nil || n != 2504 {
		t.Fatalf("sync: %d rows, %v; want 2504", n, err)
	}
	assertTotalsEqual(t, h.Client, l, c.ContractID, 2504)

	rs, err := l.Receipts(ctx, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	bs, err := l.Batches(ctx, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 || len(bs) != 3 {
		t.Fatalf("%d receipts and %d batches, want 3 aggregate batches of at most 1000 rows", len(rs), len(bs))
	}
	var rows int64
	for i, r := range rs {
		var e contract.Entry
		if err := json.Unmarshal(r.Entry, &e); err != nil {
			t.Fatal(err)
		}
		b := entryPayload(t, e.JWS)
		bi, err := l.Batch(ctx, c.ContractID, r.Batch)
		if err != nil {
			t.Fatal(err)
		}
		if bi.Batch != bs[i].Batch || bi.Rows != bs[i].Rows || !bytes.Equal(bi.Root, bs[i].Root) {
			t.Errorf("Batch(%s) = %+v, Batches()[%d] = %+v", r.Batch, bi, i, bs[i])
		}
		if b.Rows == nil || !bytes.Equal(b.Rows.Root, bi.Root) || b.Rows.AfterSeq != r.AfterSeq || b.Rows.LastSeq != r.LastSeq || b.Rows.Count != bi.Count {
			t.Fatalf("batch %s: entry's rows %+v, ledger's batch %+v, receipt (%d, %d]", r.Batch, b.Rows, bi, r.AfterSeq, r.LastSeq)
		}
		rows += bi.Count
		ds, err := l.DiscloseRows(ctx, c.ContractID, bi.Rows, []int64{bi.Rows.LastSeq})
		if err != nil {
			t.Fatal(err)
		}
		if err := meter.VerifyDisclosedRow(b.Rows.Root, uint64(b.Rows.Count), ds[0]); err != nil {
			t.Errorf("batch %s: last row does not check against the receipted root: %v", r.Batch, err)
		}
	}
	if rows != 2504 {
		t.Errorf("the batches cover %d rows, want 2504", rows)
	}

	// replay --all re-sends every row event by event: all duplicates of the
	// aggregate batches, counted once.
	res, err := sy.Resend(ctx, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	if res.Accepted != 0 || res.Duplicates != 2504 {
		t.Errorf("resend: %+v, want every row a duplicate", res)
	}
	assertTotalsEqual(t, h.Client, l, c.ContractID, 2504)
}

// A registry that acknowledges an aggregate batch without counting it as
// sent (calls a first send a duplicate, or counts other sums) is an alarm.
func TestSyncAlarmsWhenRegistryCountsAggregateLess(t *testing.T) {
	ctx := context.Background()
	lr, h := startLyingRegistry(t)
	c := h.CreateContract(t, newContract(t, "did:example:agg-lied-to"))
	sc := newSidecar(t, lr.url, nil)
	l := openLedger(t, filepath.Join(t.TempDir(), "ledger.db"), c.ContractID)
	var logs syncedLog
	sy, err := meter.NewSyncer(l, meter.SyncConfig{Client: sc.client, Key: sc.key, Tokens: sc.tokens,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	round := func(from int) {
		t.Helper()
		write(t, l, c.ContractID, from, 10)
		if _, err := sy.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	round(0)
	if d := l.DisputeStatus(c.ContractID); d.Batches != 0 {
		t.Fatalf("honest registry: %+v", d)
	}
	lr.set(func(r *contract.MeteringResponse) {
		r.Duplicates, r.Accepted, r.Counted, r.Receipt, r.Seq = r.Accepted, 0, contract.Sums{}, nil, 0
	})
	round(10)
	if d := l.DisputeStatus(c.ContractID); d.Batches != 1 || !strings.Contains(d.Detail, "never sent them before") {
		t.Errorf("a first send answered as a duplicate: %+v, want 1 dispute", d)
	}
	lr.set(func(r *contract.MeteringResponse) { r.Counted.CostNanoUSD-- })
	round(20)
	if d := l.DisputeStatus(c.ContractID); d.Batches != 2 || !strings.Contains(d.Detail, "counted") {
		t.Errorf("an aggregate counted with smaller sums: %+v, want 2 disputes", d)
	}
	if !strings.Contains(logs.String(), "registry did not count a metering batch as sent") {
		t.Errorf("no error logged:\n%s", logs.String())
	}
}

// A sidecar that synced event by event and then sends aggregate batches
// counts every row once: the aggregate covers only the rows after the
// cursor, and re-sending every row event by event afterwards finds them
// all counted (by id, or inside a counted range).
func TestUpgradeFromPerEventToAggregate(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	c := h.CreateContract(t, newContract(t, "did:example:upgraded"))
	sc := newSidecar(t, h.URL, nil)
	l := openLedger(t, filepath.Join(t.TempDir(), "ledger.db"), c.ContractID)
	old, err := meter.NewSyncer(l, meter.SyncConfig{Client: sc.client, Key: sc.key, Tokens: sc.tokens, PerEvent: true})
	if err != nil {
		t.Fatal(err)
	}
	write(t, l, c.ContractID, 0, 30)
	if n, err := old.Sync(ctx); err != nil || n != 30 {
		t.Fatalf("per-event sync: %d, %v", n, err)
	}
	write(t, l, c.ContractID, 30, 20)
	sy, err := meter.NewSyncer(l, meter.SyncConfig{Client: sc.client, Key: sc.key, Tokens: sc.tokens})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := sy.Sync(ctx); err != nil || n != 20 {
		t.Fatalf("aggregate sync: %d, %v", n, err)
	}
	bs, err := l.Batches(ctx, c.ContractID)
	if err != nil || len(bs) != 1 || bs[0].Count != 20 {
		t.Fatalf("aggregate batches %+v, %v; want one of the 20 new rows", bs, err)
	}
	assertTotalsEqual(t, h.Client, l, c.ContractID, 50)
	res, err := sy.Resend(ctx, c.ContractID)
	if err != nil || res.Accepted != 0 || res.Duplicates != 50 {
		t.Fatalf("resend: %+v, %v; want 50 duplicates", res, err)
	}
	assertTotalsEqual(t, h.Client, l, c.ContractID, 50)
	if d := l.DisputeStatus(c.ContractID); d.Batches != 0 {
		t.Errorf("disputes: %+v", d)
	}
}

// Rows served under a lease of the sidecar's previous key (the key was
// replaced) make an aggregate the registry refuses (403: not the sender's
// lease); the sidecar sends those rows event by event instead, and they
// count once, without charging the other key's lease.
func TestAggregateRefusedForAnotherKeysLeaseGoesEventByEvent(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	c := h.CreateContract(t, newContract(t, "did:example:rekeyed"))
	before := newSidecar(t, h.URL, nil)
	enrol, err := enrolment(before.key, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := before.client.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", Usage: contract.Quota{MaxSamples: 100},
		JWK: before.key.Public(), Enrolment: enrol})
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok.Token, ".")[1])
	var claims contract.CapabilityClaims
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Lease == "" {
		t.Fatalf("token claims %+v, %v: want a lease", claims, err)
	}
	l := openLedger(t, filepath.Join(t.TempDir(), "ledger.db"), c.ContractID)
	for i := range 10 {
		if _, err := l.Record(ctx, meter.Event{Contract: c.ContractID, Name: "o", Bytes: int64(i + 1), Job: "j", TokenID: claims.ID, Lease: claims.Lease}); err != nil {
			t.Fatal(err)
		}
	}
	after := newSidecar(t, h.URL, nil)
	sy, err := meter.NewSyncer(l, meter.SyncConfig{Client: after.client, Key: after.key, Tokens: after.tokens})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sy.Sync(ctx); err == nil || !strings.Contains(err.Error(), "is not a lease of sidecar") {
		t.Fatalf("first sync: %v, want the aggregate refused", err)
	}
	if n, err := sy.Sync(ctx); err != nil || n != 10 {
		t.Fatalf("second sync: %d rows, %v; want the 10 rows event by event", n, err)
	}
	assertTotalsEqual(t, h.Client, l, c.ContractID, 10)
	if d := l.DisputeStatus(c.ContractID); d.Batches != 0 {
		t.Errorf("disputes: %+v", d)
	}
}
