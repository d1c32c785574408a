package cache_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

func TestColdFetchThenWarmHit(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
	for i, enc := range []string{contract.EncodingIdentity, contract.EncodingGzip, contract.EncodingZstd} {
		t.Run(enc, func(t *testing.T) {
			data := textish(uint64(i), 300<<10+i)
			obj := putObject(t, e.mc, e.bucket, "dir/"+enc+".txt", data, enc)
			before := e.origin.opens.Load()

			h := mustGet(t, e.c, &obj, data)
			if h.Hit {
				t.Error("first get: Hit = true, want a cold fetch")
			}
			h.Close()
			h = mustGet(t, e.c, &obj, data)
			if !h.Hit {
				t.Error("second get: Hit = false, want a warm hit")
			}
			h.Close()
			if got := e.origin.opens.Load() - before; got != 1 {
				t.Errorf("origin requests = %d, want 1", got)
			}
		})
	}
	s := e.c.Stats()
	if s.Hits != 3 || s.Misses != 3 || s.Entries != 3 {
		t.Errorf("stats: hits %d misses %d entries %d, want 3 3 3", s.Hits, s.Misses, s.Entries)
	}
	if n := len(diskFiles(t, e.dir, "tmp")); n != 0 {
		t.Errorf("%d temporary files left", n)
	}
}

func TestTamperedOriginNothingCached(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
	data := textish(7, 200<<10)
	cases := []struct {
		name     string
		enc      string
		tamper   func(stored []byte) []byte
		wantKind string
	}{
		{"same size, one byte flipped", contract.EncodingIdentity, func(b []byte) []byte { b[1000] ^= 1; return b }, cache.FailStoredDigest},
		{"zstd corrupted", contract.EncodingZstd, func(b []byte) []byte { b[len(b)/2] ^= 0xff; return b }, cache.FailStoredDigest},
		{"longer", contract.EncodingGzip, func(b []byte) []byte { return append(b, 'x') }, cache.FailStoredSize},
		{"shorter", contract.EncodingZstd, func(b []byte) []byte { return b[:len(b)-10] }, cache.FailStoredSize},
		{"other object", contract.EncodingZstd, func([]byte) []byte { return encode(t, textish(8, 200<<10), contract.EncodingZstd) }, cache.FailStoredSize},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("tampered-%d", i)
			obj := putObject(t, e.mc, e.bucket, name, data, tc.enc)
			stored := encode(t, data, tc.enc)
			putRaw(t, e.mc, e.bucket, name, tc.tamper(bytes.Clone(stored))) // overwritten after attestation
			failsBefore := e.c.Stats().Failures[tc.wantKind]

			for attempt := range 2 {
				h, err := e.c.Get(context.Background(), testContract, &obj)
				if err == nil {
					h.Close()
					t.Fatalf("attempt %d: get succeeded on tampered bytes", attempt)
				}
				if !cache.IsVerification(err) {
					t.Fatalf("attempt %d: error %v is not a verification failure", attempt, err)
				}
				if got := cache.FailureKind(err); got != tc.wantKind {
					t.Errorf("kind = %s, want %s (err %v)", got, tc.wantKind, err)
				}
			}
			if tc.wantKind == cache.FailStoredDigest {
				var de *verify.DigestMismatchError
				_, err := e.c.Get(context.Background(), testContract, &obj)
				if !errors.As(err, &de) || !errors.Is(err, verify.ErrDigest) {
					t.Errorf("error %v does not carry a DigestMismatchError", err)
				}
			}
			if got := e.c.Stats().Failures[tc.wantKind] - failsBefore; got < 2 {
				t.Errorf("failures[%s] grew by %d, want >= 2", tc.wantKind, got)
			}
			if s := e.c.Stats(); s.Entries != 0 || s.Bytes != 0 || s.Reserved != 0 {
				t.Errorf("stats after failure: %d entries, %d bytes, %d reserved; want 0", s.Entries, s.Bytes, s.Reserved)
			}
			if f := append(diskFiles(t, e.dir, "objects"), diskFiles(t, e.dir, "tmp")...); len(f) != 0 {
				t.Errorf("files left on disk: %v", f)
			}
		})
	}
}

