package verify_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// Fixed keys, so that the checked-in corpora stay meaningful.
const (
	fuzzRegistryJWK = `{"use":"sig","kty":"OKP","kid":"yH4OOo6l7L8cp8b_dO6npVM5EhmHZgHVlnLTmN06IWQ","crv":"Ed25519","alg":"EdDSA","x":"n4ktiiX7AsSfKVYfxuocl6Pmrk8CYEaCCjxqKxJiQJU","d":"SO1Ead-9_mtPVvC7HwTgTtKxj5q2FAaGvP9VSs1yoSo"}`
	fuzzRegistryES  = `{"use":"sig","kty":"EC","kid":"qat7peWG4slYzTFOYk1aUPTz6KrCxJd4Vjq8c_7hM00","crv":"P-256","alg":"ES256","x":"Mrt2qA_JVgJ0sQUdC5ZgTOwxwFb-ONStRtouIBSlIJY","y":"eZkJQ7f8vJgbYwUNV5rxYn1mYN-ctfEMdEfTJwLaRQI","d":"hvl9vdBmIUZmFmoav6crdnlyg9A6Ru7UjG-sKR7dhS8"}`
	fuzzSidecarJWK  = `{"use":"sig","kty":"OKP","kid":"a6yE87sjjQO7lM7jeZOTvnUCPngh6q4BFc360aE8PHc","crv":"Ed25519","alg":"EdDSA","x":"5z1-NoE8hmzS88VOwhKLbN9LXSjRoD-DQ0hZAqpWQZU","d":"JKs8zrH88HuLz20qfF8hmrE1yV1rzt-U0YfMCLe7BrA"}`
	fuzzContract    = "did:example:c1"
	fuzzIAT         = 1768471200
)

var fuzzNow = time.Unix(fuzzIAT+100, 0)

func jwk(tb testing.TB, s string) *jose.JSONWebKey {
	tb.Helper()
	var k jose.JSONWebKey
	if err := json.Unmarshal([]byte(s), &k); err != nil {
		tb.Fatal(err)
	}
	return &k
}

func capClaims(tb testing.TB) *contract.CapabilityClaims {
	jkt, err := verify.Thumbprint(jwk(tb, fuzzSidecarJWK))
	if err != nil {
		tb.Fatal(err)
	}
	return &contract.CapabilityClaims{Issuer: "registry", Subject: jkt, Contract: fuzzContract, Purpose: "training",
		Confirm: contract.Confirmation{JKT: jkt}, IssuedAt: fuzzIAT, NotBefore: fuzzIAT, Expiry: fuzzIAT + 300, ID: "tok-1"}
}

func enc(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func capSeeds(tb testing.TB) []string {
	reg, es := jwk(tb, fuzzRegistryJWK), jwk(tb, fuzzRegistryES)
	var out []string
	for _, mod := range []func(*contract.CapabilityClaims){
		func(*contract.CapabilityClaims) {},
		func(c *contract.CapabilityClaims) { c.Contract = "did:example:other" },
		func(c *contract.CapabilityClaims) { c.Confirm.JKT = "other" },
		func(c *contract.CapabilityClaims) { c.Expiry = fuzzIAT - 100 },
		func(c *contract.CapabilityClaims) { c.NotBefore = fuzzIAT + 1000 },
	} {
		c := capClaims(tb)
		mod(c)
		for _, k := range []*jose.JSONWebKey{reg, es} {
			s, err := verify.SignCapability(k, c)
			if err != nil {
				tb.Fatal(err)
			}
			out = append(out, s)
		}
	}
	payload, _ := json.Marshal(capClaims(tb))
	out = append(out,
		enc([]byte(`{"alg":"none","typ":"provgate-cap+jwt","kid":"`+reg.KeyID+`"}`))+"."+enc(payload)+".",
		enc([]byte(`{"alg":"HS256","typ":"provgate-cap+jwt","kid":"`+reg.KeyID+`"}`))+"."+enc(payload)+"."+enc(make([]byte, 32)),
		"a.b.c", "")
	return out
}

// TestVerifyCapabilityFor: the holder-side checks, each failing when its
// defence is removed.
func TestVerifyCapabilityFor(t *testing.T) {
	reg := jwk(t, fuzzRegistryJWK)
	keys := verify.PublicJWKS(reg, jwk(t, fuzzRegistryES))
	jkt := capClaims(t).Confirm.JKT
	seeds := capSeeds(t)
	for _, tc := range []struct {
		name  string
		token string
		now   time.Time
		want  error
	}{
		{"good EdDSA", seeds[0], fuzzNow, nil},
		{"good ES256", seeds[1], fuzzNow, nil},
		{"another contract", seeds[2], fuzzNow, verify.ErrWrongContract},
		{"another key", seeds[4], fuzzNow, verify.ErrWrongKey},
		{"expired", seeds[6], fuzzNow, verify.ErrExpired},
		{"not yet valid", seeds[8], fuzzNow, verify.ErrNotYetValid},
		{"expired by the clock", seeds[0], fuzzNow.Add(time.Hour), verify.ErrExpired},
		{"alg none", seeds[10], fuzzNow, verify.ErrAlgorithm},
		{"HS256", seeds[11], fuzzNow, verify.ErrAlgorithm},
		{"garbage", seeds[12], fuzzNow, verify.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := verify.VerifyCapabilityFor(tc.token, keys, tc.now, fuzzContract, jkt)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err == nil && (c.Contract != fuzzContract || c.Confirm.JKT != jkt) {
				t.Fatalf("claims %+v", c)
			}
		})
	}
	// Signed by a key the registry does not publish.
	other, _ := verify.GenerateKey(jose.EdDSA)
	tok, _ := verify.SignCapability(other, capClaims(t))
	if _, err := verify.VerifyCapabilityFor(tok, keys, fuzzNow, fuzzContract, jkt); !errors.Is(err, verify.ErrUnknownKey) {
		t.Fatalf("unknown signer: %v", err)
	}
	other.KeyID = reg.KeyID
	tok, _ = verify.SignCapability(other, capClaims(t))
	if _, err := verify.VerifyCapabilityFor(tok, keys, fuzzNow, fuzzContract, jkt); !errors.Is(err, verify.ErrSignature) {
		t.Fatalf("forged under the registry's kid: %v", err)
	}
}

