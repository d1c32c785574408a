package e2e_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// env is one contract's world: MinIO bucket, registry (behind a switchable
// front), a contributor, and the contract.
type env struct {
	t      testing.TB
	minio  *testenv.MinIOServer
	bucket string
	s3     *minio.Client
	reg    *registrytest.Harness
	front  *front
	alice  *registrytest.Contributor
	c      *contract.Contract
	client *contract.Client // through the front
	// origin is the host:port of the bucket as the registry (presigning)
	// and `provgate serve` see it: MinIO, or a proxy in front of it that
	// delays every response (envOpt.originDelay).
	origin string
	// originLoad counts the requests in flight at the delaying proxy.
	originLoad *inflight
}

// inflight counts requests in flight and their peak.
type inflight struct{ now, peak atomic.Int64 }

func (f *inflight) enter() {
	n := f.now.Add(1)
	for {
		p := f.peak.Load()
		if n <= p || f.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

func (f *inflight) leave() { f.now.Add(-1) }

type envOpt struct {
	regConfig func(*registry.Config)
	contract  func(*contract.Contract)
	// originDelay puts a loopback proxy that delays every response by
	// this much between MinIO and everyone who reads the bucket through
	// env.origin (a distant origin).
	originDelay time.Duration
}

func newEnv(t testing.TB, o envOpt) *env {
	t.Helper()
	srv := testenv.MinIO(t)
	e := &env{t: t, minio: srv, bucket: srv.Bucket(t), s3: srv.Client(t), origin: srv.Endpoint}
	if o.originDelay > 0 {
		e.originLoad = &inflight{}
		e.origin = startDelayProxy(t, srv.Endpoint, o.originDelay, e.originLoad)
	}
	// The sidecar reaches the registry through the front, so the registry's
	// public URL (which DPoP proofs name) is the front's.
	e.front = newFront(t)
	opts := []registrytest.Option{registrytest.WithMinIO(e.origin, testenv.MinIOAccessKey, testenv.MinIOSecretKey),
		registrytest.WithConfig(func(c *registry.Config) {
			c.PublicURL = e.front.URL()
			if o.regConfig != nil {
				o.regConfig(c)
			}
		})}
	e.reg = registrytest.Start(t, opts...)
	e.front.point(e.reg.URL)
	e.alice = e.reg.NewContributor(t, "did:example:alice")
	c := registrytest.NewContract("did:example:e2e-"+strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), e.bucket, e.alice)
	c.Origin.Prefix = "ds/"
	if o.contract != nil {
		o.contract(c)
	}
	e.c = e.reg.CreateContract(t, c)
	var err error
	if e.client, err = contract.NewClient(e.front.URL()); err != nil {
		t.Fatal(err)
	}
	return e
}

// put stores data in MinIO under the contract's prefix (zstd-compressed
// when zst) and appends its attestation.
func (e *env) put(name string, data []byte, zst bool) contract.ObjectClaim {
	e.t.Helper()
	obj := registrytest.Object(name, data)
	stored := data
	if zst {
		enc, _ := zstd.NewWriter(nil)
		stored = enc.EncodeAll(data, nil)
		sum := sha256.Sum256(stored)
		obj.Encoding, obj.StoredSHA256, obj.StoredSize = contract.EncodingZstd, hex.EncodeToString(sum[:]), int64(len(stored))
	}
	e.putRaw(name, stored)
	e.alice.Attest(e.t, e.c.ContractID, obj)
	return obj
}

// putRaw writes bytes to the bucket without attesting them.
func (e *env) putRaw(name string, stored []byte) {
	e.t.Helper()
	if _, err := e.s3.PutObject(context.Background(), e.bucket, e.c.Origin.Key(name), bytes.NewReader(stored), int64(len(stored)), minio.PutObjectOptions{}); err != nil {
		e.t.Fatalf("put %s: %v", name, err)
	}
}

// sidecar starts a sidecar on the contract in self-hosted mode (its own
// MinIO credentials) unless marketplace is asked for, and waits until it
// is ready.
func (e *env) sidecar(mutate func(*sidecar.Config)) *sidecar.Sidecar {
	e.t.Helper()
	sc := e.sidecarNoWait(mutate)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sc.WaitReady(ctx); err != nil {
		e.t.Fatal(err)
	}
	return sc
}

// sidecarSlice is the quota lease every test sidecar asks for unless the
// test sets its own, as an operator running several sidecars of one
// licensee does: a sidecar that asks for nothing leases all its licensee
// has left, and the licensee's next sidecar would get no token. A contract
// with a smaller limit grants what it has.
const sidecarSlice = 100_000

// sidecarNoWait starts a sidecar without waiting for readiness.
func (e *env) sidecarNoWait(mutate func(*sidecar.Config)) *sidecar.Sidecar {
	e.t.Helper()
	dir := e.t.TempDir()
	cfg := sidecar.Config{
		Registry: e.front.URL(), Contracts: []string{e.c.ContractID}, Purpose: "training",
		StateDir: filepath.Join(dir, "state"), CacheDir: filepath.Join(dir, "cache"), CacheSize: 1 << 30,
		Listen: "127.0.0.1:0", ProxyListen: "127.0.0.1:0", TrustOnFirstUse: true,
		S3Endpoint: e.minio.URL(), S3Region: testenv.MinIORegion,
		PollInterval: 100 * time.Millisecond, SyncInterval: 100 * time.Millisecond,
		Quota: contract.Quota{MaxSamples: sidecarSlice},
	}
	e.t.Setenv("AWS_ACCESS_KEY_ID", testenv.MinIOAccessKey)
	e.t.Setenv("AWS_SECRET_ACCESS_KEY", testenv.MinIOSecretKey)
	if mutate != nil {
		mutate(&cfg)
	}
	e.enrol(&cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sc, err := sidecar.Start(ctx, cfg)
	if err != nil {
		e.t.Fatalf("start sidecar: %v", err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sc.Shutdown(ctx)
	})
	return sc
}

// enrol gives a sidecar without enrolments the default licensee's
// enrolment of its key (the one in its state dir, made if missing) for
// each of its contracts, as an operator does with provgate enroll.
func (e *env) enrol(cfg *sidecar.Config) {
	e.t.Helper()
	if cfg.Key == nil {
		if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
			e.t.Fatal(err)
		}
		k, err := sidecar.LoadOrCreateKey(filepath.Join(cfg.StateDir, sidecar.KeyFile))
		if err != nil {
			e.t.Fatal(err)
		}
		cfg.Key = k
	}
	if cfg.Enrolments != nil || cfg.EnrolmentFiles != nil {
		return
	}
	for _, id := range cfg.Contracts {
		cfg.Enrolments = append(cfg.Enrolments, e.reg.Enrol(e.t, id, cfg.Key))
	}
}

// enrolmentFile writes the default licensee's enrolment of the sidecar key
// in stateDir (made if missing) under the contract, for --enrolment.
func (e *env) enrolmentFile(stateDir string) string {
	e.t.Helper()
	cfg := sidecar.Config{StateDir: stateDir, Contracts: []string{e.c.ContractID}}
	e.enrol(&cfg)
	path := filepath.Join(filepath.Dir(stateDir), "enrolment.jws")
	if err := os.WriteFile(path, []byte(cfg.Enrolments[0]+"\n"), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// front is a reverse proxy in front of the registry that a test can take
// down (connections are dropped) or point at another registry (a fork).
type front struct {
	srv    *http.Server
	ln     net.Listener
	target atomic.Pointer[url.URL]
	down   atomic.Bool
	// lie, when set, rewrites the registry's answers to metering batches.
	lie atomic.Pointer[func(*contract.MeteringResponse)]
}

// quietProxyError answers 502 for a proxy's failed upstream call, and
// nothing, unlogged, when the client let go first (a killed sidecar's
// live feed): a log line there would break benchmark output lines.
func quietProxyError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() == nil {
		w.WriteHeader(http.StatusBadGateway)
	}
}

func newFront(t testing.TB) *front {
	t.Helper()
	f := &front{}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(f.target.Load())
		},
		FlushInterval: -1,
		ErrorHandler:  quietProxyError,
		ModifyResponse: func(r *http.Response) error {
			lie := f.lie.Load()
			if lie == nil || r.Request.Method != http.MethodPost || !strings.HasSuffix(r.Request.URL.Path, "/metering") || r.StatusCode != http.StatusOK {
				return nil
			}
			var resp contract.MeteringResponse
			err := json.NewDecoder(r.Body).Decode(&resp)
			r.Body.Close()
			if err != nil {
				return err
			}
			(*lie)(&resp)
			b, _ := json.Marshal(resp)
			r.Body = io.NopCloser(bytes.NewReader(b))
			r.ContentLength = int64(len(b))
			r.Header.Set("Content-Length", strconv.Itoa(len(b)))
			return nil
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	f.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.down.Load() {
			panic(http.ErrAbortHandler) // the connection drops, as with a dead registry
		}
		rp.ServeHTTP(w, r)
	})}
	go f.srv.Serve(ln)
	t.Cleanup(func() { f.srv.Close() })
	return f
}

