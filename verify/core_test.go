package verify_test

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

func mustKey(t *testing.T, alg jose.SignatureAlgorithm) *jose.JSONWebKey {
	t.Helper()
	k, err := verify.GenerateKey(alg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestAttestationRoundTrip(t *testing.T) {
	for _, alg := range []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256} {
		t.Run(string(alg), func(t *testing.T) {
			key := mustKey(t, alg)
			c := &contract.Contract{ContractID: "did:example:c1", Contributors: []contract.Contributor{{ID: "alice", JWKS: verify.PublicJWKS(key)}}}
			h := strings.Repeat("ab", 32)
			a := &contract.Attestation{Issuer: "alice", Subject: c.ContractID, IssuedAt: time.Now().Unix(), ID: "j1", Type: contract.Contribution,
				Object: &contract.ObjectClaim{Name: "x/1.bin", StoredSHA256: h, DecodedSHA256: h, StoredSize: 3, DecodedSize: 3, Encoding: contract.EncodingIdentity}}
			jws, err := verify.SignAttestation(key, a)
			if err != nil {
				t.Fatal(err)
			}
			got, kid, err := verify.VerifyAttestation(jws, c, c.Contributors[0].JWKS)
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			if kid != key.KeyID || got.Object.Name != "x/1.bin" {
				t.Fatalf("got kid %q object %+v", kid, got.Object)
			}
			other := mustKey(t, alg)
			other.KeyID = key.KeyID
			if _, _, err := verify.VerifyAttestation(jws, c, verify.PublicJWKS(other)); !errors.Is(err, verify.ErrSignature) {
				t.Fatalf("wrong key: got %v, want ErrSignature", err)
			}
			c2 := *c
			c2.ContractID = "did:example:other"
			if _, _, err := verify.VerifyAttestation(jws, &c2, c.Contributors[0].JWKS); !errors.Is(err, verify.ErrWrongContract) {
				t.Fatalf("wrong contract: got %v", err)
			}
		})
	}
}

func TestCheckpointAndChain(t *testing.T) {
	skey, vkey, err := verify.GenerateCheckpointKey("registry.test")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := verify.NewCheckpointSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	chain, _ := verify.NewChain("c1", nil)
	prev := hex.EncodeToString(contract.ZeroHash)
	var raws [][]byte
	for seq := uint64(1); seq <= 5; seq++ {
		raw, err := contract.EncodeEntry(&contract.Entry{V: 1, Seq: seq, PrevHash: prev, Time: time.Now().UTC(), Contract: "c1", Kind: contract.EntryAttestation, JWS: "a.b.c"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := chain.Append(seq, raw); err != nil {
			t.Fatalf("append %d: %v", seq, err)
		}
		prev = hex.EncodeToString(contract.LeafHash(raw))
		raws = append(raws, raw)
	}
	note, err := signer.Sign("registry.test/log/c1", chain.Size(), chain.Root())
	if err != nil {
		t.Fatal(err)
	}
	v, err := verify.NewCheckpointVerifier("registry.test/log/c1", vkey)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := v.Parse(note)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if time.Since(cp.Time) > time.Minute || cp.Size != 5 {
		t.Fatalf("checkpoint %+v", cp)
	}
	if err := chain.CheckCheckpoint(cp); err != nil {
		t.Fatal(err)
	}
	// Resume from persisted state and compare.
	st := chain.State()
	resumed, err := verify.NewChain("c1", &st)
	if err != nil || string(resumed.Root()) != string(chain.Root()) {
		t.Fatalf("resume: %v", err)
	}
	// A tampered entry breaks the chain at the next entry.
	fresh, _ := verify.NewChain("c1", nil)
	bad := append([]byte(nil), raws[1]...)
	bad[len(bad)-3] ^= 1
	fresh.Append(1, raws[0])
	fresh.Append(2, bad)
	var ee *verify.EntryError
	if _, err := fresh.Append(3, raws[2]); !errors.As(err, &ee) || ee.Seq != 3 {
		t.Fatalf("tampered chain: got %v", err)
	}
	if _, err := v.Parse(append(note[:len(note)-5:len(note)-5], []byte("AAAA\n")...)); err == nil {
		t.Fatal("tampered checkpoint signature accepted")
	}
}
