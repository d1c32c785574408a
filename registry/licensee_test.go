package registry_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/minio/minio-go/v7"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// marketplace starts a presigning registry over a real MinIO bucket with a
// contract of n one-line objects, made by edit.
func marketplace(t *testing.T, n int, edit func(*contract.Contract), opts ...registrytest.Option) (*registrytest.Harness, *contract.Contract, *testenv.MinIOServer) {
	t.Helper()
	ctx := context.Background()
	mio := testenv.MinIO(t)
	bucket := mio.Bucket(t)
	h := registrytest.Start(t, append(opts, registrytest.WithMinIO(mio.Endpoint, testenv.MinIOAccessKey, testenv.MinIOSecretKey))...)
	alice := h.NewContributor(t, "did:example:alice")
	spec := registrytest.NewContract("did:example:market", bucket, alice)
	if edit != nil {
		edit(spec)
	}
	c := h.CreateContract(t, spec)
	for i := range n {
		name, data := objName(i), []byte("object "+objName(i))
		if _, err := mio.Client(t).PutObject(ctx, bucket, c.Origin.Key(name), bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		alice.Attest(t, c.ContractID, registrytest.Object(name, data))
	}
	return h, c, mio
}

func objName(i int) string { return fmt.Sprintf("o/%03d.txt", i) }

// hmacJWS signs claims with HS256 under secret, as an attacker would to
// confuse a verifier that takes the public key as an HMAC secret.
func hmacJWS(t *testing.T, secret []byte, kid, typ string, claims any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType(jose.ContentType(typ)).WithHeader("kid", kid)
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: secret}, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(claims)
	obj, err := s.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := obj.CompactSerialize()
	return out
}

// noneJWS is an unsigned JWS (alg none).
func noneJWS(kid, typ string, claims any) string {
	h, _ := json.Marshal(map[string]string{"alg": "none", "typ": typ, "kid": kid})
	b, _ := json.Marshal(claims)
	return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(b) + "."
}

