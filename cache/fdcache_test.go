package cache_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
)

// openCacheFiles lists this process's open files under dir/objects, and
// how many of them are deleted (purged or evicted files).
func openCacheFiles(tb testing.TB, dir string) (open, deleted int) {
	tb.Helper()
	objDir, err := filepath.EvalSymlinks(filepath.Join(dir, "objects"))
	if err != nil {
		tb.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Skipf("no /proc/self/fd: %v", err)
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err != nil || !strings.HasPrefix(target, objDir+"/") {
			continue
		}
		open++
		if strings.HasSuffix(target, " (deleted)") {
			deleted++
		}
	}
	return open, deleted
}

// settledOpenFiles is openCacheFiles once ok holds, or after 2 s. The
// cache's background syncer opens each new file once to fsync it, and on
// a loaded machine one such open may be under way when a test looks; a
// kept or leaked descriptor stays, the syncer's goes within moments.
func settledOpenFiles(tb testing.TB, dir string, ok func(open, deleted int) bool) (open, deleted int) {
	tb.Helper()
	open, deleted = openCacheFiles(tb, dir)
	for deadline := time.Now().Add(2 * time.Second); !ok(open, deleted) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		open, deleted = openCacheFiles(tb, dir)
	}
	return open, deleted
}

// readHandle reads a handle's file from its current offset, as the
// proxy's sendfile does, and compares it with want.
func readHandle(h *cache.Handle, want []byte) error {
	got, err := io.ReadAll(io.LimitReader(h, h.Size+1))
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%d bytes read (sha256 %s), want %d (sha256 %s)", len(got), sha(got), len(want), sha(want))
	}
	return nil
}

// TestFDCacheNeverServesPurgedFile races hits on an object (whose files
// the fd cache keeps open between hits) against its redaction: once Purge
// has returned, no Get succeeds, and once the handles taken before it are
// closed, no file of the object is still open.
func TestFDCacheNeverServesPurgedFile(t *testing.T) {
	noGC(t)
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20, MaxOpenFiles: 8})
	red := &redactions{names: map[string]bool{}}
	if err := e.c.Mount(testContract, e.origin, 0, cache.WithLiveCheck(red.live)); err != nil {
		t.Fatal(err)
	}
	data := textish(900, 64<<10)
	obj := putObject(t, e.mc, e.bucket, "fd/a.txt", data, contract.EncodingZstd)
	mustGet(t, e.c, &obj, data).Close()
	if open, _ := settledOpenFiles(t, e.dir, func(open, _ int) bool { return open == 1 }); open != 1 {
		t.Fatalf("%d cached files open after a closed hit, want 1 (kept for reuse)", open)
	}

	var purged atomic.Bool
	var servedAfter, hits atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				after := purged.Load()
				h, err := e.c.Get(context.Background(), testContract, &obj)
				if err != nil {
					if !errors.Is(err, cache.ErrPurged) {
						t.Errorf("get: %v", err)
					}
					continue
				}
				if after {
					servedAfter.Add(1)
				}
				hits.Add(1)
				if err := readHandle(h, data); err != nil {
					t.Errorf("hit: %v", err)
				}
				h.Close()
			}
		})
	}
	for hits.Load() < 200 {
		if t.Failed() {
			break
		}
		runtimeGosched()
	}
	red.redact(obj.Name)
	if err := e.c.Purge(testContract, obj.Name); err != nil {
		t.Fatal(err)
	}
	purged.Store(true)
	for range 200 {
		runtimeGosched()
	}
	close(stop)
	wg.Wait()
	if n := servedAfter.Load(); n != 0 {
		t.Errorf("%d gets that started after Purge returned were served", n)
	}
	if open, deleted := settledOpenFiles(t, e.dir, func(open, deleted int) bool { return open == 0 && deleted == 0 }); open != 0 || deleted != 0 {
		t.Errorf("%d cached files still open (%d deleted) after the purge and every handle closed, want 0", open, deleted)
	}
	if n := len(diskFiles(t, e.dir, "objects")); n != 0 {
		t.Errorf("%d files on disk after the purge, want 0", n)
	}
}

// TestFDCacheUnderEvictionServesRightBytes reads many objects through a
// cache that holds a few of them, from several goroutines: every hit
// (many on reused files) reads its own object's bytes from offset 0, the
// files kept open stay within MaxOpenFiles, and none is an evicted file.
func TestFDCacheUnderEvictionServesRightBytes(t *testing.T) {
	noGC(t)
	const n, size, maxOpen = 24, 32 << 10, 4
	e := newEnv(t, cache.Config{MaxBytes: 6 * size, MaxOpenFiles: maxOpen, Policy: cache.PolicyLRU})
	objs := make([]contract.ObjectClaim, n)
	datas := make([][]byte, n)
	for i := range objs {
		datas[i] = textish(uint64(1000+i), size)
		objs[i] = putObject(t, e.mc, e.bucket, fmt.Sprintf("fd/%02d.txt", i), datas[i], contract.EncodingIdentity)
	}
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for range 150 {
				// Mostly a hot few (reused files), sometimes a cold one
				// (evictions).
				i := r.IntN(3)
				if r.IntN(4) == 0 {
					i = r.IntN(n)
				}
				h, err := e.c.Get(context.Background(), testContract, &objs[i])
				if err != nil {
					t.Errorf("get %s: %v", objs[i].Name, err)
					return
				}
				if err := readHandle(h, datas[i]); err != nil {
					t.Errorf("get %s: %v", objs[i].Name, err)
				}
				h.Close()
			}
		})
	}
	wg.Wait()
	s := e.c.Stats()
	if s.Hits == 0 || s.Evictions == 0 {
		t.Fatalf("hits %d, evictions %d: the test needs both", s.Hits, s.Evictions)
	}
	open, deleted := settledOpenFiles(t, e.dir, func(open, deleted int) bool { return open <= maxOpen && deleted == 0 })
	if open > maxOpen || deleted != 0 {
		t.Errorf("%d cached files open (%d deleted) with every handle closed, want at most %d and none deleted", open, deleted, maxOpen)
	}
	if err := e.c.Close(); err != nil {
		t.Fatal(err)
	}
	if open, _ := openCacheFiles(t, e.dir); open != 0 {
		t.Errorf("%d cached files open after Close, want 0", open)
	}
}

// noGC turns the collector off for the test: an *os.File dropped without
// Close is closed by its finalizer, which would hide a leaked fd.
func noGC(t *testing.T) {
	old := debug.SetGCPercent(-1)
	t.Cleanup(func() { debug.SetGCPercent(old) })
}

func runtimeGosched() { time.Sleep(50 * time.Microsecond) }
