package registry_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// The price halves; rows read an hour before, under the dearer terms, and
// synced after, cannot name the newer, cheaper terms: an aggregate whose
// first row comes before its terms' effective_from (beyond the skew) is
// refused. Rows read after the change are priced under them.
func TestAggregateCannotPriceEarlierRowsUnderNewerCheaperTerms(t *testing.T) {
	ctx := context.Background()
	h, c, acme, _, tok, _ := licensedSetup(t)
	next := *c
	next.Version, next.Pricing.PriceUSD = "2026-02-01", c.Pricing.PriceUSD/2
	updated, err := h.Client.UpdateContract(ctx, h.AdminToken, &next, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	early := servedAgg(4)
	early.TermsSeq, early.CostNanoUSD = updated.TermsSeq, 4*sampleNano/2
	early.FirstTime = time.Now().Add(-time.Hour)
	mustStatus(t, acme, c.ContractID, tok, signAggregate(t, acme, c.ContractID, rowsOf("L", 0, 4, 4, "early"), early), http.StatusBadRequest, contract.CodeBadRequest)
	later := servedAgg(4)
	later.TermsSeq, later.CostNanoUSD = updated.TermsSeq, 4*sampleNano/2
	if _, err := acme.client.PostMetering(ctx, c.ContractID, tok, verify.NewID(), signAggregate(t, acme, c.ContractID, rowsOf("L", 0, 4, 4, "later"), later)); err != nil {
		t.Fatal(err)
	}
	if _, samples, cost := billed(t, acme, c.ContractID); samples != 4 || cost != 4*sampleNano/2 {
		t.Errorf("billed %d samples for %d nano-USD, want 4 at the new price", samples, cost)
	}
}