func (f *front) URL() string { return "http://" + f.ln.Addr().String() }

func (f *front) point(target string) {
	u, err := url.Parse(target)
	if err != nil {
		panic(err)
	}
	f.target.Store(u)
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// get fetches an object through the data endpoint.
func get(t testing.TB, hc *http.Client, base, id, name string, epoch int64, job string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/contracts/"+id+"/objects/"+name, nil)
	req.Header.Set("X-Provgate-Epoch", fmt.Sprint(epoch))
	req.Header.Set("X-Provgate-Job", job)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read: %v", name, err)
	}
	return resp.StatusCode, b
}

func errorCode(b []byte) string {
	var eb contract.ErrorBody
	json.Unmarshal(b, &eb)
	return eb.Error.Code
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// drain syncs the sidecar's outbox until the registry has everything.
func drain(t testing.TB, sc *sidecar.Sidecar, id string) {
	t.Helper()
	waitFor(t, "the metering outbox to drain", 30*time.Second, func() bool {
		sc.SyncNow(context.Background())
		return sc.Ledger().OutboxDepth(id) == 0
	})
}

// startDelayProxy serves a reverse proxy to target (host:port) that holds
// every request for delay before forwarding it, as a distant origin's
// round trip would; it returns its host:port. The Host header goes
// through unchanged, so that S3 signatures made for the proxy's address
// (presigned URLs, SigV4) verify at MinIO.
func startDelayProxy(t testing.TB, target string, delay time.Duration, load *inflight) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme, r.Out.URL.Host = "http", target
			r.Out.Host = r.In.Host
		},
		Transport:    &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true},
		ErrorHandler: quietProxyError,
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		load.enter()
		defer load.leave()
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}
