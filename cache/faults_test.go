package cache_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
)

// resetProxy is a loopback TCP proxy in front of MinIO that resets the
// first few connections (RST, via SO_LINGER 0) after passing some bytes of
// the response.
type resetProxy struct {
	ln         net.Listener
	target     string
	resetAfter int64
	stall      atomic.Bool // stop sending instead of resetting
	toReset    atomic.Int64
	resets     atomic.Int64
}

func startResetProxy(t *testing.T, target string, resetAfter int64, conns int) *resetProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &resetProxy{ln: ln, target: target, resetAfter: resetAfter}
	p.toReset.Store(int64(conns))
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.handle(c.(*net.TCPConn))
		}
	}()
	return p
}

func (p *resetProxy) handle(c *net.TCPConn) {
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	clientGone := make(chan struct{})
	go func() { io.Copy(up, c); close(clientGone) }()
	if p.toReset.Add(-1) >= 0 {
		io.CopyN(c, up, p.resetAfter)
		p.resets.Add(1)
		if p.stall.Load() {
			select {
			case <-clientGone:
			case <-time.After(30 * time.Second):
			}
			return
		}
		c.SetLinger(0)
		return
	}
	io.Copy(c, up)
}

func (p *resetProxy) Addr() string { return p.ln.Addr().String() }

func TestResetMidBodyResumesWithRange(t *testing.T) {
	for _, enc := range []string{contract.EncodingIdentity, contract.EncodingZstd} {
		t.Run(enc, func(t *testing.T) {
			e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
			data := textish(77, 3<<20)
			if enc == contract.EncodingZstd {
				data = textish(78, 8<<20) // ~2.5 MiB stored
			}
			obj := putObject(t, e.mc, e.bucket, "big.bin", data, enc)
			proxy := startResetProxy(t, e.srv.Endpoint, 256<<10, 3)
			origin := &countingOrigin{Origin: s3Origin(t, proxy.Addr(), e.bucket)}
			if err := e.c.Mount(testContract, origin, 0); err != nil {
				t.Fatal(err)
			}
			mustGet(t, e.c, &obj, data).Close()
			if got := proxy.resets.Load(); got != 3 {
				t.Errorf("proxy resets = %d, want 3", got)
			}
			if got := origin.opens.Load(); got != 4 {
				t.Errorf("origin requests = %d, want 4 (1 + 3 ranged resumes)", got)
			}
			if s := e.c.Stats(); s.Resumes != 3 || s.Entries != 1 {
				t.Errorf("resumes %d entries %d, want 3 and 1", s.Resumes, s.Entries)
			}
		})
	}
}

func TestStalledBodyResumes(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20, Retry: cache.RetryPolicy{IdleTimeout: 300 * time.Millisecond}})
	data := textish(80, 2<<20)
	obj := putObject(t, e.mc, e.bucket, "stall.bin", data, contract.EncodingIdentity)
	proxy := startResetProxy(t, e.srv.Endpoint, 300<<10, 2)
	proxy.stall.Store(true)
	if err := e.c.Mount(testContract, s3Origin(t, proxy.Addr(), e.bucket), 0); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	mustGet(t, e.c, &obj, data).Close()
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %v", took)
	}
	if s := e.c.Stats(); proxy.resets.Load() != 2 || s.Resumes != 2 {
		t.Errorf("stalls %d, resumes %d; want 2 and 2", proxy.resets.Load(), s.Resumes)
	}
}

func TestResetEveryTimeGivesUp(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20, Retry: cache.RetryPolicy{MaxAttempts: 3}})
	data := textish(79, 1<<20)
	obj := putObject(t, e.mc, e.bucket, "never.bin", data, contract.EncodingIdentity)
	proxy := startResetProxy(t, e.srv.Endpoint, 1000, 1000) // dies in the headers every time
	if err := e.c.Mount(testContract, s3Origin(t, proxy.Addr(), e.bucket), 0); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.Get(context.Background(), testContract, &obj)
	if !errors.Is(err, cache.ErrOrigin) {
		t.Fatalf("err = %v, want ErrOrigin", err)
	}
	if s := e.c.Stats(); s.Entries != 0 || s.Failures[cache.FailOrigin] != 1 {
		t.Errorf("entries %d origin failures %d, want 0 and 1", s.Entries, s.Failures[cache.FailOrigin])
	}
}