// TestFreshKeysGetNoToken is the "anyone gets a token" attack: fresh keys
// with an allowed purpose, and every way of faking an enrolment, get 403
// and no token, so nothing can be presigned and nothing read from the
// bucket.
func TestFreshKeysGetNoToken(t *testing.T) {
	ctx := context.Background()
	h, c, mio := marketplace(t, 3, nil)
	other := h.CreateContract(t, registrytest.NewContract("did:example:other", "bucket", h.NewContributor(t, "did:example:bob")))
	lic := registrytest.DefaultLicensee()

	for i := range 5 {
		sc := newSidecar(t, h)
		_, err := sc.client.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", JWK: sc.key.Public()})
		if contract.StatusOf(err) != http.StatusForbidden || contract.CodeOf(err) != contract.CodeNotEnrolled {
			t.Fatalf("fresh key %d: got %v, want 403 not_enrolled", i, err)
		}
		if !strings.Contains(err.Error(), "enrolment") {
			t.Fatalf("fresh key %d: message %q does not say an enrolment is needed", i, err)
		}
		// Without a token there is no presigned URL.
		if _, err := sc.client.Presign(ctx, c.ContractID, "", []string{objName(0)}); contract.StatusOf(err) != http.StatusUnauthorized {
			t.Fatalf("presign without a token: got %v, want 401", err)
		}
	}

	sc := newSidecar(t, h)
	mallory := registrytest.NewLicensee(t, "did:example:mallory", contract.LicenseTerms{})
	now := time.Now()
	claims := func(edit func(*contract.EnrolmentClaims)) *contract.EnrolmentClaims {
		e := &contract.EnrolmentClaims{Issuer: lic.ID, Subject: sc.jkt, Contract: c.ContractID, IssuedAt: now.Unix(),
			Expiry: now.Add(time.Hour).Unix(), ID: verify.NewID()}
		if edit != nil {
			edit(e)
		}
		return e
	}
	sign := func(key *jose.JSONWebKey, e *contract.EnrolmentClaims) string {
		jws, err := verify.Sign(key, contract.TypeEnrolment, e, false)
		if err != nil {
			t.Fatal(err)
		}
		return jws
	}
	pubBytes, _ := json.Marshal(lic.Key.Public())
	for _, tc := range []struct {
		name, enrolment string
	}{
		{"non-licensee key claiming the licensee", sign(mallory.Key, claims(nil))},
		{"non-licensee", sign(mallory.Key, claims(func(e *contract.EnrolmentClaims) { e.Issuer = mallory.ID }))},
		{"another contract", sign(lic.Key, claims(func(e *contract.EnrolmentClaims) { e.Contract = other.ContractID }))},
		{"another key", lic.EnrolJKT(t, c.ContractID, newSidecar(t, h).jkt, time.Hour)},
		{"expired", sign(lic.Key, claims(func(e *contract.EnrolmentClaims) {
			e.IssuedAt, e.Expiry = now.Add(-2*time.Hour).Unix(), now.Add(-time.Hour).Unix()
		}))},
		{"alg none", noneJWS(lic.Key.KeyID, contract.TypeEnrolment, claims(nil))},
		{"HS256 keyed with the public key", hmacJWS(t, pubBytes, lic.Key.KeyID, contract.TypeEnrolment, claims(nil))},
		{"wrong typ", func() string {
			jws, _ := verify.Sign(lic.Key, contract.TypeAttestation, claims(nil), false)
			return jws
		}()},
		{"garbage", "not.a.jws"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sc.client.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", JWK: sc.key.Public(), Enrolment: tc.enrolment})
			if contract.StatusOf(err) != http.StatusForbidden || contract.CodeOf(err) != contract.CodeNotEnrolled {
				t.Fatalf("got %v, want 403 not_enrolled", err)
			}
		})
	}
	// The bucket itself answers nothing without a signature.
	resp, err := http.Get("http://" + mio.Endpoint + "/" + c.Origin.Bucket + "/" + c.Origin.Key(objName(0)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("unsigned GET of the bucket: %d, want 403", resp.StatusCode)
	}
	// The real licensee's enrolment of the same key works, and reads.
	tok, err := sc.client.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", JWK: sc.key.Public(), Enrolment: lic.Enrol(t, c.ContractID, sc.key)})
	if err != nil {
		t.Fatalf("enrolled key: %v", err)
	}
	res, err := sc.client.Presign(ctx, c.ContractID, tok.Token, []string{objName(0)})
	if err != nil {
		t.Fatal(err)
	}
	resp, err = http.Get(res.URLs[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "object "+objName(0) {
		t.Fatalf("presigned GET = %q", body)
	}
}

// TestLicenseeTerms: a token needs the licensee's terms in force and
// allowing the purpose; a contract without licensees issues no token; the
// token expires with its enrolment.
func TestLicenseeTerms(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	expired := registrytest.NewLicensee(t, "did:example:expired", contract.LicenseTerms{ExpiresAt: time.Now().Add(-time.Minute)})
	evalOnly := registrytest.NewLicensee(t, "did:example:eval", contract.LicenseTerms{Purposes: []string{"evaluation"}})
	spec := registrytest.NewContract("did:example:terms", "bucket", alice)
	spec.Usage.Purposes = []string{"training", "evaluation"}
	spec.Licensees = append(spec.Licensees, expired.Entry(), evalOnly.Entry())
	c := h.CreateContract(t, spec)
	bare := registrytest.NewContract("did:example:nolicensees", "bucket", alice)
	bare.Licensees = nil
	nobody := h.CreateContract(t, bare)

	sc := newSidecar(t, h)
	for _, tc := range []struct {
		name, contract, purpose, enrolment, code string
	}{
		{"terms expired", c.ContractID, "training", expired.Enrol(t, c.ContractID, sc.key), contract.CodeNotEnrolled},
		{"purpose outside the terms", c.ContractID, "training", evalOnly.Enrol(t, c.ContractID, sc.key), contract.CodeForbidden},
		{"contract without licensees", nobody.ContractID, "training", h.Enrol(t, nobody.ContractID, sc.key), contract.CodeNotEnrolled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sc.client.RequestToken(ctx, tc.contract, contract.TokenRequest{Purpose: tc.purpose, JWK: sc.key.Public(), Enrolment: tc.enrolment})
			if contract.StatusOf(err) != http.StatusForbidden || contract.CodeOf(err) != tc.code {
				t.Fatalf("got %v, want 403 %s", err, tc.code)
			}
		})
	}
	// The purpose the terms allow gets a token naming the licensee, living
	// no longer than a short enrolment.
	short := evalOnly.EnrolJKT(t, c.ContractID, sc.jkt, 90*time.Second)
	tok, err := sc.client.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "evaluation", JWK: sc.key.Public(), Enrolment: short})
	if err != nil {
		t.Fatal(err)
	}
	claims, _ := peekClaims(tok.Token)
	if claims.Licensee != evalOnly.ID || claims.Lease == "" {
		t.Fatalf("claims = %+v, want licensee %s and a lease", claims, evalOnly.ID)
	}
	if d := time.Until(tok.ExpiresAt); d > 91*time.Second {
		t.Fatalf("token outlives its enrolment by %s", d-90*time.Second)
	}
}

