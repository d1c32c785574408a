package registry_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

func TestAppendReplayAndCheckpoint(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:c1", "bucket", alice))
	if c.Log.Origin != "registrytest/log/did:example:c1" || c.Log.CheckpointKey == "" {
		t.Fatalf("log info = %+v", c.Log)
	}
	for i := 1; i <= 5; i++ {
		seq := alice.Attest(t, c.ContractID, registrytest.Object(fmt.Sprintf("a/%d.txt", i), []byte(fmt.Sprint(i))))
		if seq != uint64(i)+1 { // entry 1 holds the terms
			t.Fatalf("seq = %d, want %d", seq, i+1)
		}
	}
	page, err := h.Client.Events(ctx, c.ContractID, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Entries) != 6 || page.TreeSize != 6 {
		t.Fatalf("got %d entries, tree size %d", len(page.Entries), page.TreeSize)
	}
	chain, _ := verify.NewChain(c.ContractID, nil)
	for _, we := range page.Entries {
		if _, err := chain.Append(we.Seq, we.Entry); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := h.Client.Checkpoint(ctx, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	v, err := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := v.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := chain.CheckCheckpoint(cp); err != nil {
		t.Fatal(err)
	}
	ip, err := h.Client.InclusionProof(ctx, c.ContractID, 3, 6)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.VerifyInclusion(cp, 3, contract.LeafHash(page.Entries[2].Entry), ip.Hashes); err != nil {
		t.Fatal(err)
	}
	// Redaction of an unknown name is refused; of a known one accepted.
	_, err = h.Client.AppendAttestation(ctx, c.ContractID, alice.Sign(t, c.ContractID, &contract.Attestation{Type: contract.Redaction, Redaction: &contract.RedactionClaim{Name: "nope"}}))
	if contract.StatusOf(err) != http.StatusNotFound {
		t.Fatalf("redact unknown: got %v, want 404", err)
	}
	if seq := alice.Redact(t, c.ContractID, "a/2.txt"); seq != 7 {
		t.Fatalf("redaction seq = %d", seq)
	}
	var ae *contract.APIError
	if _, err := h.Client.CreateContract(ctx, "wrong", registrytest.NewContract("did:example:c2", "b", alice)); !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Fatalf("create with wrong admin token: %v", err)
	}
}
