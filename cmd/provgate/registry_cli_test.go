package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/klauspost/compress/gzip"
	"github.com/minio/minio-go/v7"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

func TestRotateKeyCLI(t *testing.T) {
	dir := t.TempDir()
	db, keyFile := filepath.Join(dir, "r.db"), filepath.Join(dir, "r.jwk")
	url := startRegistryCLI(t, "--db", db, "--key", keyFile)
	old, err := verify.LoadKey(keyFile)
	if err != nil {
		t.Fatalf("registry did not write its key: %v", err)
	}
	var pub struct {
		JWK jose.JSONWebKey `json:"jwk"`
	}
	json.Unmarshal([]byte(mustCLI(t, "registry", "rotate-key", "--db", db, "--key", keyFile, "--alg", "ES256")), &pub)
	next, err := verify.LoadKey(keyFile)
	if err != nil || next.KeyID == old.KeyID || pub.JWK.KeyID != next.KeyID || next.Algorithm != "ES256" {
		t.Fatalf("key file after rotation: %+v %v (old %s)", next, err, old.KeyID)
	}
	client, _ := contract.NewClient(url)
	keys, err := client.JWKS(context.Background(), client.RegistryJWKSURL())
	if err != nil || len(keys.Key(old.KeyID)) != 1 || len(keys.Key(next.KeyID)) != 1 {
		t.Fatalf("JWKS during the transition: %+v %v", keys, err)
	}
}

func TestCLIUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"keygen"},
		{"keygen", "--out", filepath.Join(t.TempDir(), "k"), "--alg", "RS256"},
		{"registry", "--db", "x.db"},
		{"contract"},
		{"contribute", "--registry", "http://127.0.0.1:1"},
		{"verify"},
		{"verify", "log", "--registry", "http://x"},
		{"enroll"},
		{"enroll", "--licensee", "did:example:l", "--contract", "did:example:c", "--key", "k.jwk"},
		{"enroll", "--licensee", "did:example:l", "--contract", "did:example:c", "--key", "k.jwk", "--sidecar-jkt", "x", "--ttl", "-1h"},
	} {
		if code, _, errs := cli(t, args...); code != 2 {
			t.Errorf("provgate %s: exit %d, want 2 (stderr %q)", strings.Join(args, " "), code, errs)
		}
	}
	for _, cmd := range []string{"keygen", "registry", "contract", "contribute", "verify", "enroll"} {
		if code, _, errs := cli(t, cmd, "-h"); code != 0 || !strings.Contains(errs, "Usage: provgate "+cmd) {
			t.Errorf("provgate %s -h: exit %d, stderr %q", cmd, code, errs)
		}
	}
}

