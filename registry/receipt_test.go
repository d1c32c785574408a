package registry_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// A counted batch is answered with a receipt proving its log entry, and a
// retry with the same Idempotency-Key is answered with the same receipt
// (its entry read back from the log); a batch of duplicates only makes no
// entry and has none.
func TestMeteringReceiptAndItsReplay(t *testing.T) {
	ctx := context.Background()
	h, c, acme, _, tok, _ := licensedSetup(t)
	cpv, err := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	if err != nil {
		t.Fatal(err)
	}
	var first *contract.MeteringResponse
	for i := range 3 {
		jws := signEvents(t, acme, c.ContractID, servedIDs("r", i*10, i*10+9)...)
		resp, err := acme.client.PostMetering(ctx, c.ContractID, tok, "batch-"+string(rune('a'+i)), jws)
		if err != nil {
			t.Fatal(err)
		}
		cp, e, err := verify.VerifyMeteringReceipt(cpv, c.ContractID, resp.Receipt)
		if err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
		if e.JWS != jws || e.Seq != resp.Seq || len(e.Accepted) != 10 || cp.Size != resp.Seq {
			t.Fatalf("batch %d: entry %d (%d accepted) in checkpoint %d, answer seq %d", i, e.Seq, len(e.Accepted), cp.Size, resp.Seq)
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, resp.Receipt.Index, cp.Size, rfc6962.DefaultHasher.HashLeaf(resp.Receipt.Entry), resp.Receipt.Inclusion, cp.Hash); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = resp
		}
	}
	// The first batch again, same key and body: the same receipt.
	page, err := h.Client.Events(ctx, c.ContractID, first.Seq-1, 1)
	if err != nil {
		t.Fatal(err)
	}
	e, err := contract.DecodeEntry(page.Entries[0].Entry)
	if err != nil {
		t.Fatal(err)
	}
	again, err := acme.client.PostMetering(ctx, c.ContractID, tok, "batch-a", e.JWS)
	if err != nil {
		t.Fatal(err)
	}
	if again.Receipt == nil || !bytes.Equal(again.Receipt.Entry, first.Receipt.Entry) || again.Receipt.Checkpoint != first.Receipt.Checkpoint {
		t.Fatalf("replayed answer's receipt %+v, want the first's", again.Receipt)
	}
	// The same events under a new key: all duplicates, no entry, no receipt.
	dup, err := acme.client.PostMetering(ctx, c.ContractID, tok, "batch-dup", signEvents(t, acme, c.ContractID, servedIDs("r", 0, 9)...))
	if err != nil {
		t.Fatal(err)
	}
	if dup.Accepted != 0 || dup.Seq != 0 || dup.Receipt != nil {
		t.Fatalf("a batch of duplicates: %+v", dup)
	}
}
