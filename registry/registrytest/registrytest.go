// Package registrytest starts a real provgate registry for tests: the real
// server (registry.New) on 127.0.0.1:0 over a temporary SQLite file,
// stopped by tb.Cleanup.
//
//	h := registrytest.Start(t)                                  // or Start(t, registrytest.WithMinIO(endpoint, key, secret))
//	alice := h.NewContributor(t, "did:example:alice")           // EdDSA key
//	c := h.CreateContract(t, registrytest.NewContract("did:example:c1", "bucket", alice))
//	seq := alice.Attest(t, c.ContractID, registrytest.Object("a/1.txt", []byte("hello")))
//	page, _ := h.Client.Events(ctx, c.ContractID, 0, 100)
//
// Harness fields: URL (base URL), AdminToken, Server (*registry.Server),
// Client (*contract.Client for URL, without a proof signer), DBPath.
// Contributor has ID and Key (the private JWK) and can Sign, Append,
// Attest (a contribution) and Redact.
//
// Licensees: NewContract names DefaultLicensee (no limits of its own), so
// that a test that just wants a token enrols its key with h.Enrol and puts
// the enrolment in its token request:
//
//	req := contract.TokenRequest{Purpose: "training", JWK: key.Public(), Enrolment: h.Enrol(t, c.ContractID, key)}
//
// NewLicensee makes others (with terms) for tests of the licensee model.
//
// PROVGATE_REGISTRY_TEST_DB=postgres puts every harness on a fresh database
// of the test binary's PostgreSQL cluster (internal/testenv) instead, to
// run a whole suite on PostgreSQL; DBPath is then its URL.
//
// Options: WithMinIO gives the registry S3 credentials, so that it
// presigns (marketplace mode); WithClock injects the registry's clock;
// WithConfig edits the registry.Config before the server starts.
package registrytest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	_ "github.com/mattn/go-sqlite3" // Enrol writes the registry database
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/verify"
)

// AdminToken is the harness registry's admin token.
const AdminToken = "registrytest-admin-token"

// Harness is a running registry.
type Harness struct {
	URL        string
	AdminToken string
	Server     *registry.Server
	Client     *contract.Client
	DBPath     string
}

// Option configures Start.
type Option func(*options)

type options struct {
	cfg   registry.Config
	minio *minioOpt
}

type minioOpt struct{ endpoint, access, secret, region string }

// WithMinIO lets the registry presign GET URLs on the S3 endpoint
// (host:port, plain http) with these credentials.
func WithMinIO(endpoint, accessKey, secretKey string) Option {
	return func(o *options) { o.minio = &minioOpt{endpoint, accessKey, secretKey, "us-east-1"} }
}

// WithClock sets the registry's clock.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.cfg.Clock = now }
}

// WithConfig edits the registry's config before it starts (DBPath,
// AdminToken and S3 are set by the harness first).
func WithConfig(f func(*registry.Config)) Option {
	return func(o *options) { f(&o.cfg) }
}

// Start starts a registry on 127.0.0.1:0 with a fresh SQLite file in
// tb.TempDir(), and stops it when the test ends.
func Start(tb testing.TB, opts ...Option) *Harness {
	tb.Helper()
	o := &options{}
	o.cfg.DBPath = filepath.Join(tb.TempDir(), "registry.db")
	o.cfg.AdminToken = AdminToken
	o.cfg.Name = "registrytest"
	o.cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("PROVGATE_REGISTRY_TEST_DB") == "postgres" {
		o.cfg.DBPath = testenv.Postgres(tb).NewDatabase(tb)
	}
	for _, opt := range opts {
		opt(o)
	}
	if o.minio != nil && o.cfg.S3 == nil {
		mc, err := minio.New(o.minio.endpoint, &minio.Options{
			Creds: credentials.NewStaticV4(o.minio.access, o.minio.secret, ""), Region: o.minio.region,
		})
		if err != nil {
			tb.Fatalf("registrytest: minio client: %v", err)
		}
		o.cfg.S3 = mc
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("registrytest: listen: %v", err)
	}
	url := "http://" + ln.Addr().String()
	if o.cfg.PublicURL == "" {
		o.cfg.PublicURL = url
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := registry.New(ctx, o.cfg)
	if err != nil {
		ln.Close()
		tb.Fatalf("registrytest: %v", err)
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			tb.Errorf("registrytest: serve: %v", err)
		}
	}()
	tb.Cleanup(func() {
		srv.Close() // ends live streams first
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			hs.Close()
		}
		<-served
	})
	client, err := contract.NewClient(url)
	if err != nil {
		tb.Fatalf("registrytest: %v", err)
	}
	client.BaseDelay = 10 * time.Millisecond
	client.MaxDelay = 100 * time.Millisecond
	h := &Harness{URL: url, AdminToken: o.cfg.AdminToken, Server: srv, Client: client, DBPath: o.cfg.DBPath}
	// Readiness: the JWKS answers.
	if _, err := client.JWKS(ctx, client.RegistryJWKSURL()); err != nil {
		tb.Fatalf("registrytest: registry not ready: %v", err)
	}
	return h
}

