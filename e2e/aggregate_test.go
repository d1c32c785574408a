package e2e_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
)

// Traffic through a sidecar is metered in aggregate batches: the
// registry's totals, whole and per job and epoch, equal the sums of the
// ledger's rows; each batch's log entry commits the root of exactly its
// rows, and any row disclosed from the ledger checks against the receipted
// entry.
func TestAggregateMeteringEqualsLedgerRows(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpt{})
	for i := range 12 {
		e.put(fmt.Sprintf("o%02d.bin", i), randomBytes(t, 100+i*37), i%2 == 0)
	}
	sc := e.sidecar(nil)
	id := e.c.ContractID
	for epoch := range int64(3) {
		for _, job := range []string{"j1", "j2"} {
			for i := range 12 {
				if code, _ := get(t, http.DefaultClient, sc.URL(), id, fmt.Sprintf("o%02d.bin", i), epoch, job); code != http.StatusOK {
					t.Fatalf("GET: %d", code)
				}
			}
			// A name the contract does not hold: refused, not billed.
			if code, _ := get(t, http.DefaultClient, sc.URL(), id, "missing.bin", epoch, job); code == http.StatusOK {
				t.Fatal("GET of a missing object: 200")
			}
		}
	}
	drain(t, sc, id)

	l := sc.Ledger()
	got, err := e.client.MeteringTotals(ctx, id, "", -1)
	if err != nil {
		t.Fatal(err)
	}
	want, err := l.Totals(ctx, id, false)
	if err != nil {
		t.Fatal(err)
	}
	if *got != want || want.BilledEvents != 72 {
		t.Fatalf("registry totals\n got %+v\nwant %+v (the ledger's rows; 72 billed reads)", *got, want)
	}
	type key struct {
		job   string
		epoch int64
	}
	byKey := map[key]contract.Sums{}
	if err := l.Rows(ctx, 0, func(r *meter.Row) error {
		if r.Contract == id && r.Kind == contract.EventAccess {
			s := byKey[key{r.Job, r.Epoch}]
			s.Add(contract.Sums{Samples: r.Samples, Bytes: r.Bytes, Units: r.Units, CostNanoUSD: r.CostNanoUSD})
			byKey[key{r.Job, r.Epoch}] = s
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for k, s := range byKey {
		tot, err := e.client.MeteringTotals(ctx, id, k.job, k.epoch)
		if err != nil {
			t.Fatal(err)
		}
		if tot.AccessBytes != s.Bytes || tot.BilledCostNanoUSD != s.CostNanoUSD || tot.BilledUnits != s.Units {
			t.Errorf("job %s epoch %d: registry %d bytes, %d units, %d nano-USD; ledger rows %+v", k.job, k.epoch, tot.AccessBytes, tot.BilledUnits, tot.BilledCostNanoUSD, s)
		}
	}

	rs, err := l.Receipts(ctx, id)
	if err != nil || len(rs) == 0 {
		t.Fatalf("%d receipts, %v", len(rs), err)
	}
	var rows int64
	for _, r := range rs {
		var entry contract.Entry
		if err := json.Unmarshal(r.Entry, &entry); err != nil {
			t.Fatal(err)
		}
		parts := strings.Split(entry.JWS, ".")
		payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var b contract.MeteringBatch
		if err := json.Unmarshal(payload, &b); err != nil || b.Rows == nil || len(b.Events) != 0 {
			t.Fatalf("receipted entry %d is not an aggregate batch: %v", entry.Seq, err)
		}
		rows += b.Rows.Count
		rng := meter.RowRange{AfterSeq: b.Rows.AfterSeq, LastSeq: b.Rows.LastSeq}
		ds, err := l.DiscloseRows(ctx, id, rng, []int64{b.Rows.LastSeq})
		if err != nil {
			t.Fatal(err)
		}
		if err := meter.VerifyDisclosedRow(b.Rows.Root, uint64(b.Rows.Count), ds[0]); err != nil {
			t.Errorf("entry %d: a disclosed row does not check against the receipted root: %v", entry.Seq, err)
		}
	}
	if rows != want.Events {
		t.Errorf("the receipted batches cover %d rows, the ledger has %d", rows, want.Events)
	}
}
