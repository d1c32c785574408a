package verify_test

import (
	"errors"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// TestVerifyEnrolment: an enrolment verifies only when signed by a key of
// the licensee it names, for this contract and this sidecar key, inside
// its key window and its validity; every other case wraps a sentinel.
func TestVerifyEnrolment(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	lic, _ := verify.GenerateKey(jose.ES256)
	other, _ := verify.GenerateKey(jose.EdDSA)
	c := &contract.Contract{ContractID: cid, Licensees: []contract.Licensee{
		{ID: "did:example:acme", JWKS: verify.PublicJWKS(lic)},
		{ID: "did:example:late", JWKS: verify.PublicJWKS(other), KeyWindows: map[string]contract.KeyWindow{other.KeyID: {NotBefore: now.Add(time.Hour)}}},
	}}
	const jkt = "sidecar-jkt"
	claims := func(edit func(*contract.EnrolmentClaims)) *contract.EnrolmentClaims {
		e := &contract.EnrolmentClaims{Issuer: "did:example:acme", Subject: jkt, Contract: cid, IssuedAt: now.Unix(),
			Expiry: now.Add(time.Hour).Unix(), ID: "e1"}
		if edit != nil {
			edit(e)
		}
		return e
	}
	sign := func(k *jose.JSONWebKey, e *contract.EnrolmentClaims) string {
		jws, err := verify.Sign(k, contract.TypeEnrolment, e, false)
		if err != nil {
			t.Fatal(err)
		}
		return jws
	}
	good := sign(lic, claims(nil))
	e, l, err := verify.VerifyEnrolment(good, c, "did:example:acme", verify.PublicJWKS(lic), jkt, now)
	if err != nil || l.ID != "did:example:acme" || e.Subject != jkt {
		t.Fatalf("good enrolment: %+v %v", e, err)
	}
	if p, err := verify.PeekEnrolment(good); err != nil || p.Contract != cid || p.Subject != jkt || p.KeyID != lic.KeyID {
		t.Fatalf("peek = %+v %v", p, err)
	}
	for _, tc := range []struct {
		name     string
		jws      string
		licensee string
		keys     *jose.JSONWebKeySet
		jkt      string
		want     error
	}{
		{"another key set", good, "did:example:acme", verify.PublicJWKS(other), jkt, verify.ErrUnknownKey},
		{"issuer is not the licensee whose keys signed", sign(lic, claims(func(e *contract.EnrolmentClaims) { e.Issuer = "did:example:late" })), "did:example:acme", verify.PublicJWKS(lic), jkt, verify.ErrNotLicensee},
		{"not a licensee", sign(lic, claims(func(e *contract.EnrolmentClaims) { e.Issuer = "did:example:nobody" })), "did:example:nobody", verify.PublicJWKS(lic), jkt, verify.ErrNotLicensee},
		{"another contract", sign(lic, claims(func(e *contract.EnrolmentClaims) { e.Contract = "did:example:c2" })), "did:example:acme", verify.PublicJWKS(lic), jkt, verify.ErrWrongContract},
		{"another sidecar", good, "did:example:acme", verify.PublicJWKS(lic), "other-jkt", verify.ErrNotEnrolled},
		{"expired", sign(lic, claims(func(e *contract.EnrolmentClaims) { e.IssuedAt, e.Expiry = now.Add(-2*time.Hour).Unix(), now.Unix() })), "did:example:acme", verify.PublicJWKS(lic), jkt, verify.ErrExpired},
		{"issued in the future", sign(lic, claims(func(e *contract.EnrolmentClaims) { e.IssuedAt = now.Add(time.Minute).Unix() })), "did:example:acme", verify.PublicJWKS(lic), jkt, verify.ErrNotYetValid},
		{"longer than the maximum", sign(lic, claims(func(e *contract.EnrolmentClaims) { e.Expiry = now.Add(2 * verify.MaxEnrolmentTTL).Unix() })), "did:example:acme", verify.PublicJWKS(lic), jkt, verify.ErrMalformed},
		{"outside its key window", sign(other, claims(func(e *contract.EnrolmentClaims) { e.Issuer = "did:example:late" })), "did:example:late", verify.PublicJWKS(other), jkt, verify.ErrKeyWindow},
		{"no jti", sign(lic, claims(func(e *contract.EnrolmentClaims) { e.ID = "" })), "did:example:acme", verify.PublicJWKS(lic), jkt, verify.ErrMalformed},
		{"a capability token's typ", func() string { s, _ := verify.Sign(lic, contract.TypeCapability, claims(nil), false); return s }(), "did:example:acme", verify.PublicJWKS(lic), jkt, verify.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := verify.VerifyEnrolment(tc.jws, c, tc.licensee, tc.keys, tc.jkt, now)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// FuzzVerifyEnrolment: whatever the bytes, an enrolment that verifies is
// signed by the licensee's key, names this contract, this sidecar key and
// that licensee, and is unexpired.
func FuzzVerifyEnrolment(f *testing.F) {
	lic := jwk(f, fuzzRegistryJWK) // any fixed key serves as the licensee's
	jkt, err := verify.Thumbprint(jwk(f, fuzzSidecarJWK))
	if err != nil {
		f.Fatal(err)
	}
	c := &contract.Contract{ContractID: fuzzContract, Licensees: []contract.Licensee{{ID: "did:example:acme", JWKS: verify.PublicJWKS(lic)}}}
	for _, mod := range []func(*contract.EnrolmentClaims){
		func(*contract.EnrolmentClaims) {},
		func(e *contract.EnrolmentClaims) { e.Contract = "did:example:other" },
		func(e *contract.EnrolmentClaims) { e.Subject = "other" },
		func(e *contract.EnrolmentClaims) { e.Expiry = fuzzIAT + 50 },
	} {
		e := &contract.EnrolmentClaims{Issuer: "did:example:acme", Subject: jkt, Contract: fuzzContract, IssuedAt: fuzzIAT, Expiry: fuzzIAT + 3600, ID: "e1"}
		mod(e)
		jws, err := verify.Sign(lic, contract.TypeEnrolment, e, false)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(jws)
	}
	f.Add("e30.e30.")
	f.Fuzz(func(t *testing.T, jws string) {
		e, l, err := verify.VerifyEnrolment(jws, c, "did:example:acme", verify.PublicJWKS(lic), jkt, fuzzNow)
		if err != nil {
			return
		}
		if l.ID != "did:example:acme" || e.Issuer != l.ID || e.Contract != fuzzContract || e.Subject != jkt || fuzzNow.Unix() >= e.Expiry {
			t.Fatalf("accepted %+v for licensee %s", e, l.ID)
		}
	})
}
