package registry_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// TestMeteringLargeBatches: a batch of 500 realistic events (the meter's
// default batch size) is accepted whole; one whose JWS exceeds
// verify.MaxJWSSize is refused with a clear 400 and counts nothing.
func TestMeteringLargeBatches(t *testing.T) {
	ctx := context.Background()
	h, _, c := setup(t)
	sc := newSidecar(t, h)
	tok := sc.token(t, c.ContractID, contract.Quota{})
	res, err := sc.client.PostMetering(ctx, c.ContractID, tok.Token, "k500", bigBatch(t, sc, c.ContractID, 500))
	if err != nil || res.Accepted != 500 {
		t.Fatalf("500 events: %+v %v", res, err)
	}
	_, err = sc.client.PostMetering(ctx, c.ContractID, tok.Token, "k1000", bigBatch(t, sc, c.ContractID, contract.MaxBatchEvents))
	if contract.StatusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("oversized batch: got %v, want 400 naming the size", err)
	}
	if tot, _ := h.Client.MeteringTotals(ctx, c.ContractID, "", -1); tot.Events != 500 {
		t.Fatalf("totals = %+v, want 500 events", tot)
	}
}

func bigBatch(t *testing.T, sc *sidecar, contractID string, n int) string {
	t.Helper()
	b := &contract.MeteringBatch{Contract: contractID, BatchID: fmt.Sprint("big", n), Sidecar: sc.jkt, IssuedAt: time.Now().Unix()}
	for i := range n {
		b.Events = append(b.Events, contract.MeteringEvent{ID: fmt.Sprintf("01J%023d", i), Time: time.Now().UTC(), Kind: contract.EventAccess,
			Name: fmt.Sprintf("train/shard-%04d/sample-%08d.jpg", i/100, i), Bytes: 123456, Samples: 1, Units: 1, CostNanoUSD: 500000,
			Epoch: 3, Job: "job-7f3a", TokenID: "tok-0123456789abcdef", DecodedSHA: fmt.Sprintf("%064x", i), Outcome: "served"})
	}
	jws, err := verify.SignMeteringBatch(sc.key, b)
	if err != nil {
		t.Fatal(err)
	}
	return jws
}
