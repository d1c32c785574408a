package registry_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry/registrytest"
)

// TestContributorByJWKSURI: a contributor listed by jwks_uri has its keys
// fetched from there to verify attestations, and GET
// /contributors/{id}/jwks.json redirects to it.
func TestContributorByJWKSURI(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	keys := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contract.JWKSMediaType)
		json.NewEncoder(w).Encode(alice.Entry().JWKS)
	}))
	defer keys.Close()
	spec := registrytest.NewContract("did:example:c1", "bucket")
	spec.Contributors = []contract.Contributor{{ID: alice.ID, JWKSURI: keys.URL + "/jwks.json"}}
	c := h.CreateContract(t, spec)
	if seq := alice.Attest(t, c.ContractID, registrytest.Object("a", []byte("a"))); seq != 2 {
		t.Fatalf("seq = %d", seq)
	}
	mallory := h.NewContributor(t, alice.ID)
	if _, err := h.Client.AppendAttestation(ctx, c.ContractID, mallory.Sign(t, c.ContractID, attestation(alice.ID, c.ContractID, "m"))); contract.CodeOf(err) != contract.CodeInvalidAttestation {
		t.Fatalf("key not in the jwks_uri set: got %v", err)
	}
	got, err := h.Client.JWKS(ctx, h.Client.ContributorJWKSURL(alice.ID))
	if err != nil || len(got.Keys) != 1 || got.Keys[0].KeyID != alice.Key.KeyID {
		t.Fatalf("contributor jwks via redirect: %+v %v", got, err)
	}
}