// TestConcurrentTokensNeverOverrunTheLicenseeQuota: many sidecars of one
// licensee ask for leases at once; the grants never sum past its quota,
// another licensee's quota is untouched, and a refresh keeps the lease.
func TestConcurrentTokensNeverOverrunTheLicenseeQuota(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	acme := registrytest.NewLicensee(t, "did:example:acme", contract.LicenseTerms{MaxSamples: 20})
	globex := registrytest.NewLicensee(t, "did:example:globex", contract.LicenseTerms{MaxSamples: 7})
	spec := registrytest.NewContract("did:example:leases", "bucket", alice)
	spec.Licensees = []contract.Licensee{acme.Entry(), globex.Entry()}
	c := h.CreateContract(t, spec)

	const n = 30
	sidecars := make([]*sidecar, n)
	for i := range sidecars {
		sidecars[i] = newSidecar(t, h)
	}
	var granted, refused atomic.Int64
	var wg sync.WaitGroup
	for _, sc := range sidecars {
		wg.Go(func() {
			tok, err := sc.client.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training",
				Usage: contract.Quota{MaxSamples: 3}, JWK: sc.key.Public(), Enrolment: acme.Enrol(t, c.ContractID, sc.key)})
			if contract.CodeOf(err) == contract.CodeQuotaExceeded {
				refused.Add(1)
				return
			}
			if err != nil {
				t.Error(err)
				return
			}
			claims, _ := peekClaims(tok.Token)
			granted.Add(claims.Quota.MaxSamples)
		})
	}
	wg.Wait()
	if granted.Load() != 20 || refused.Load() != n-7 {
		t.Fatalf("granted %d samples to %d sidecars, refused %d; want exactly 20 of acme's 20, 23 refused", granted.Load(), n-refused.Load(), refused.Load())
	}
	// Acme spent everything; globex still gets all of its own.
	g := newSidecar(t, h)
	tok, err := g.client.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", JWK: g.key.Public(), Enrolment: globex.Enrol(t, c.ContractID, g.key)})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := peekClaims(tok.Token)
	if first.Quota.MaxSamples != 7 || first.Licensee != globex.ID {
		t.Fatalf("globex's lease = %+v, want all of its 7 samples", first)
	}
	// A refresh keeps the lease and its grant (cumulative over its tokens).
	tok, err = g.client.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", Usage: contract.Quota{MaxSamples: 1}, JWK: g.key.Public(), Enrolment: globex.Enrol(t, c.ContractID, g.key)})
	if err != nil {
		t.Fatal(err)
	}
	again, _ := peekClaims(tok.Token)
	if again.Lease != first.Lease || again.Quota != first.Quota || again.ID == first.ID {
		t.Fatalf("refresh = lease %s quota %+v, want lease %s quota %+v in a new token", again.Lease, again.Quota, first.Lease, first.Quota)
	}
}

