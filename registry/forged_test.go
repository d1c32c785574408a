package registry_test

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// Each forged attestation is refused with a clear error and nothing is
// appended.

func attestation(issuer, contractID, name string) *contract.Attestation {
	o := registrytest.Object(name, []byte(name))
	return &contract.Attestation{Issuer: issuer, Subject: contractID, IssuedAt: time.Now().Unix(), ID: verify.NewID(),
		Type: contract.Contribution, Object: &o}
}

// compact builds a compact JWS by hand, so that tests can make what no
// honest signer makes.
func compact(t *testing.T, header map[string]any, payload any, sign func(input []byte) []byte) string {
	t.Helper()
	hb, _ := json.Marshal(header)
	pb, _ := json.Marshal(payload)
	input := base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(pb)
	return input + "." + base64.RawURLEncoding.EncodeToString(sign([]byte(input)))
}

func mustRefuse(t *testing.T, h *registrytest.Harness, contractID, jws string, status int, code string) {
	t.Helper()
	_, err := h.Client.AppendAttestation(context.Background(), contractID, jws)
	if contract.StatusOf(err) != status || contract.CodeOf(err) != code {
		t.Fatalf("got %v, want %d %s", err, status, code)
	}
	page, err := h.Client.Events(context.Background(), contractID, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, we := range page.Entries {
		e, _ := contract.DecodeEntry(we.Entry)
		if e.JWS == jws {
			t.Fatalf("forged attestation was appended at seq %d", we.Seq)
		}
	}
}

func TestForgedAttestationWrongKey(t *testing.T) {
	h, alice, c := setup(t)
	mallory, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	mallory.KeyID = alice.Key.KeyID // claims to be alice's key
	jws, err := verify.SignAttestation(mallory, attestation(alice.ID, c.ContractID, "x"))
	if err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, h, c.ContractID, jws, http.StatusForbidden, contract.CodeInvalidAttestation)
}

func TestForgedAttestationAlgNone(t *testing.T) {
	h, alice, c := setup(t)
	jws := compact(t, map[string]any{"alg": "none", "typ": contract.TypeAttestation, "kid": alice.Key.KeyID},
		attestation(alice.ID, c.ContractID, "x"), func([]byte) []byte { return nil })
	mustRefuse(t, h, c.ContractID, jws, http.StatusForbidden, contract.CodeInvalidAttestation)
}

func TestForgedAttestationHS256WithPublicKey(t *testing.T) {
	h, alice, c := setup(t)
	pub := alice.Key.Public()
	pubJSON, _ := json.Marshal(pub)
	for name, secret := range map[string][]byte{
		"raw key":  []byte(pub.Key.(ed25519.PublicKey)),
		"jwk json": pubJSON,
	} {
		t.Run(name, func(t *testing.T) {
			jws := compact(t, map[string]any{"alg": "HS256", "typ": contract.TypeAttestation, "kid": alice.Key.KeyID},
				attestation(alice.ID, c.ContractID, "x"), func(in []byte) []byte {
					m := hmac.New(sha256.New, secret)
					m.Write(in)
					return m.Sum(nil)
				})
			mustRefuse(t, h, c.ContractID, jws, http.StatusForbidden, contract.CodeInvalidAttestation)
		})
	}
}

func TestForgedAttestationUnknownKid(t *testing.T) {
	h, alice, c := setup(t)
	stranger, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := verify.SignAttestation(stranger, attestation(alice.ID, c.ContractID, "x"))
	if err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, h, c.ContractID, jws, http.StatusForbidden, contract.CodeInvalidAttestation)
}

func TestForgedAttestationRevokedKid(t *testing.T) {
	h := registrytest.Start(t)
	old, _ := verify.GenerateKey(jose.EdDSA)
	cur, _ := verify.GenerateKey(jose.ES256)
	ct := contract.Contributor{ID: "did:example:bob", JWKS: verify.PublicJWKS(old, cur)}
	spec := registrytest.NewContract("did:example:c1", "bucket")
	spec.Contributors = []contract.Contributor{ct}
	c := h.CreateContract(t, spec)
	ctx := context.Background()
	sign := func(k *jose.JSONWebKey, a *contract.Attestation) string {
		jws, err := verify.SignAttestation(k, a)
		if err != nil {
			t.Fatal(err)
		}
		return jws
	}
	if _, err := h.Client.AppendAttestation(ctx, c.ContractID, sign(old, attestation(ct.ID, c.ContractID, "before"))); err != nil {
		t.Fatalf("before revocation: %v", err)
	}
	rev := &contract.Attestation{Issuer: ct.ID, Subject: c.ContractID, IssuedAt: time.Now().Unix(), ID: verify.NewID(),
		Type: contract.Revocation, Revocation: &contract.RevocationClaim{KeyID: old.KeyID, Reason: "compromised"}}
	if _, err := h.Client.AppendAttestation(ctx, c.ContractID, sign(cur, rev)); err != nil {
		t.Fatalf("revocation: %v", err)
	}
	mustRefuse(t, h, c.ContractID, sign(old, attestation(ct.ID, c.ContractID, "after")), http.StatusForbidden, contract.CodeRevokedKey)
	// The other key still works.
	if res, err := h.Client.AppendAttestation(ctx, c.ContractID, sign(cur, attestation(ct.ID, c.ContractID, "after"))); err != nil || res.Seq != 4 {
		t.Fatalf("current key after revocation: %+v, %v", res, err)
	}
}

func TestForgedAttestationWrongSubject(t *testing.T) {
	h, alice, c := setup(t)
	h.CreateContract(t, registrytest.NewContract("did:example:other", "bucket", alice))
	// Validly signed, but for another contract: replaying it here is refused.
	jws := alice.Sign(t, "did:example:other", attestation(alice.ID, "did:example:other", "x"))
	mustRefuse(t, h, c.ContractID, jws, http.StatusForbidden, contract.CodeInvalidAttestation)
}

func TestForgedAttestationNotAContributor(t *testing.T) {
	h, _, c := setup(t)
	eve := h.NewContributor(t, "did:example:eve")
	mustRefuse(t, h, c.ContractID, eve.Sign(t, c.ContractID, attestation(eve.ID, c.ContractID, "x")), http.StatusForbidden, contract.CodeInvalidAttestation)
}