// minioPresigner presigns with minio-go directly, standing in for the
// registry's presign endpoint; it counts calls and names.
type minioPresigner struct {
	mc      *minio.Client
	bucket  string
	ttl     time.Duration
	delay   time.Duration // per call, like a registry round trip
	calls   atomic.Int64
	names   atomic.Int64
	corrupt atomic.Int64 // URLs to spoil (bad signature) before good ones
}

func (p *minioPresigner) Presign(ctx context.Context, names []string) ([]contract.PresignedURL, error) {
	p.calls.Add(1)
	p.names.Add(int64(len(names)))
	time.Sleep(p.delay)
	out := make([]contract.PresignedURL, len(names))
	for i, n := range names {
		u, err := p.mc.PresignedGetObject(ctx, p.bucket, n, p.ttl, nil)
		if err != nil {
			return nil, err
		}
		if p.corrupt.Add(-1) >= 0 {
			q := u.Query()
			q.Set("X-Amz-Signature", "00"+q.Get("X-Amz-Signature")[2:])
			u.RawQuery = q.Encode()
		}
		out[i] = contract.PresignedURL{Name: n, URL: u.String(), ExpiresAt: time.Now().Add(p.ttl)}
	}
	return out, nil
}

func TestPresignedOrigin(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
	p := &minioPresigner{mc: e.mc, bucket: e.bucket, ttl: time.Hour}
	origin := cache.NewPresignedOrigin(p, nil)
	if err := e.c.Mount(testContract, origin, 0); err != nil {
		t.Fatal(err)
	}
	var objs []contract.ObjectClaim
	var datas [][]byte
	for i := range 5 {
		data := textish(uint64(200+i), 100<<10)
		datas = append(datas, data)
		objs = append(objs, putObject(t, e.mc, e.bucket, "p/"+string(rune('a'+i)), data, contract.EncodingGzip))
	}
	if err := e.c.Prefetch(context.Background(), testContract, objs[:4], 2, nil); err != nil {
		t.Fatal(err)
	}
	if c, n := p.calls.Load(), p.names.Load(); c != 1 || n != 4 {
		t.Errorf("prefetch presigned in %d calls for %d names, want 1 batch of 4", c, n)
	}
	for i := range 4 {
		h := mustGet(t, e.c, &objs[i], datas[i])
		if !h.Hit {
			t.Errorf("%s not cached by prefetch", objs[i].Name)
		}
		h.Close()
	}

	// A URL the origin refuses (403) is presigned again, once.
	p.corrupt.Store(1)
	mustGet(t, e.c, &objs[4], datas[4]).Close()
	if c := p.calls.Load(); c != 3 {
		t.Errorf("presign calls = %d, want 3 (batch, refused URL, fresh URL)", c)
	}

	// URLs about to expire are refreshed before use.
	short := &minioPresigner{mc: e.mc, bucket: e.bucket, ttl: 10 * time.Second}
	o2 := cache.NewPresignedOrigin(short, nil)
	o2.Margin = 15 * time.Second
	for range 2 {
		rc, err := o2.Open(context.Background(), objs[0].Name, 10)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if want := encode(t, datas[0], contract.EncodingGzip); len(got) != len(want)-10 {
			t.Errorf("ranged GET from 10: %d bytes, want %d", len(got), len(want)-10)
		}
	}
	if c := short.calls.Load(); c != 2 {
		t.Errorf("presign calls with URLs inside the margin = %d, want 2", c)
	}
}

func TestPresignBatchesConcurrentMisses(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20, MaxFetches: 16})
	p := &minioPresigner{mc: e.mc, bucket: e.bucket, ttl: time.Hour, delay: 100 * time.Millisecond}
	if err := e.c.Mount(testContract, cache.NewPresignedOrigin(p, nil), 0); err != nil {
		t.Fatal(err)
	}
	const n = 16
	objs := make([]contract.ObjectClaim, n)
	datas := make([][]byte, n)
	for i := range objs {
		datas[i] = textish(uint64(600+i), 8<<10)
		objs[i] = putObject(t, e.mc, e.bucket, fmt.Sprintf("batch/%02d", i), datas[i], contract.EncodingIdentity)
	}
	var wg sync.WaitGroup
	for i := range objs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mustGet(t, e.c, &objs[i], datas[i]).Close()
		}()
	}
	wg.Wait()
	if c, names := p.calls.Load(), p.names.Load(); c > 3 || names != n {
		t.Errorf("%d concurrent misses took %d presign calls for %d names; want at most 3 calls, %d names", n, c, names, n)
	}
}