// Contributor is a party with an EdDSA key that signs attestations.
type Contributor struct {
	ID  string
	Key *jose.JSONWebKey
	h   *Harness
}

// NewContributor makes a contributor with a fresh EdDSA key.
func (h *Harness) NewContributor(tb testing.TB, id string) *Contributor {
	tb.Helper()
	k, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		tb.Fatal(err)
	}
	return &Contributor{ID: id, Key: k, h: h}
}

// Entry is the contributor as a contract lists it (inline public JWKS).
func (c *Contributor) Entry() contract.Contributor {
	return contract.Contributor{ID: c.ID, JWKS: verify.PublicJWKS(c.Key)}
}

// NewContract is a valid contract over bucket with the given contributors:
// pricing 0.0005 USD per sample, purpose "training", max 1,000,000 samples.
func NewContract(id, bucket string, contributors ...*Contributor) *contract.Contract {
	c := &contract.Contract{
		ContractID: id, Version: "2026-01-15", License: "cc-by-4.0",
		Pricing: contract.Pricing{Unit: contract.UnitSample, PriceUSD: 0.0005},
		Usage:   contract.Usage{Purposes: []string{"training"}, RetentionDays: 30, MaxSamples: 1000000},
		Origin:  contract.Origin{Bucket: bucket, Prefix: "data/"},
	}
	for _, ct := range contributors {
		c.Contributors = append(c.Contributors, ct.Entry())
	}
	c.Licensees = []contract.Licensee{DefaultLicensee().Entry()}
	return c
}

// Licensee is a party with an EdDSA key that enrols sidecar keys under
// contracts that name it.
type Licensee struct {
	ID    string
	Key   *jose.JSONWebKey
	Terms contract.LicenseTerms
}

// DefaultLicenseeID is the id of DefaultLicensee.
const DefaultLicenseeID = "did:example:licensee"

var defaultLicensee = sync.OnceValue(func() *Licensee {
	k, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		panic(err)
	}
	return &Licensee{ID: DefaultLicenseeID, Key: k}
})

// DefaultLicensee is the licensee that NewContract names: one key per test
// process, no terms of its own (the contract's limits apply).
func DefaultLicensee() *Licensee { return defaultLicensee() }

// NewLicensee makes a licensee with a fresh EdDSA key and the given terms.
func NewLicensee(tb testing.TB, id string, terms contract.LicenseTerms) *Licensee {
	tb.Helper()
	k, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		tb.Fatal(err)
	}
	return &Licensee{ID: id, Key: k, Terms: terms}
}

// Entry is the licensee as a contract lists it (inline public JWKS).
func (l *Licensee) Entry() contract.Licensee {
	return contract.Licensee{ID: l.ID, JWKS: verify.PublicJWKS(l.Key), Terms: l.Terms}
}

// EnrolJKT signs an enrolment of the sidecar key with thumbprint jkt under
// contractID, valid for ttl.
func (l *Licensee) EnrolJKT(tb testing.TB, contractID, jkt string, ttl time.Duration) string {
	tb.Helper()
	now := time.Now()
	jws, err := verify.SignEnrolment(l.Key, &contract.EnrolmentClaims{Issuer: l.ID, Subject: jkt, Contract: contractID,
		IssuedAt: now.Unix(), Expiry: now.Add(ttl).Unix(), ID: verify.NewID()})
	if err != nil {
		tb.Fatalf("registrytest: enrol: %v", err)
	}
	return jws
}

