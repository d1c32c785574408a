package registry_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// The price halves. Rows read an hour before the cut cannot get the new
// price by naming no terms version (terms_seq 0, as rows written before
// terms were logged carry) nor by naming the new version: what names no
// version is priced under the version in force at its time, and nothing
// is priced under terms not yet in force then (beyond the skew). A row of
// the old time at the old price, naming none, is counted.
func TestRowsNamingNoTermsArePricedUnderTheTermsOfTheirTime(t *testing.T) {
	ctx := context.Background()
	h, c, acme, _, tok, _ := licensedSetup(t)
	next := *c
	next.Version, next.Pricing.PriceUSD = "2026-02-01", c.Pricing.PriceUSD/2
	updated, err := h.Client.UpdateContract(ctx, h.AdminToken, &next, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	hourAgo := time.Now().Add(-time.Hour)

	unnamed := served("unnamed-cheap")
	unnamed.TermsSeq, unnamed.Time, unnamed.CostNanoUSD = 0, hourAgo, sampleNano/2
	named := served("named-cheap")
	named.TermsSeq, named.Time, named.CostNanoUSD = updated.TermsSeq, hourAgo, sampleNano/2
	agg := servedAgg(4)
	agg.TermsSeq, agg.CostNanoUSD, agg.FirstTime = 0, 4*sampleNano/2, hourAgo
	for name, jws := range map[string]string{
		"an event naming no terms, at the new price":      signEvents(t, acme, c.ContractID, unnamed),
		"an event naming the new terms, read before them": signEvents(t, acme, c.ContractID, named),
		"an aggregate naming no terms, at the new price":  signAggregate(t, acme, c.ContractID, rowsOf("L", 0, 4, 4, "agg"), agg),
	} {
		t.Run(name, func(t *testing.T) {
			mustStatus(t, acme, c.ContractID, tok, jws, http.StatusBadRequest, contract.CodeBadRequest)
		})
	}

	old := served("unnamed-old")
	old.TermsSeq, old.Time = 0, hourAgo
	if _, err := acme.client.PostMetering(ctx, c.ContractID, tok, verify.NewID(), signEvents(t, acme, c.ContractID, old)); err != nil {
		t.Fatalf("a row of the old time at the old price, naming no terms: %v", err)
	}
	if _, samples, cost := billed(t, acme, c.ContractID); samples != 1 || cost != sampleNano {
		t.Errorf("billed %d samples for %d nano-USD, want 1 at the old price %d", samples, cost, sampleNano)
	}
}

// The registry keeps each contract's checked terms between batches; an
// update must still price what follows it: a batch before the update, then
// one under the new terms at the new price, and one under the old terms
// read after the update (refused), all as if nothing were kept.
func TestTermsKeptBetweenBatchesFollowAnUpdate(t *testing.T) {
	ctx := context.Background()
	h, c, acme, _, tok, _ := licensedSetup(t)
	before := served("before")
	before.TermsSeq = c.TermsSeq
	if _, err := acme.client.PostMetering(ctx, c.ContractID, tok, verify.NewID(), signEvents(t, acme, c.ContractID, before)); err != nil {
		t.Fatal(err)
	}
	next := *c
	next.Version, next.Pricing.PriceUSD = "2026-02-01", c.Pricing.PriceUSD/2
	updated, err := h.Client.UpdateContract(ctx, h.AdminToken, &next, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	after := served("after")
	after.TermsSeq, after.CostNanoUSD = updated.TermsSeq, sampleNano/2
	if _, err := acme.client.PostMetering(ctx, c.ContractID, tok, verify.NewID(), signEvents(t, acme, c.ContractID, after)); err != nil {
		t.Fatalf("a read under the new terms at the new price: %v", err)
	}
	stale := served("stale")
	stale.TermsSeq, stale.Time = c.TermsSeq, time.Now().Add(time.Hour)
	mustStatus(t, acme, c.ContractID, tok, signEvents(t, acme, c.ContractID, stale), http.StatusBadRequest, contract.CodeBadRequest)
	if _, samples, cost := billed(t, acme, c.ContractID); samples != 2 || cost != sampleNano+sampleNano/2 {
		t.Errorf("billed %d samples for %d nano-USD, want 2 for %d", samples, cost, sampleNano+sampleNano/2)
	}
}
