package verify_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// A fixed contributor key, so that the checked-in corpus stays meaningful.
const fuzzContributorJWK = `{"use":"sig","kty":"OKP","kid":"mnCZ4EUv0vNHp79j9yzlNy7Yc0tGHdSLs28iLORvQjU","crv":"Ed25519","alg":"EdDSA","x":"9ZwCiTpCqssRb-ZDtD8sl05zN5n_XXj0Dk4TA-EIxkE","d":"7DaAG-E44GsCpP9GT-ujFOJdtBcPM1SOcw-E5KODTqE"}`

// FuzzVerifyAttestation: PeekAttestation and VerifyAttestation never panic
// on any input, and what verifies is a well-formed attestation for the
// contract by its contributor, under the contributor's kid.
func FuzzVerifyAttestation(f *testing.F) {
	var key jose.JSONWebKey
	if err := json.Unmarshal([]byte(fuzzContributorJWK), &key); err != nil {
		f.Fatal(err)
	}
	c := &contract.Contract{ContractID: "did:example:c1", Contributors: []contract.Contributor{{ID: "did:example:alice", JWKS: verify.PublicJWKS(&key)}}}
	h := strings.Repeat("ab", 32)
	obj := &contract.ObjectClaim{Name: "a/1.txt", StoredSHA256: h, DecodedSHA256: h, StoredSize: 3, DecodedSize: 3, Encoding: contract.EncodingIdentity}
	for _, a := range []*contract.Attestation{
		{Issuer: "did:example:alice", Subject: c.ContractID, IssuedAt: 1768471200, ID: "j1", Type: contract.Contribution, Object: obj},
		{Issuer: "did:example:alice", Subject: c.ContractID, IssuedAt: 1768471200, ID: "j2", Type: contract.Redaction, Redaction: &contract.RedactionClaim{Name: "a/1.txt"}},
		{Issuer: "did:example:alice", Subject: c.ContractID, IssuedAt: 1768471200, ID: "j3", Type: contract.Revocation, Revocation: &contract.RevocationClaim{KeyID: key.KeyID}},
		{Issuer: "did:example:alice", Subject: "did:example:other", IssuedAt: 1768471200, ID: "j4", Type: contract.Contribution, Object: obj},
	} {
		jws, err := verify.SignAttestation(&key, a)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(jws)
	}
	payload, _ := json.Marshal(contract.Attestation{Issuer: "did:example:alice", Subject: c.ContractID, IssuedAt: 1768471200, ID: "j5", Type: contract.Contribution, Object: obj})
	enc := base64.RawURLEncoding.EncodeToString
	none := enc([]byte(`{"alg":"none","typ":"provgate-attestation+jws","kid":"`+key.KeyID+`"}`)) + "." + enc(payload)
	f.Add(none + ".")
	hs := enc([]byte(`{"alg":"HS256","typ":"provgate-attestation+jws","kid":"`+key.KeyID+`"}`)) + "." + enc(payload)
	pub, _ := json.Marshal(key.Public())
	m := hmac.New(sha256.New, pub)
	m.Write([]byte(hs))
	f.Add(hs + "." + enc(m.Sum(nil)))
	f.Add("a.b.c")
	f.Add("")
	f.Fuzz(func(t *testing.T, jws string) {
		verify.PeekAttestation(jws)
		a, kid, err := verify.VerifyAttestation(jws, c, c.Contributors[0].JWKS)
		if err != nil {
			return
		}
		if kid != key.KeyID || a.Subject != c.ContractID || a.Issuer != "did:example:alice" {
			t.Fatalf("accepted kid %q claims %+v", kid, a)
		}
		if err := a.Validate(); err != nil {
			t.Fatalf("accepted invalid claims: %v", err)
		}
		if alg := strings.SplitN(jws, ".", 2)[0]; alg == "" {
			t.Fatal("accepted an empty header")
		}
	})
}