// FuzzVerifyCapability: never panics; whatever verifies is for the
// contract, bound to the sidecar key, unexpired.
func FuzzVerifyCapability(f *testing.F) {
	keys := verify.PublicJWKS(jwk(f, fuzzRegistryJWK), jwk(f, fuzzRegistryES))
	jkt := capClaims(f).Confirm.JKT
	for _, s := range capSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		verify.VerifyCapability(token, keys, fuzzNow)
		c, err := verify.VerifyCapabilityFor(token, keys, fuzzNow, fuzzContract, jkt)
		if err != nil {
			return
		}
		if c.Contract != fuzzContract || c.Confirm.JKT != jkt || c.Expiry <= fuzzNow.Add(-verify.DefaultSkew).Unix() || c.ID == "" {
			t.Fatalf("accepted %+v", c)
		}
	})
}

const fuzzURL = "https://registry.example/provenance/did:example:c1/metering"

func dpopSeeds(tb testing.TB) [][4]string {
	k := jwk(tb, fuzzSidecarJWK)
	tok := capSeeds(tb)[0]
	var out [][4]string
	add := func(proof, method, url, token string) { out = append(out, [4]string{proof, method, url, token}) }
	p, _ := verify.NewDPoPProof(k, "POST", fuzzURL, tok, fuzzNow)
	add(p, "POST", fuzzURL, tok)
	add(p, "GET", fuzzURL, tok)
	add(p, "POST", fuzzURL+"x", tok)
	add(p, "POST", fuzzURL, tok+"x")
	add(p, "POST", fuzzURL, "")
	p0, _ := verify.NewDPoPProof(k, "POST", "https://registry.example/contracts/did:example:c1/request", "", fuzzNow)
	add(p0, "POST", "https://registry.example/contracts/did:example:c1/request", "")
	old, _ := verify.NewDPoPProof(k, "POST", fuzzURL, tok, fuzzNow.Add(-time.Hour))
	add(old, "POST", fuzzURL, tok)
	add("a.b.c", "GET", fuzzURL, "")
	return out
}

// TestVerifyDPoPProofTable: method, URL, token hash, age and signature are
// each checked.
func TestVerifyDPoPProofTable(t *testing.T) {
	s := dpopSeeds(t)
	want := []error{nil, verify.ErrProof, verify.ErrProof, verify.ErrProof, verify.ErrProof, nil, verify.ErrProof, verify.ErrProof}
	jkt := capClaims(t).Confirm.JKT
	for i, seed := range s {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			_, got, err := verify.VerifyDPoPProof(seed[0], seed[1], seed[2], seed[3], fuzzNow)
			if !errors.Is(err, want[i]) || (err == nil) != (want[i] == nil) {
				t.Fatalf("seed %d: got %v, want %v", i, err, want[i])
			}
			if err == nil && got != jkt {
				t.Fatalf("thumbprint %q, want %q", got, jkt)
			}
		})
	}
	// A proof signed by one key with another key in its header.
	p := s[0][0]
	parts := strings.Split(p, ".")
	other, _ := verify.GenerateKey(jose.EdDSA)
	hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
	var h map[string]any
	json.Unmarshal(hb, &h)
	pub, _ := json.Marshal(other.Public())
	var pm map[string]any
	json.Unmarshal(pub, &pm)
	h["jwk"] = pm
	hb, _ = json.Marshal(h)
	swapped := enc(hb) + "." + parts[1] + "." + parts[2]
	if _, _, err := verify.VerifyDPoPProof(swapped, "POST", fuzzURL, s[0][3], fuzzNow); !errors.Is(err, verify.ErrProof) {
		t.Fatalf("swapped header key: %v", err)
	}
}

