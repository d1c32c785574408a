package cache_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
)

// redactions stands in for the verified manifest: the names redacted so
// far.
type redactions struct {
	mu    sync.Mutex
	names map[string]bool
}

func (r *redactions) redact(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.names[name] = true
}

func (r *redactions) live(name, _ string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.names[name]
}

// TestFetchAfterPurgeWithStaleClaimIsNotCommitted is the race of a request
// that read the manifest just before a redaction was applied: the purge
// runs, then the request's lookup misses and starts a new fetch with the
// claim it still holds. That fetch must not commit the redacted bytes.
func TestFetchAfterPurgeWithStaleClaimIsNotCommitted(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
	red := &redactions{names: map[string]bool{}}
	if err := e.c.Mount(testContract, e.origin, 0, cache.WithLiveCheck(red.live)); err != nil {
		t.Fatal(err)
	}
	data := textish(700, 64<<10)
	obj := putObject(t, e.mc, e.bucket, "x.txt", data, contract.EncodingZstd)
	claim := obj // read from the manifest before the redaction
	red.redact(obj.Name)
	if err := e.c.Purge(testContract, obj.Name); err != nil {
		t.Fatal(err)
	}
	for _, get := range []func() error{
		func() error { _, err := e.c.Get(context.Background(), testContract, &claim); return err },
		func() error { _, err := e.c.Stream(context.Background(), testContract, &claim); return err },
	} {
		if err := get(); !errors.Is(err, cache.ErrPurged) {
			t.Errorf("fetch with a claim from before the redaction: %v, want ErrPurged", err)
		}
	}
	if s := e.c.Stats(); s.Entries != 0 || s.Bytes != 0 {
		t.Errorf("%d entries, %d bytes after a purge, want 0", s.Entries, s.Bytes)
	}
	if n := len(diskFiles(t, e.dir, "objects")); n != 0 {
		t.Errorf("%d files in the cache after a purge, want 0", n)
	}
}

// TestRedactionDuringFetchIsNotCommitted: a fetch that started before the
// redaction was applied, and ends before the follower's purge runs, does
// not commit: the commit itself sees the manifest.
func TestRedactionDuringFetchIsNotCommitted(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
	red := &redactions{names: map[string]bool{}}
	data := textish(701, 64<<10)
	obj := putObject(t, e.mc, e.bucket, "y.txt", data, contract.EncodingGzip)
	g := &gateOrigin{Origin: e.origin, opened: make(chan struct{}), release: make(chan struct{})}
	if err := e.c.Mount(testContract, g, 0, cache.WithLiveCheck(red.live)); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error)
	go func() {
		h, err := e.c.Get(context.Background(), testContract, &obj)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	<-g.opened
	red.redact(obj.Name) // applied; the follower's purge has not run yet
	close(g.release)
	if err := <-errc; !errors.Is(err, cache.ErrPurged) {
		t.Errorf("err = %v, want ErrPurged", err)
	}
	if s := e.c.Stats(); s.Entries != 0 || s.Bytes != 0 || s.Reserved != 0 {
		t.Errorf("%d entries %d bytes %d reserved, want 0", s.Entries, s.Bytes, s.Reserved)
	}
}

// refusingPresigner presigns like the registry, refusing the names it is
// told are redacted one by one.
type refusingPresigner struct {
	*minioPresigner
	redacted sync.Map
	gate     chan struct{} // if set, each call waits for it
}

func (p *refusingPresigner) Presign(ctx context.Context, names []string) ([]contract.PresignedURL, error) {
	if p.gate != nil {
		<-p.gate
	}
	out, err := p.minioPresigner.Presign(ctx, names)
	if err != nil {
		return nil, err
	}
	for i, n := range names {
		if _, ok := p.redacted.Load(n); ok {
			out[i] = contract.PresignedURL{Name: n, Error: &contract.ErrorDetail{Code: contract.CodeRedacted, Message: n + " was redacted"}}
		}
	}
	return out, nil
}