// TestContributeGzipWithPrefix: single files and a directory, gzip, a name
// prefix; a redaction, a metering batch and a key revocation later, the
// auditor still verifies the whole log.
func TestContributeGzipAndAuditAllEntryKinds(t *testing.T) {
	ctx := context.Background()
	mio := testenv.MinIO(t)
	bucket := mio.Bucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", testenv.MinIOAccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testenv.MinIOSecretKey)
	t.Setenv("AWS_REGION", testenv.MinIORegion)
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	spare, _ := verify.GenerateKey(jose.EdDSA)
	ct := alice.Entry()
	ct.JWKS.Keys = append(ct.JWKS.Keys, spare.Public())
	spec := registrytest.NewContract("did:example:c1", bucket)
	spec.Contributors = []contract.Contributor{ct}
	c := h.CreateContract(t, spec)

	dir := t.TempDir()
	keyFile := filepath.Join(dir, "alice.jwk")
	verify.SaveKey(keyFile, alice.Key)
	os.MkdirAll(filepath.Join(dir, "d", "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "d", "sub", "x.txt"), bytes.Repeat([]byte("x"), 5000), 0o644)
	os.WriteFile(filepath.Join(dir, "single.txt"), []byte("single"), 0o644)
	out := mustCLI(t, "contribute", "--registry", h.URL, "--contract", c.ContractID, "--key", keyFile, "--s3-endpoint", mio.URL(),
		"--prefix", "v1", "--encoding", "gzip", filepath.Join(dir, "d"), filepath.Join(dir, "single.txt")) // one batch of 2
	if !strings.Contains(out, "contributed 2 objects") {
		t.Fatalf("contribute: %s", out)
	}
	obj, err := mio.Client(t).GetObject(ctx, bucket, c.Origin.Key("v1/sub/x.txt"), minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(obj)
	if err != nil {
		t.Fatalf("stored object is not gzip: %v", err)
	}
	var got bytes.Buffer
	got.ReadFrom(zr)
	if got.Len() != 5000 {
		t.Fatalf("decoded %d bytes, want 5000", got.Len())
	}

	alice.Redact(t, c.ContractID, "v1/single.txt")
	sc := newCLISidecar(t, h.URL)
	tok, err := sc.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", JWK: sc.key.Public(), Enrolment: h.Enrol(t, c.ContractID, sc.key)})
	if err != nil {
		t.Fatal(err)
	}
	b := &contract.MeteringBatch{Contract: c.ContractID, BatchID: "b1", Sidecar: sc.jkt, IssuedAt: time.Now().Unix(),
		Events: []contract.MeteringEvent{{ID: "e1", Time: time.Now(), Kind: contract.EventAccess, Bytes: 5000, Samples: 1, Units: 1, CostNanoUSD: 500_000}}}
	jws, _ := verify.SignMeteringBatch(sc.key, b)
	if _, err := sc.PostMetering(ctx, c.ContractID, tok.Token, "k1", jws); err != nil {
		t.Fatal(err)
	}
	alice.Append(t, c.ContractID, alice.Sign(t, c.ContractID, &contract.Attestation{Type: contract.Revocation, Revocation: &contract.RevocationClaim{KeyID: spare.KeyID}}))

	out = mustCLI(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID, "--max-age", "1m")
	if !strings.Contains(out, "5 entries (3 attestations, 1 metering, 1 redactions, 1 revocations)") || !strings.Contains(out, "terms at entry 1") {
		t.Fatalf("verify log: %s", out)
	}
}

type cliSidecar struct {
	*contract.Client
	key *jose.JSONWebKey
	jkt string
}

func newCLISidecar(t *testing.T, url string) *cliSidecar {
	t.Helper()
	k, _ := verify.GenerateKey(jose.EdDSA)
	jkt, _ := verify.Thumbprint(k)
	c, _ := contract.NewClient(url)
	c.Proof = func(method, u, token string) (string, error) {
		return verify.NewDPoPProof(k, method, u, token, time.Now())
	}
	return &cliSidecar{Client: c, key: k, jkt: jkt}
}

// TestVerifyLogRefusesForkAndRollback: two registries sign with the same
// checkpoint key for the same contract but hold different logs; a trusted
// checkpoint from one is inconsistent with the other.
func TestVerifyLogRefusesForkAndRollback(t *testing.T) {
	skey, _, err := verify.GenerateCheckpointKey("fork.test")
	if err != nil {
		t.Fatal(err)
	}
	same := registrytest.WithConfig(func(c *registry.Config) { c.CheckpointKey = skey; c.Name = "fork.test" })
	a, b := registrytest.Start(t, same), registrytest.Start(t, same)
	alice := a.NewContributor(t, "did:example:alice")
	spec := registrytest.NewContract("did:example:c1", "bucket", alice)
	a.CreateContract(t, spec)
	b.CreateContract(t, spec)
	for i := range 4 {
		alice.Attest(t, spec.ContractID, registrytest.Object(fmt.Sprint("a", i), []byte{1}))
	}
	for i := range 3 {
		res, err := b.Client.AppendAttestation(context.Background(), spec.ContractID, alice.Sign(t, spec.ContractID, &contract.Attestation{Type: contract.Contribution, Object: ptr(registrytest.Object(fmt.Sprint("b", i), []byte{2}))}))
		if err != nil || res.Seq != uint64(i+2) {
			t.Fatal(res, err)
		}
	}
	trusted := filepath.Join(t.TempDir(), "trusted")
	mustCLI(t, "verify", "log", "--registry", a.URL, "--contract", spec.ContractID, "--trusted-checkpoint", trusted)
	code, _, errs := cli(t, "verify", "log", "--registry", b.URL, "--contract", spec.ContractID, "--trusted-checkpoint", trusted)
	if code != 1 || !strings.Contains(errs, "rolled back") {
		t.Fatalf("rollback: exit %d %q", code, errs)
	}
	// b grows past a: now it is a fork, not a rollback.
	for i := 3; i < 6; i++ {
		b.Client.AppendAttestation(context.Background(), spec.ContractID, alice.Sign(t, spec.ContractID, &contract.Attestation{Type: contract.Contribution, Object: ptr(registrytest.Object(fmt.Sprint("b", i), []byte{2}))}))
	}
	code, _, errs = cli(t, "verify", "log", "--registry", b.URL, "--contract", spec.ContractID, "--trusted-checkpoint", trusted)
	if code != 1 || !strings.Contains(errs, "inconsistent checkpoints") {
		t.Fatalf("fork: exit %d %q", code, errs)
	}
}

func ptr[T any](v T) *T { return &v }

// TestContributeRetriesALostAppendOnce: the registry appends but the
// response is lost (a loopback proxy answers 503 instead); contribute
// retries the same attestation, which the registry refuses as a duplicate,
// and each file is in the log exactly once.
func TestContributeRetriesALostAppendOnce(t *testing.T) {
	mio := testenv.MinIO(t)
	bucket := mio.Bucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", testenv.MinIOAccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testenv.MinIOSecretKey)
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:c1", bucket, alice))
	target, _ := url.Parse(h.URL)
	var lost atomic.Int32
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodPost && strings.HasSuffix(resp.Request.URL.Path, "/events") && lost.Add(1) <= 2 {
			resp.Body.Close()
			resp.StatusCode = http.StatusServiceUnavailable
			resp.Body = io.NopCloser(strings.NewReader(`{"error":{"code":"unavailable","message":"lost"}}`))
			resp.Header.Del("Content-Length")
		}
		return nil
	}
	front := httptest.NewServer(proxy)
	defer front.Close()

	dir := t.TempDir()
	keyFile := filepath.Join(dir, "alice.jwk")
	verify.SaveKey(keyFile, alice.Key)
	data := filepath.Join(dir, "data")
	os.Mkdir(data, 0o755)
	for i := range 3 {
		os.WriteFile(filepath.Join(data, fmt.Sprintf("f%d", i)), []byte{byte(i)}, 0o644)
	}
	out := mustCLI(t, "contribute", "--registry", front.URL, "--contract", c.ContractID, "--key", keyFile, "--s3-endpoint", mio.URL(), "--jobs", "1", "--batch-size", "1", data)
	if !strings.Contains(out, "contributed 3 objects") {
		t.Fatalf("contribute: %s", out)
	}
	page, err := h.Client.Events(context.Background(), c.ContractID, 0, 100)
	if err != nil || len(page.Entries) != 4 {
		t.Fatalf("log has %d entries (%v), want 4 (the terms and 3)", len(page.Entries), err)
	}
}

// TestVerifyLogChecksMeteringSignatures: a registry that publishes another
// key for a sidecar (here a loopback proxy rewriting the answer) cannot
// make verify log accept that sidecar's batches: the key must hash to the
// batch's kid.
func TestVerifyLogChecksMeteringSignatures(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:c1", "bucket", alice))
	alice.Attest(t, c.ContractID, registrytest.Object("a", []byte("a")))
	sc := newCLISidecar(t, h.URL)
	tok, err := sc.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", JWK: sc.key.Public(), Enrolment: h.Enrol(t, c.ContractID, sc.key)})
	if err != nil {
		t.Fatal(err)
	}
	b := &contract.MeteringBatch{Contract: c.ContractID, BatchID: "b1", Sidecar: sc.jkt, IssuedAt: time.Now().Unix(),
		Events: []contract.MeteringEvent{{ID: "e1", Time: time.Now(), Kind: contract.EventAccess, Bytes: 1, Samples: 1, Units: 1, CostNanoUSD: 500_000}}}
	jws, _ := verify.SignMeteringBatch(sc.key, b)
	if _, err := sc.PostMetering(ctx, c.ContractID, tok.Token, "k1", jws); err != nil {
		t.Fatal(err)
	}
	if out := mustCLI(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID, "--checkpoint-key", c.Log.CheckpointKey); !strings.Contains(out, "1 metering") {
		t.Fatalf("verify log: %s", out)
	}
	_, other, _ := verify.GenerateCheckpointKey("registrytest")
	if code, _, errs := cli(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID, "--checkpoint-key", other); code != 1 || !strings.Contains(errs, "pinned") {
		t.Fatalf("pinned key mismatch: exit %d %q", code, errs)
	}

	otherKey, _ := verify.GenerateKey(jose.EdDSA)
	target, _ := url.Parse(h.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if strings.HasPrefix(resp.Request.URL.Path, "/sidecars/") {
			resp.Body.Close()
			b, _ := json.Marshal(verify.PublicJWKS(otherKey))
			resp.Body = io.NopCloser(bytes.NewReader(b))
			resp.Header.Del("Content-Length")
		}
		return nil
	}
	front := httptest.NewServer(proxy)
	defer front.Close()
	code, _, errs := cli(t, "verify", "log", "--registry", front.URL, "--contract", c.ContractID)
	if code != 1 || !strings.Contains(errs, "entry 3:") || !strings.Contains(errs, "thumbprint") {
		t.Fatalf("substituted sidecar key: exit %d, stderr %q", code, errs)
	}
}

// TestVerifyLogCountsEventIDsPerSender: two sidecars whose event ids
// collide (one pre-claimed the other's) are both counted by the registry,
// each under its own key; verify log agrees and finds no duplicate.
func TestVerifyLogCountsEventIDsPerSender(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:c1", "bucket", alice))
	for i, sc := range []*cliSidecar{newCLISidecar(t, h.URL), newCLISidecar(t, h.URL)} {
		tok, err := sc.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", Usage: contract.Quota{MaxSamples: 10},
			JWK: sc.key.Public(), Enrolment: h.Enrol(t, c.ContractID, sc.key)})
		if err != nil {
			t.Fatal(err)
		}
		b := &contract.MeteringBatch{Contract: c.ContractID, BatchID: "b1", Sidecar: sc.jkt, IssuedAt: time.Now().Unix(),
			Events: []contract.MeteringEvent{{ID: "L-1", Time: time.Now(), Kind: contract.EventAccess, Bytes: 1, Samples: 1, Units: 1, CostNanoUSD: 500_000}}}
		jws, _ := verify.SignMeteringBatch(sc.key, b)
		if resp, err := sc.PostMetering(ctx, c.ContractID, tok.Token, "k1", jws); err != nil || resp.Accepted != 1 {
			t.Fatalf("sidecar %d: %+v, %v", i, resp, err)
		}
	}
	if code, out, errs := cli(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID, "--checkpoint-key", c.Log.CheckpointKey); code != 0 || !strings.Contains(out, "2 metering") {
		t.Fatalf("verify log: exit %d\n%s\n%s", code, out, errs)
	}
}