// FuzzVerifyDPoPProof: never panics; an accepted proof matches the request
// and is signed by the key whose thumbprint it returns.
func FuzzVerifyDPoPProof(f *testing.F) {
	for _, s := range dpopSeeds(f) {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, proof, method, url, token string) {
		c, jkt, err := verify.VerifyDPoPProof(proof, method, url, token, fuzzNow)
		if err != nil {
			return
		}
		if jkt == "" || !strings.EqualFold(c.Method, method) || c.ID == "" {
			t.Fatalf("accepted %+v for %s %s", c, method, url)
		}
		if (token == "") != (c.AccessTokenHash == "") || (token != "" && c.AccessTokenHash != verify.AccessTokenHash(token)) {
			t.Fatalf("ath %q for token %q", c.AccessTokenHash, token)
		}
	})
}

func meterSeeds(tb testing.TB) []string {
	k := jwk(tb, fuzzSidecarJWK)
	jkt := capClaims(tb).Confirm.JKT
	ev := contract.MeteringEvent{ID: "ev-1", Time: time.Unix(fuzzIAT, 0).UTC(), Kind: contract.EventAccess, Name: "a/1.txt", Bytes: 10, Samples: 1, Units: 1, CostNanoUSD: 500000}
	var out []string
	for _, b := range []*contract.MeteringBatch{
		{Contract: fuzzContract, BatchID: "b1", Sidecar: jkt, IssuedAt: fuzzIAT, Events: []contract.MeteringEvent{ev}},
		{Contract: fuzzContract, BatchID: "b2", Sidecar: jkt, IssuedAt: fuzzIAT, Events: []contract.MeteringEvent{ev, ev}},
		{Contract: fuzzContract, BatchID: "b3", Sidecar: jkt, IssuedAt: fuzzIAT},
	} {
		s, err := verify.Sign(k, contract.TypeMetering, b, false)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, s)
	}
	es := jwk(tb, fuzzRegistryES)
	s, _ := verify.Sign(es, contract.TypeMetering, &contract.MeteringBatch{Contract: fuzzContract, BatchID: "b4", Sidecar: jkt, Events: []contract.MeteringEvent{ev}}, false)
	return append(out, s, "a.b.c", "")
}

// TestVerifyMeteringBatchTable: only a well-formed batch signed by the
// sidecar's key verifies.
func TestVerifyMeteringBatchTable(t *testing.T) {
	pub := jwk(t, fuzzSidecarJWK).Public()
	s := meterSeeds(t)
	for i, want := range []error{nil, verify.ErrMalformed, verify.ErrMalformed, verify.ErrKeyMismatch, verify.ErrMalformed, verify.ErrMalformed} {
		b, err := verify.VerifyMeteringBatch(s[i], &pub)
		if !errors.Is(err, want) || (err == nil) != (want == nil) {
			t.Errorf("seed %d: got %v, want %v", i, err, want)
		}
		if err == nil && (b.BatchID != "b1" || len(b.Events) != 1) {
			t.Errorf("seed %d: batch %+v", i, b)
		}
	}
}

// FuzzVerifyMeteringBatch: never panics; an accepted batch is valid.
func FuzzVerifyMeteringBatch(f *testing.F) {
	pub := jwk(f, fuzzSidecarJWK).Public()
	for _, s := range meterSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, jws string) {
		b, err := verify.VerifyMeteringBatch(jws, &pub)
		if err != nil {
			return
		}
		if err := b.Validate(); err != nil {
			t.Fatalf("accepted an invalid batch: %v", err)
		}
	})
}

// TestWriteFuzzCorpus writes the seeds above as checked-in corpus files
// (PROVGATE_WRITE_CORPUS=1 go test -run TestWriteFuzzCorpus ./verify/).
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("PROVGATE_WRITE_CORPUS") == "" {
		t.Skip("set PROVGATE_WRITE_CORPUS=1 to rewrite testdata/fuzz seeds")
	}
	write := func(target string, i int, args ...string) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		body := "go test fuzz v1\n" + strings.Join(args, "\n") + "\n"
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	str := func(s string) string { return "string(" + strconv.Quote(s) + ")" }
	byt := func(b []byte) string { return "[]byte(" + strconv.Quote(string(b)) + ")" }
	for i, s := range capSeeds(t) {
		write("FuzzVerifyCapability", i, str(s))
	}
	for i, s := range dpopSeeds(t) {
		write("FuzzVerifyDPoPProof", i, str(s[0]), str(s[1]), str(s[2]), str(s[3]))
	}
	for i, s := range meterSeeds(t) {
		write("FuzzVerifyMeteringBatch", i, str(s))
	}
	for i, s := range stateSeeds(t) {
		write("FuzzLogState", i, byt(s))
	}
	for i, s := range jwksSeeds() {
		write("FuzzKeySet", i, byt(s))
	}
	for i, s := range pageSeeds(t) {
		write("FuzzReplayPage", i, byt(s))
	}
}
