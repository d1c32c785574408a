package registry_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// TestAppendLogRules: what the log itself must allow or refuse, beyond
// signatures.
func TestAppendLogRules(t *testing.T) {
	ctx := context.Background()
	h, alice, c := setup(t)
	alice.Attest(t, c.ContractID, registrytest.Object("src/a", []byte("a"))) // seq 2 (1 holds the terms)
	alice.Attest(t, c.ContractID, registrytest.Object("src/b", []byte("b"))) // seq 3
	alice.Redact(t, c.ContractID, "src/b")                                   // seq 4
	obj := registrytest.Object("derived/x", []byte("x"))
	replayed := alice.Sign(t, c.ContractID, &contract.Attestation{Type: contract.Contribution, Object: ptr(registrytest.Object("dup", []byte("d")))})
	alice.Append(t, c.ContractID, replayed) // seq 5

	for _, tc := range []struct {
		name   string
		a      *contract.Attestation
		jws    string
		status int
	}{
		{"transformation of a live source", &contract.Attestation{Type: contract.Transformation, Object: &obj, Sources: []string{"src/a"}}, "", http.StatusCreated},
		{"transformation of a redacted source", &contract.Attestation{Type: contract.Transformation, Object: &obj, Sources: []string{"src/b"}}, "", http.StatusConflict},
		{"transformation of an unknown source", &contract.Attestation{Type: contract.Transformation, Object: &obj, Sources: []string{"nope"}}, "", http.StatusConflict},
		{"redaction naming the wrong entry", &contract.Attestation{Type: contract.Redaction, Redaction: &contract.RedactionClaim{Name: "src/a", Seq: 3}}, "", http.StatusConflict},
		{"redaction of a redacted object", &contract.Attestation{Type: contract.Redaction, Redaction: &contract.RedactionClaim{Name: "src/b"}}, "", http.StatusConflict},
		{"redaction naming the right entry", &contract.Attestation{Type: contract.Redaction, Redaction: &contract.RedactionClaim{Name: "src/a", Seq: 2}}, "", http.StatusCreated},
		{"revocation of a key the issuer lacks", &contract.Attestation{Type: contract.Revocation, Revocation: &contract.RevocationClaim{KeyID: "someone-else"}}, "", http.StatusBadRequest},
		{"iat in the future", &contract.Attestation{Type: contract.Contribution, Object: ptr(registrytest.Object("f", []byte("f"))), IssuedAt: time.Now().Add(time.Hour).Unix()}, "", http.StatusBadRequest},
		{"the same attestation twice", nil, replayed, http.StatusConflict},
		{"garbage", nil, "not a jws", http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			jws := tc.jws
			if jws == "" {
				jws = alice.Sign(t, c.ContractID, tc.a)
			}
			_, err := h.Client.AppendAttestation(ctx, c.ContractID, jws)
			if got := contract.StatusOf(err); (tc.status == http.StatusCreated && err != nil) || (tc.status != http.StatusCreated && got != tc.status) {
				t.Fatalf("got %v, want %d", err, tc.status)
			}
		})
	}
	// The log is intact and holds exactly the accepted entries.
	page, _ := h.Client.Events(ctx, c.ContractID, 0, 100)
	chain, _ := verify.NewChain(c.ContractID, nil)
	for _, we := range page.Entries {
		if _, err := chain.Append(we.Seq, we.Entry); err != nil {
			t.Fatal(err)
		}
	}
	if chain.Size() != 7 {
		t.Fatalf("log size %d, want 7", chain.Size())
	}
}

func ptr[T any](v T) *T { return &v }