// Enrol signs an enrolment of the sidecar key (public or private) under
// contractID, valid for a day.
func (l *Licensee) Enrol(tb testing.TB, contractID string, sidecar *jose.JSONWebKey) string {
	tb.Helper()
	jkt, err := verify.Thumbprint(sidecar)
	if err != nil {
		tb.Fatal(err)
	}
	return l.EnrolJKT(tb, contractID, jkt, 24*time.Hour)
}

// Enrol is DefaultLicensee's enrolment of the sidecar key under
// contractID, valid for a day.
func (h *Harness) Enrol(tb testing.TB, contractID string, sidecar *jose.JSONWebKey) string {
	tb.Helper()
	return DefaultLicensee().Enrol(tb, contractID, sidecar)
}

// CreateContract creates c with the admin token and returns it as the
// registry completed it (log origin, checkpoint key, endpoint).
func (h *Harness) CreateContract(tb testing.TB, c *contract.Contract) *contract.Contract {
	tb.Helper()
	out, err := h.Client.CreateContract(context.Background(), h.AdminToken, c)
	if err != nil {
		tb.Fatalf("registrytest: create contract %s: %v", c.ContractID, err)
	}
	return out
}

// Object is the claim for data stored as-is (identity encoding).
func Object(name string, data []byte) contract.ObjectClaim {
	sum := sha256.Sum256(data)
	h := hex.EncodeToString(sum[:])
	return contract.ObjectClaim{Name: name, StoredSHA256: h, StoredSize: int64(len(data)), Encoding: contract.EncodingIdentity,
		DecodedSHA256: h, DecodedSize: int64(len(data))}
}

// Sign signs an attestation; Issuer, Subject, IssuedAt and ID are filled
// in when empty.
func (c *Contributor) Sign(tb testing.TB, contractID string, a *contract.Attestation) string {
	tb.Helper()
	if a.Issuer == "" {
		a.Issuer = c.ID
	}
	if a.Subject == "" {
		a.Subject = contractID
	}
	if a.IssuedAt == 0 {
		a.IssuedAt = time.Now().Unix()
	}
	if a.ID == "" {
		a.ID = verify.NewID()
	}
	jws, err := verify.SignAttestation(c.Key, a)
	if err != nil {
		tb.Fatalf("registrytest: sign: %v", err)
	}
	return jws
}

// Append submits a signed attestation and returns its seq.
func (c *Contributor) Append(tb testing.TB, contractID, jws string) uint64 {
	tb.Helper()
	res, err := c.h.Client.AppendAttestation(context.Background(), contractID, jws)
	if err != nil {
		tb.Fatalf("registrytest: append to %s: %v", contractID, err)
	}
	return res.Seq
}

// Attest appends a contribution of obj and returns its seq.
func (c *Contributor) Attest(tb testing.TB, contractID string, obj contract.ObjectClaim) uint64 {
	tb.Helper()
	o := obj
	return c.Append(tb, contractID, c.Sign(tb, contractID, &contract.Attestation{Type: contract.Contribution, Object: &o}))
}

// Redact appends a redaction of name and returns its seq.
func (c *Contributor) Redact(tb testing.TB, contractID, name string) uint64 {
	tb.Helper()
	return c.Append(tb, contractID, c.Sign(tb, contractID, &contract.Attestation{Type: contract.Redaction,
		Redaction: &contract.RedactionClaim{Name: name, Reason: "registrytest"}}))
}

// SignBatch signs a batch attestation of objs: the JWS and its manifest.
func (c *Contributor) SignBatch(tb testing.TB, contractID string, objs []contract.ObjectClaim) (jws string, manifest []byte) {
	tb.Helper()
	jws, manifest, err := verify.SignBatch(c.Key, c.ID, contractID, objs)
	if err != nil {
		tb.Fatalf("registrytest: sign batch: %v", err)
	}
	return jws, manifest
}

// AttestBatch appends a batch contribution of objs and returns its seq.
func (c *Contributor) AttestBatch(tb testing.TB, contractID string, objs []contract.ObjectClaim) uint64 {
	tb.Helper()
	jws, manifest := c.SignBatch(tb, contractID, objs)
	res, err := c.h.Client.AppendBatch(context.Background(), contractID, jws, manifest)
	if err != nil {
		tb.Fatalf("registrytest: append batch to %s: %v", contractID, err)
	}
	return res.Seq
}
