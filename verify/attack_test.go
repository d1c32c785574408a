package verify_test

import (
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/verify/verifytest"
)

// attestation returns alice's claims for a contribution of name.
func claims(fx *fixture, name string) *contract.Attestation {
	return &contract.Attestation{Issuer: fx.alice.ID, Subject: cid, IssuedAt: time.Now().Unix(), ID: "j-" + name,
		Type: contract.Contribution, Object: verifytest.Object(name, []byte(name))}
}

// rawJWS builds a compact JWS with any header, bypassing every signer
// check, and the given signature bytes.
func rawJWS(t *testing.T, header map[string]any, payload any, sig []byte) string {
	t.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	p, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc(h) + "." + enc(p) + "." + enc(sig)
}

// TestFollowerRefusesAttestations: each forged or unacceptable attestation
// in the log is refused (not in the manifest, counted by reason), and the
// entries around it still verify. Removing any one defence (algorithm
// allow-list, kid lookup, signature check, contributor or contract check,
// key window, key alg/use check) makes its row fail.
func TestFollowerRefusesAttestations(t *testing.T) {
	for _, tc := range []struct {
		name   string
		jws    func(t *testing.T, fx *fixture) string
		setup  func(t *testing.T, fx *fixture)
		reason string
		// alone: every alice entry would be refused (her key is unusable).
		alone bool
	}{
		{"forged: another key under alice's kid", func(t *testing.T, fx *fixture) string {
			k, _ := verify.GenerateKey(jose.EdDSA)
			k.KeyID = fx.alice.Key.KeyID
			s, err := verify.Sign(k, contract.TypeAttestation, claims(fx, "x"), false)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}, nil, "signature", false},
		{"alg none", func(t *testing.T, fx *fixture) string {
			return rawJWS(t, map[string]any{"alg": "none", "kid": fx.alice.Key.KeyID, "typ": contract.TypeAttestation}, claims(fx, "x"), nil)
		}, nil, "algorithm", false},
		{"HS256 keyed with the public key", func(t *testing.T, fx *fixture) string {
			pub, _ := json.Marshal(fx.alice.Key.Public())
			signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: pub},
				(&jose.SignerOptions{}).WithType(contract.TypeAttestation).WithHeader("kid", fx.alice.Key.KeyID))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := json.Marshal(claims(fx, "x"))
			obj, err := signer.Sign(body)
			if err != nil {
				t.Fatal(err)
			}
			s, _ := obj.CompactSerialize()
			return s
		}, nil, "algorithm", false},
		{"unknown kid", func(t *testing.T, fx *fixture) string {
			k, _ := verify.GenerateKey(jose.EdDSA)
			s, _ := verify.Sign(k, contract.TypeAttestation, claims(fx, "x"), false)
			return s
		}, nil, "unknown_key", false},
		{"no kid", func(t *testing.T, fx *fixture) string {
			k, _ := verify.GenerateKey(jose.EdDSA)
			signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: k.Key}, (&jose.SignerOptions{}).WithType(contract.TypeAttestation))
			body, _ := json.Marshal(claims(fx, "x"))
			obj, _ := signer.Sign(body)
			s, _ := obj.CompactSerialize()
			return s
		}, nil, "malformed", false},
		{"issuer not a contributor", func(t *testing.T, fx *fixture) string {
			m := verifytest.NewContributor(t, "did:example:mallory", jose.EdDSA)
			a := claims(fx, "x")
			a.Issuer = m.ID
			return m.Sign(t, a)
		}, nil, "not_contributor", false},
		{"for another contract", func(t *testing.T, fx *fixture) string {
			a := claims(fx, "x")
			a.Subject = "did:example:other"
			return fx.alice.Sign(t, a)
		}, nil, "wrong_contract", false},
		{"outside the key's window", func(t *testing.T, fx *fixture) string {
			a := claims(fx, "x")
			a.IssuedAt = time.Now().Add(-48 * time.Hour).Unix()
			return fx.alice.Sign(t, a)
		}, func(t *testing.T, fx *fixture) {
			newTerms(t, fx, func(c *contract.Contract) {
				c.Contributors[0].KeyWindows = map[string]contract.KeyWindow{
					fx.alice.Key.KeyID: {NotBefore: time.Now().Add(-24 * time.Hour)}}
			})
		}, "key_window", false},
		{"backdated into a closed window", func(t *testing.T, fx *fixture) string {
			a := claims(fx, "x")
			a.IssuedAt = time.Now().Add(-48 * time.Hour).Unix() // inside the window, but the log says now
			return fx.alice.Sign(t, a)
		}, func(t *testing.T, fx *fixture) {
			newTerms(t, fx, func(c *contract.Contract) {
				c.Contributors[0].KeyWindows = map[string]contract.KeyWindow{
					fx.alice.Key.KeyID: {NotAfter: time.Now().Add(-24 * time.Hour)}}
			})
		}, "key_window", true},
		{"key published for encryption", func(t *testing.T, fx *fixture) string {
			return fx.alice.Sign(t, claims(fx, "x"))
		}, func(t *testing.T, fx *fixture) {
			newTerms(t, fx, func(c *contract.Contract) { c.Contributors[0].JWKS.Keys[0].Use = "enc" })
		}, "key_mismatch", true},
		{"ES256 header on an Ed25519 key", func(t *testing.T, fx *fixture) string {
			return rawJWS(t, map[string]any{"alg": "ES256", "kid": fx.alice.Key.KeyID, "typ": contract.TypeAttestation}, claims(fx, "x"), make([]byte, 64))
		}, nil, "key_mismatch", false},
		{"wrong typ", func(t *testing.T, fx *fixture) string {
			s, _ := verify.Sign(fx.alice.Key, contract.TypeCapability, claims(fx, "x"), false)
			return s
		}, nil, "malformed", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFixture(t)
			if tc.setup != nil {
				tc.setup(t, fx)
			}
			if !tc.alone {
				contribute(t, fx.log, fx.alice, "before", 1)
			}
			fx.log.AppendAttestation(t, tc.jws(t, fx))
			if !tc.alone {
				contribute(t, fx.log, fx.alice, "after", 1)
			}
			f := fx.follower(t, verify.WithTrustOnFirstUse())
			mustSync(t, f)
			if _, err := f.Lookup("x"); err == nil {
				t.Fatal("refused attestation is in the manifest")
			}
			if n := counter(t, fx, "provgate_log_entries_rejected_total", "reason", tc.reason); n != 1 {
				t.Fatalf("rejections with reason %q: %v, want 1 (status %+v)", tc.reason, n, f.Status())
			}
			if st := f.Status(); st.Rejected != 1 || st.State != verify.StateReady {
				t.Fatalf("status %+v", st)
			}
			for _, name := range []string{"before-0", "after-0"} {
				if tc.alone {
					break
				}
				if _, err := f.Lookup(name); err != nil {
					t.Errorf("honest neighbour %s: %v", name, err)
				}
			}
		})
	}
}