func TestZstdBombBounded(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 8 << 20})
	// 512 MiB of zeros compress to a few KiB; the claim says 1 MiB.
	var stored bytes.Buffer
	w, err := zstd.NewWriter(&stored, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for range 512 {
		w.Write(zeros)
	}
	w.Close()
	putRaw(t, e.mc, e.bucket, "bomb.zst", stored.Bytes())
	obj := contract.ObjectClaim{Name: "bomb.zst", Encoding: contract.EncodingZstd,
		StoredSHA256: sha(stored.Bytes()), StoredSize: int64(stored.Len()),
		DecodedSHA256: sha(zeros), DecodedSize: 1 << 20}

	start := time.Now()
	_, err = e.c.Get(context.Background(), testContract, &obj)
	var se *cache.SizeError
	if !errors.As(err, &se) || se.What != "decoded" || !errors.Is(err, verify.ErrSize) {
		t.Fatalf("err = %v, want a decoded SizeError", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %v: decoding did not stop at the claimed size", took)
	}
	if got := e.c.Stats().Failures[cache.FailDecodedSize]; got != 1 {
		t.Errorf("failures[decoded_size] = %d, want 1", got)
	}
	if n := diskBytes(e.dir, "objects") + diskBytes(e.dir, "tmp"); n != 0 {
		t.Errorf("%d bytes left on disk", n)
	}
	t.Logf("bomb: %d stored bytes claiming 1 MiB (real 512 MiB) refused in %v", stored.Len(), time.Since(start))
}

func TestConcurrentReadersOneOriginGet(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
	data := textish(32, 2<<20)
	obj := putObject(t, e.mc, e.bucket, "hot.bin", data, contract.EncodingZstd)
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, 32)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			h, err := e.c.Get(context.Background(), testContract, &obj)
			if err != nil {
				errs <- err
				return
			}
			defer h.Close()
			got, err := io.ReadAll(io.NewSectionReader(h.File(), 0, h.Size))
			if err != nil || !bytes.Equal(got, data) {
				errs <- fmt.Errorf("reader got %d bytes (err %v), want the object", len(got), err)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := e.origin.opens.Load(); got != 1 {
		t.Errorf("origin GETs = %d, want 1", got)
	}
	if s := e.c.Stats(); s.Fetches != 1 || s.Pinned != 0 {
		t.Errorf("fetches %d pinned %d, want 1 and 0", s.Fetches, s.Pinned)
	}
}

func TestIndexSurvivesRestart(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
	var objs []contract.ObjectClaim
	var datas [][]byte
	for i := range 6 {
		data := textish(uint64(100+i), 50<<10)
		objs = append(objs, putObject(t, e.mc, e.bucket, fmt.Sprintf("r/%d", i), data, contract.EncodingZstd))
		datas = append(datas, data)
		mustGet(t, e.c, &objs[i], data).Close()
	}
	if err := e.c.Purge(testContract, "r/5"); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Close(); err != nil {
		t.Fatal(err)
	}
	// A torn record at the end of the journal is ignored.
	f, err := os.OpenFile(e.dir+"/index.journal", os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`0badc0de {"op":"put","f":"torn`)
	f.Close()

	c2 := mustOpen(t, cache.Config{Dir: e.dir, MaxBytes: 64 << 20})
	if err := c2.Mount(testContract, e.origin, 0); err != nil {
		t.Fatal(err)
	}
	if s := c2.Stats(); s.Entries != 5 || s.Bytes != 5*50<<10 {
		t.Fatalf("after restart: %d entries, %d bytes; want 5, %d", s.Entries, s.Bytes, 5*50<<10)
	}
	before := e.origin.opens.Load()
	for i := range 5 {
		h := mustGet(t, c2, &objs[i], datas[i])
		if !h.Hit {
			t.Errorf("%s: not a hit after restart", objs[i].Name)
		}
		h.Close()
	}
	if got := e.origin.opens.Load() - before; got != 0 {
		t.Errorf("origin GETs after restart = %d, want 0", got)
	}
	h := mustGet(t, c2, &objs[5], datas[5]) // purged before the restart: fetched again
	if h.Hit {
		t.Error("purged object was a hit after restart")
	}
	h.Close()
	if _, err := cache.Open(cache.Config{Dir: e.dir}); !errors.Is(err, cache.ErrLocked) {
		t.Errorf("second Open of a directory in use: err = %v, want ErrLocked", err)
	}
}

// A fetch writes an unnamed file linked into place once verified, or, on
// a file system without unnamed files, a temporary file renamed into
// place. Either way: streamed and verified reads get the object, a fetch
// that fails verification leaves no file, and objects/ holds exactly the
// entries' files.
func TestFetchFilesEitherWay(t *testing.T) {
	for _, mode := range []string{"unnamed", "temporary"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
			if mode == "temporary" {
				cache.WithoutUnnamedFiles(e.c)
			}
			for i := range 3 {
				data := textish(uint64(40+i), 200<<10)
				obj := putObject(t, e.mc, e.bucket, fmt.Sprintf("either-%d", i), data, contract.EncodingZstd)
				if i == 0 {
					rc, err := e.c.Stream(context.Background(), testContract, &obj)
					if err != nil {
						t.Fatal(err)
					}
					got, err := io.ReadAll(rc)
					rc.Close()
					if err != nil || !bytes.Equal(got, data) {
						t.Fatalf("streamed read: %d bytes, %v; want the object", len(got), err)
					}
					continue
				}
				mustGet(t, e.c, &obj, data).Close()
			}
			bad := textish(50, 100<<10)
			obj := putObject(t, e.mc, e.bucket, "either-bad", bad, contract.EncodingIdentity)
			tampered := bytes.Clone(bad)
			tampered[10] ^= 1
			putRaw(t, e.mc, e.bucket, "either-bad", tampered)
			if h, err := e.c.Get(context.Background(), testContract, &obj); err == nil {
				h.Close()
				t.Fatal("a tampered object was served")
			}
			if mode == "unnamed" && !cache.UsesUnnamedFiles(e.c) {
				t.Errorf("the cache fell back to temporary files on %s (no O_TMPFILE?)", e.dir)
			}
			if n := len(diskFiles(t, e.dir, "tmp")); n != 0 {
				t.Errorf("%d temporary files left", n)
			}
			if n, s := len(diskFiles(t, e.dir, "objects")), e.c.Stats(); n != 3 || s.Entries != 3 {
				t.Errorf("%d files in objects/, %d entries; want 3 and 3", n, s.Entries)
			}
		})
	}
}