// TestContributeAttestsTokenCounts: under a contract priced per token,
// contribute attests each object's whitespace-v1 count of its decoded
// bytes, whatever its stored encoding, and refuses a file that is not
// UTF-8 (it has no count).
func TestContributeAttestsTokenCounts(t *testing.T) {
	ctx := context.Background()
	mio := testenv.MinIO(t)
	bucket := mio.Bucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", testenv.MinIOAccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testenv.MinIOSecretKey)
	t.Setenv("AWS_REGION", testenv.MinIORegion)
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	spec := registrytest.NewContract("did:example:tokens", bucket, alice)
	spec.Pricing = contract.Pricing{Unit: contract.UnitToken, PriceUSD: 1e-6, Tokenizer: "whitespace-v1"}
	c := h.CreateContract(t, spec)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "alice.jwk")
	verify.SaveKey(keyFile, alice.Key)
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte("one two  three\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "b.txt"), []byte(strings.Repeat("héllo wörld ", 1000)), 0o644)
	mustCLI(t, "contribute", "--registry", h.URL, "--contract", c.ContractID, "--key", keyFile, "--s3-endpoint", mio.URL(),
		"--encoding", "zstd", filepath.Join(dir, "a.txt"), filepath.Join(dir, "b.txt"))
	client, _ := contract.NewClient(h.URL)
	live, err := liveObjects(ctx, client, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	if live["a.txt"].Tokens != 3 || live["b.txt"].Tokens != 2000 {
		t.Errorf("attested token counts: a.txt %d, b.txt %d; want 3 and 2000", live["a.txt"].Tokens, live["b.txt"].Tokens)
	}
	bad := filepath.Join(dir, "bad.bin")
	os.WriteFile(bad, []byte("ok \xff\xfe"), 0o644)
	code, _, errs := cli(t, "contribute", "--registry", h.URL, "--contract", c.ContractID, "--key", keyFile, "--s3-endpoint", mio.URL(), bad)
	if code == 0 || !strings.Contains(errs, "invalid UTF-8") {
		t.Errorf("contributing a non-UTF-8 file to a token contract: exit %d, stderr %q", code, errs)
	}
}

// `verify log` completes against a log of maximal entries served in pages
// bounded in bytes: it follows the pages it gets, not the size it asked.
func TestVerifyLogOnMaximalEntries(t *testing.T) {
	h := registrytest.Start(t, registrytest.WithConfig(func(c *registry.Config) {
		c.MaxPageBytes = 256 << 10
		c.SyncNormalUnsafe = true
	}))
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:big", "bucket", alice))
	const n = 24
	for i := range n {
		o := registrytest.Object(fmt.Sprintf("big/%02d.txt", i), []byte("x"))
		o.License = strings.Repeat("l", contract.MaxAttestationSize*3/4-2048)
		alice.Append(t, c.ContractID, alice.Sign(t, c.ContractID, &contract.Attestation{Type: contract.Contribution, Object: &o}))
	}
	page, err := h.Client.Events(context.Background(), c.ContractID, 0, contract.MaxEventsLimit)
	if err != nil || len(page.Entries) >= n/2 {
		t.Fatalf("first page: %d entries, %v; want a page bounded in bytes", len(page.Entries), err)
	}
	out := mustCLI(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID)
	if !strings.Contains(out, fmt.Sprintf("OK %s: %d entries", c.ContractID, n+1)) {
		t.Fatalf("verify log: %s", out)
	}
}

// TestVerifyLogChecksAggregateBatches: an aggregate metering batch (sums
// and the root of its rows, no events) is a metering entry the audit
// checks and accepts: priced as the contract says, its rows counted once.
func TestVerifyLogChecksAggregateBatches(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:c1", "bucket", alice))
	sc := newCLISidecar(t, h.URL)
	tok, err := sc.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", JWK: sc.key.Public(), Enrolment: h.Enrol(t, c.ContractID, sc.key)})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	for i, rows := range []int64{0, 10} {
		b := &contract.MeteringBatch{Contract: c.ContractID, BatchID: fmt.Sprint("b", i), Sidecar: sc.jkt, IssuedAt: now.Unix(),
			Aggregates: []contract.MeteringAggregate{{Kind: contract.EventAccess, Outcome: contract.OutcomeServed, Job: "j", Events: 10,
				Samples: 10, Bytes: 1000, Units: 10, CostNanoUSD: 10 * 500_000, FirstTime: now, LastTime: now}},
			Rows: &contract.RowCommitment{Ledger: "L", AfterSeq: rows, LastSeq: rows + 10, Count: 10, Root: bytes.Repeat([]byte{byte(i)}, 32)}}
		jws, _ := verify.SignMeteringBatch(sc.key, b)
		if resp, err := sc.PostMetering(ctx, c.ContractID, tok.Token, fmt.Sprint("k", i), jws); err != nil || resp.Accepted != 10 {
			t.Fatalf("batch %d: %+v, %v", i, resp, err)
		}
	}
	if code, out, errs := cli(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID, "--checkpoint-key", c.Log.CheckpointKey); code != 0 || !strings.Contains(out, "2 metering") {
		t.Fatalf("verify log: exit %d\n%s\n%s", code, out, errs)
	}
}