// TestConcurrentPresignsNeverPassTheLease: parallel presigns of distinct
// objects under one lease of 5 samples presign exactly 5.
func TestConcurrentPresignsNeverPassTheLease(t *testing.T) {
	ctx := context.Background()
	h, c, _ := marketplace(t, 24, nil)
	sc := newSidecar(t, h)
	tok := sc.token(t, c.ContractID, contract.Quota{MaxSamples: 5})
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			_, err := sc.client.Presign(ctx, c.ContractID, tok.Token, []string{objName(i)})
			switch {
			case err == nil:
				ok.Add(1)
			case contract.CodeOf(err) == contract.CodeQuotaExceeded:
				refused.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 5 || refused.Load() != 19 {
		t.Fatalf("presigned %d objects, refused %d; want 5 and 19", ok.Load(), refused.Load())
	}
}

// TestDeadLeaseReturnsWhatItDidNotUse: when a lease's last token expires,
// the licensee gets back what it did not presign, and only that.
func TestDeadLeaseReturnsWhatItDidNotUse(t *testing.T) {
	ctx := context.Background()
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	acme := registrytest.NewLicensee(t, "did:example:acme", contract.LicenseTerms{MaxSamples: 10})
	h, c, _ := marketplace(t, 4, func(c *contract.Contract) { c.Licensees = []contract.Licensee{acme.Entry()} }, registrytest.WithClock(now))
	clocked := func() *sidecar {
		sc := newSidecar(t, h)
		sc.client.Proof = func(method, url, token string) (string, error) {
			return verify.NewDPoPProof(sc.key, method, url, token, now())
		}
		return sc
	}
	request := func(sc *sidecar) (*contract.CapabilityClaims, error) {
		tok, err := sc.client.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", JWK: sc.key.Public(), Enrolment: acme.Enrol(t, c.ContractID, sc.key)})
		if err != nil {
			return nil, err
		}
		claims, _ := peekClaims(tok.Token)
		if _, err := sc.client.Presign(ctx, c.ContractID, tok.Token, []string{objName(0), objName(1), objName(2)}); err != nil {
			return nil, err
		}
		return claims, nil
	}
	first, second := clocked(), clocked()
	if cl, err := request(first); err != nil || cl.Quota.MaxSamples != 10 {
		t.Fatalf("first lease: %+v %v, want all 10", cl, err)
	}
	if _, err := request(second); contract.CodeOf(err) != contract.CodeQuotaExceeded {
		t.Fatalf("second sidecar while the first lease is live: %v, want quota_exceeded", err)
	}
	offset.Store(int64(10 * time.Minute)) // the first lease's token expired
	cl, err := request(second)
	if err != nil || cl.Quota.MaxSamples != 7 {
		t.Fatalf("after the first lease died: %+v %v, want the 7 it did not presign", cl, err)
	}
}

// peekClaims reads a token's claims without verifying it (the tests above
// verify tokens elsewhere; here only the grant matters).
func peekClaims(token string) (*contract.CapabilityClaims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("not a JWS")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, err
	}
	var c contract.CapabilityClaims
	return &c, json.Unmarshal(b, &c)
}

// TestDeadLeaseIsChargedWhatItMetered: a lease that presigned nothing (a
// self-hosted sidecar reads with its own credentials) is charged, once
// dead, the samples its sidecar metered, so a licensee cannot reset its
// quota by letting leases expire.
func TestDeadLeaseIsChargedWhatItMetered(t *testing.T) {
	ctx := context.Background()
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	h := registrytest.Start(t, registrytest.WithClock(now))
	acme := registrytest.NewLicensee(t, "did:example:acme", contract.LicenseTerms{MaxSamples: 10})
	spec := registrytest.NewContract("did:example:metered", "bucket", h.NewContributor(t, "did:example:alice"))
	spec.Licensees = []contract.Licensee{acme.Entry()}
	c := h.CreateContract(t, spec)
	clocked := func() *sidecar {
		sc := newSidecar(t, h)
		sc.client.Proof = func(method, url, token string) (string, error) {
			return verify.NewDPoPProof(sc.key, method, url, token, now())
		}
		return sc
	}
	request := func(sc *sidecar) (*contract.TokenResponse, error) {
		return sc.client.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", JWK: sc.key.Public(), Enrolment: acme.Enrol(t, c.ContractID, sc.key)})
	}
	first, second := clocked(), clocked()
	tok, err := request(first)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.client.PostMetering(ctx, c.ContractID, tok.Token, "k1", batch(t, first, c.ContractID, "b1", "e1", "e2", "e3", "e4", "e5", "e6")); err != nil {
		t.Fatal(err)
	}
	offset.Store(int64(10 * time.Minute)) // the first lease's token expired
	tok, err = request(second)
	if err != nil {
		t.Fatal(err)
	}
	if cl, _ := peekClaims(tok.Token); cl.Quota.MaxSamples != 4 {
		t.Fatalf("after a lease that metered 6 of 10 died: granted %d, want 4", cl.Quota.MaxSamples)
	}
}
