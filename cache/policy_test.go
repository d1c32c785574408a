package cache_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
)

func TestSizeLimitHeldUnderChurn(t *testing.T) {
	const limit = 1 << 20
	e := newEnv(t, cache.Config{MaxBytes: limit, MaxFetches: 4})
	var objs []contract.ObjectClaim
	datas := map[string][]byte{}
	for i := range 40 {
		data := textish(uint64(1000+i), 16<<10+i*3<<10) // 16 to 133 KiB
		obj := putObject(t, e.mc, e.bucket, fmt.Sprintf("churn/%02d", i), data, contract.EncodingZstd)
		objs = append(objs, obj)
		datas[obj.Name] = data
	}
	stop := make(chan struct{})
	var peakDisk, peakIndex atomic.Int64
	var mon sync.WaitGroup
	mon.Add(1)
	go func() {
		defer mon.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n := diskBytesOnce(e.dir, "tmp", "objects"); n > peakDisk.Load() {
				peakDisk.Store(n)
			}
			if s := e.c.Stats(); s.Bytes+s.Reserved > peakIndex.Load() {
				peakIndex.Store(s.Bytes + s.Reserved)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range 40 {
				obj := &objs[r.IntN(len(objs))]
				h, err := e.c.Get(context.Background(), testContract, obj)
				if err != nil {
					t.Errorf("get %s: %v", obj.Name, err)
					return
				}
				if sha(mustRead(t, h)) != obj.DecodedSHA256 {
					t.Errorf("%s: wrong bytes", obj.Name)
				}
				time.Sleep(time.Duration(r.IntN(3)) * time.Millisecond) // hold the pin a little
				h.Close()
			}
		}()
	}
	wg.Wait()
	close(stop)
	mon.Wait()
	s := e.c.Stats()
	t.Logf("churn: %d fetches, %d evictions, peak disk %d, peak index %d, limit %d", s.Fetches, s.Evictions, peakDisk.Load(), peakIndex.Load(), limit)
	// The index's figure is exact (taken under the cache's lock). A walk of
	// the directories is not atomic: a file counted before its eviction
	// and one created after it can both be seen, so the disk samples get
	// one object of slack.
	if peakIndex.Load() > limit {
		t.Errorf("peak index %d bytes above the limit %d", peakIndex.Load(), limit)
	}
	if maxObj := objs[len(objs)-1].DecodedSize; peakDisk.Load() > limit+maxObj {
		t.Errorf("peak disk %d bytes above the limit %d (+%d for the non-atomic walk)", peakDisk.Load(), limit, maxObj)
	}
	if s.Evictions == 0 {
		t.Error("no evictions: the test did not churn")
	}
	if got := diskBytes(e.dir, "objects"); got != s.Bytes {
		t.Errorf("disk has %d bytes, index says %d", got, s.Bytes)
	}
}

func mustRead(tb testing.TB, h *cache.Handle) []byte {
	tb.Helper()
	b := make([]byte, h.Size)
	if _, err := h.File().ReadAt(b, 0); err != nil && h.Size > 0 {
		tb.Fatal(err)
	}
	return b
}

// TestEpochHitRatio reads a dataset twice the cache's size in epochs, in
// order and shuffled, under TinyLFU and LRU, and compares hit ratios from
// the second epoch on.
func TestEpochHitRatio(t *testing.T) {
	const n, size, epochs = 80, 8 << 10, 3
	e := newEnv(t, cache.Config{MaxBytes: 1})
	e.c.Close()
	var objs []contract.ObjectClaim
	for i := range n {
		objs = append(objs, putObject(t, e.mc, e.bucket, fmt.Sprintf("epoch/%03d", i), textish(uint64(i), size), contract.EncodingIdentity))
	}
	ratio := map[string]float64{}
	for _, order := range []string{"sequential", "shuffled"} {
		for _, pol := range []cache.Policy{cache.PolicyTinyLFU, cache.PolicyLRU} {
			c := mustOpen(t, cache.Config{Dir: t.TempDir(), MaxBytes: n / 2 * size, Policy: pol})
			if err := c.Mount(testContract, e.origin, 0); err != nil {
				t.Fatal(err)
			}
			key := order + "/" + pol.String()
			ratio[key] = epochHitRatio(t, c, objs, epochs, order, rand.New(rand.NewPCG(1, 2)))
			c.Close()
			t.Logf("%-10s %-7s hit ratio %.3f (epochs 2-%d, dataset = 2x cache)", order, pol, ratio[key], epochs)
		}
	}
	for _, order := range []string{"sequential", "shuffled"} {
		if tl, lru := ratio[order+"/tinylfu"], ratio[order+"/lru"]; tl < 0.35 || tl <= lru+0.1 {
			t.Errorf("%s: TinyLFU hit ratio %.3f, LRU %.3f; want TinyLFU >= 0.35 and well above LRU", order, tl, lru)
		}
	}
	if r := ratio["sequential/lru"]; r != 0 {
		t.Errorf("sequential LRU hit ratio %.3f, want 0 (the test would not show the point)", r)
	}
}

// diskBytesOnce sums the sizes of the files under dir/subs, walked in
// order, counting each inode once (a file renamed from tmp/ to objects/
// during the walk is not counted twice).
func diskBytesOnce(dir string, subs ...string) int64 {
	seen := map[uint64]bool{}
	var n int64
	for _, sub := range subs {
		filepath.WalkDir(filepath.Join(dir, sub), func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return nil
			}
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				if seen[st.Ino] {
					return nil
				}
				seen[st.Ino] = true
			}
			n += info.Size()
			return nil
		})
	}
	return n
}