// TestPresignRefusalFailsOnlyThatName: concurrent misses are presigned in
// one request; the registry refuses one name (redacted) and the others
// are fetched.
func TestPresignRefusalFailsOnlyThatName(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20, MaxFetches: 16})
	p := &refusingPresigner{minioPresigner: &minioPresigner{mc: e.mc, bucket: e.bucket, ttl: time.Hour, delay: 50 * time.Millisecond}}
	p.redacted.Store("refused/03", true)
	if err := e.c.Mount(testContract, cache.NewPresignedOrigin(p, nil), 0); err != nil {
		t.Fatal(err)
	}
	const n = 8
	objs := make([]contract.ObjectClaim, n)
	datas := make([][]byte, n)
	for i := range objs {
		datas[i] = textish(uint64(720+i), 8<<10)
		objs[i] = putObject(t, e.mc, e.bucket, "refused/0"+string(rune('0'+i)), datas[i], contract.EncodingIdentity)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range objs {
		wg.Go(func() {
			h, err := e.c.Get(context.Background(), testContract, &objs[i])
			if err == nil {
				h.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		var oe *cache.OriginError
		switch {
		case i == 3 && (!errors.As(err, &oe) || oe.Status != http.StatusUnavailableForLegalReasons || contract.StatusOf(err) != http.StatusUnavailableForLegalReasons):
			t.Errorf("%s: %v, want the registry's 451", objs[i].Name, err)
		case i != 3 && err != nil:
			t.Errorf("%s: %v, want it served", objs[i].Name, err)
		}
	}
	if c := p.calls.Load(); c >= n {
		t.Errorf("%d presign calls for %d concurrent names: not grouped", c, n)
	}
}

// TestPurgeDropsPresignedURL: a purge drops the name's URL, also one that
// a presign request in flight at that moment brings back.
func TestPurgeDropsPresignedURL(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
	p := &refusingPresigner{minioPresigner: &minioPresigner{mc: e.mc, bucket: e.bucket, ttl: time.Hour}}
	origin := cache.NewPresignedOrigin(p, nil)
	if err := e.c.Mount(testContract, origin, 0); err != nil {
		t.Fatal(err)
	}
	a := putObject(t, e.mc, e.bucket, "u/a", textish(730, 4<<10), contract.EncodingIdentity)
	b := putObject(t, e.mc, e.bucket, "u/b", textish(731, 4<<10), contract.EncodingIdentity)
	if err := origin.Warm(context.Background(), []string{a.Name}); err != nil {
		t.Fatal(err)
	}
	if !origin.HasURL(a.Name) {
		t.Fatal("no URL kept after Warm")
	}
	if err := e.c.Purge(testContract, a.Name); err != nil {
		t.Fatal(err)
	}
	if origin.HasURL(a.Name) {
		t.Error("purged name's presigned URL kept")
	}
	// A presign in flight when the purge lands.
	p.gate = make(chan struct{})
	var started atomic.Bool
	done := make(chan error)
	go func() {
		started.Store(true)
		done <- origin.Warm(context.Background(), []string{b.Name})
	}()
	for !started.Load() {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	if err := e.c.Purge(testContract, b.Name); err != nil {
		t.Fatal(err)
	}
	close(p.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if origin.HasURL(b.Name) {
		t.Error("a URL presigned before the purge and returned after it was kept")
	}
}

// TestPurgeContractDuringFetchIsNotCommitted: a contract purge wins over
// every fetch of the contract in flight, and drops its presigned URLs.
func TestPurgeContractDuringFetchIsNotCommitted(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
	data := textish(740, 64<<10)
	obj := putObject(t, e.mc, e.bucket, "whole/contract.txt", data, contract.EncodingZstd)
	g := &gateOrigin{Origin: e.origin, opened: make(chan struct{}), release: make(chan struct{})}
	if err := e.c.Mount(testContract, g, 0); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error)
	go func() {
		h, err := e.c.Get(context.Background(), testContract, &obj)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	<-g.opened
	if _, err := e.c.PurgeContract(testContract); err != nil {
		t.Fatal(err)
	}
	close(g.release)
	if err := <-errc; !errors.Is(err, cache.ErrPurged) {
		t.Errorf("err = %v, want ErrPurged", err)
	}
	if s := e.c.Stats(); s.Entries != 0 || s.Bytes != 0 || len(diskFiles(t, e.dir, "objects")) != 0 {
		t.Errorf("%d entries %d bytes after a contract purge, want 0", s.Entries, s.Bytes)
	}
}

// switchOrigin fails every request once fail is set.
type switchOrigin struct {
	cache.Origin
	fail atomic.Bool
}

func (o *switchOrigin) Open(ctx context.Context, name string, off int64) (io.ReadCloser, error) {
	if o.fail.Load() {
		return nil, &cache.OriginError{Op: "get", Name: name, Status: http.StatusNotFound, Err: errors.New("gone")}
	}
	return o.Origin.Open(ctx, name, off)
}

// TestExpiredEntryGoesWhenLookedUp: an entry past its retention is removed
// when it is asked for, not left on disk until the next sweep, even when
// the fetch that replaces it fails.
func TestExpiredEntryGoesWhenLookedUp(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20, Now: clock, SweepInterval: time.Hour})
	o := &switchOrigin{Origin: e.origin}
	if err := e.c.Mount(testContract, o, time.Hour); err != nil {
		t.Fatal(err)
	}
	data := textish(741, 10<<10)
	obj := putObject(t, e.mc, e.bucket, "expiring.txt", data, contract.EncodingIdentity)
	mustGet(t, e.c, &obj, data).Close()
	now.Add(int64(2 * time.Hour))
	o.fail.Store(true)
	if _, err := e.c.Get(context.Background(), testContract, &obj); err == nil {
		t.Fatal("expired entry served as a hit")
	}
	if s := e.c.Stats(); s.Entries != 0 || s.Expired != 1 || len(diskFiles(t, e.dir, "objects")) != 0 {
		t.Errorf("after looking up an expired entry: %d entries, %d expired, files %v; want 0, 1, none",
			s.Entries, s.Expired, diskFiles(t, e.dir, "objects"))
	}
}

// TestMountDropsEntriesNoLongerLive: entries cached before a restart whose
// names the manifest no longer holds (the purge never ran: a crash right
// after the redaction was persisted) are removed when the contract is
// mounted, and stay removed after the next restart.
func TestMountDropsEntriesNoLongerLive(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
	keep := textish(750, 8<<10)
	gone := textish(751, 8<<10)
	objKeep := putObject(t, e.mc, e.bucket, "m/keep", keep, contract.EncodingIdentity)
	objGone := putObject(t, e.mc, e.bucket, "m/gone", gone, contract.EncodingIdentity)
	mustGet(t, e.c, &objKeep, keep).Close()
	mustGet(t, e.c, &objGone, gone).Close()
	if err := e.c.Close(); err != nil {
		t.Fatal(err)
	}
	red := &redactions{names: map[string]bool{objGone.Name: true}}
	for range 2 {
		c := mustOpen(t, cache.Config{Dir: e.dir, MaxBytes: 64 << 20})
		if err := c.Mount(testContract, e.origin, 0, cache.WithLiveCheck(red.live)); err != nil {
			t.Fatal(err)
		}
		if s := c.Stats(); s.Entries != 1 || s.Bytes != int64(len(keep)) || len(diskFiles(t, e.dir, "objects")) != 1 {
			t.Errorf("after mount: %d entries, %d bytes, files %v; want only the live one", s.Entries, s.Bytes, diskFiles(t, e.dir, "objects"))
		}
		h := mustGet(t, c, &objKeep, keep)
		if !h.Hit {
			t.Error("live entry lost at mount")
		}
		h.Close()
		c.Close()
	}
}