// flakyFront is a loopback HTTP server in front of MinIO that answers the
// first requests with the given statuses, then proxies.
func flakyFront(t *testing.T, target string, statuses ...int) (*url.URL, *atomic.Int64) {
	t.Helper()
	tu, _ := url.Parse("http://" + target)
	rp := httputil.NewSingleHostReverseProxy(tu)
	var n atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1) - 1
		if int(i) < len(statuses) {
			if statuses[i] == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", "0")
			}
			http.Error(w, "flaky", statuses[i])
			return
		}
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &url.URL{Scheme: "http", Host: ln.Addr().String()}, &n
}

func TestPresignedRetries429And5xxNot404(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20, Retry: cache.RetryPolicy{BaseDelay: time.Millisecond, ThrottleDelay: 400 * time.Millisecond}})
	data := textish(300, 64<<10)
	obj := putObject(t, e.mc, e.bucket, "flaky.bin", data, contract.EncodingZstd)
	front, requests := flakyFront(t, e.srv.Endpoint, http.StatusServiceUnavailable, http.StatusTooManyRequests, http.StatusBadGateway)
	fmc, err := minio.New(front.Host, &minio.Options{
		Creds: credentials.NewStaticV4(testenv.MinIOAccessKey, testenv.MinIOSecretKey, ""), Region: testenv.MinIORegion})
	if err != nil {
		t.Fatal(err)
	}
	origin := &countingOrigin{Origin: cache.NewPresignedOrigin(&minioPresigner{mc: fmc, bucket: e.bucket, ttl: time.Hour}, nil)}
	if err := e.c.Mount(testContract, origin, 0); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	mustGet(t, e.c, &obj, data).Close()
	took := time.Since(start)
	if got := origin.opens.Load(); got != 4 {
		t.Errorf("origin requests = %d, want 4 (503, 429, 502, 200)", got)
	}
	if took < 200*time.Millisecond {
		t.Errorf("took %v: the 429 did not wait the throttle delay (>= 200ms with jitter)", took)
	}
	if s := e.c.Stats(); s.Resumes != 3 {
		t.Errorf("retries = %d, want 3", s.Resumes)
	}

	// A 404 is not retried.
	before := requests.Load()
	missing := obj
	missing.Name = "missing.bin"
	_, err = e.c.Get(context.Background(), testContract, &missing)
	if !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("err = %v, want ErrNotFound", err)
	}
	if got := requests.Load() - before; got != 1 {
		t.Errorf("requests for a missing object = %d, want 1", got)
	}
}

// A presigned origin keeps its connections to the bucket between
// fetches, as many as fetches run at once: with http.DefaultTransport's
// two idle connections per host, 16 concurrent fetches opened a new TCP
// connection for nearly every object (and, against a distant bucket, a
// handshake per object).
func TestPresignedOriginReusesConnections(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20, MaxFetches: 16})
	// A TCP forwarder in front of MinIO that counts connections; URLs are
	// presigned for its address.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", e.srv.Endpoint)
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	front, err := minio.New(ln.Addr().String(), &minio.Options{
		Creds: credentials.NewStaticV4(testenv.MinIOAccessKey, testenv.MinIOSecretKey, ""), Region: testenv.MinIORegion,
	})
	if err != nil {
		t.Fatal(err)
	}
	p := &minioPresigner{mc: front, bucket: e.bucket, ttl: time.Hour}
	if err := e.c.Mount(testContract, cache.NewPresignedOrigin(p, nil), 0); err != nil {
		t.Fatal(err)
	}
	const n, workers = 96, 16
	objs := make([]contract.ObjectClaim, n)
	datas := make([][]byte, n)
	for i := range objs {
		datas[i] = textish(uint64(700+i), 8<<10)
		objs[i] = putObject(t, e.mc, e.bucket, fmt.Sprintf("conn/%02d", i), datas[i], contract.EncodingIdentity)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < n; i = next.Add(1) - 1 {
				mustGet(t, e.c, &objs[i], datas[i]).Close()
			}
		})
	}
	wg.Wait()
	if got := conns.Load(); got > workers+workers/2 {
		t.Errorf("%d objects fetched by %d workers over %d connections; want at most %d (connections kept)", n, workers, got, workers+workers/2)
	}
}
