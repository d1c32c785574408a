package cache_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
)

func TestPurgeKeepsOpenReadersAndRemovesFile(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
	data := textish(400, 300<<10)
	obj := putObject(t, e.mc, e.bucket, "redacted.txt", data, contract.EncodingGzip)
	h := mustGet(t, e.c, &obj, data)
	if err := e.c.Purge(testContract, obj.Name); err != nil {
		t.Fatal(err)
	}
	if s := e.c.Stats(); s.Entries != 0 || s.Purged != 1 {
		t.Errorf("after purge: %d entries, %d purged; want 0 and 1", s.Entries, s.Purged)
	}
	if got := mustRead(t, h); sha(got) != obj.DecodedSHA256 {
		t.Error("open reader lost its bytes after a purge")
	}
	if n := len(diskFiles(t, e.dir, "objects")); n != 1 {
		t.Errorf("%d files while a reader holds the purged entry, want 1", n)
	}
	h.Close()
	if n := len(diskFiles(t, e.dir, "objects")); n != 0 || e.c.Stats().Bytes != 0 {
		t.Errorf("%d files, %d bytes after the last reader closed, want 0", n, e.c.Stats().Bytes)
	}
	h = mustGet(t, e.c, &obj, data)
	if h.Hit {
		t.Error("purged object was a hit")
	}
	h.Close()
	if n, err := e.c.PurgeContract(testContract); err != nil || n != 1 {
		t.Errorf("PurgeContract = %d, %v; want 1", n, err)
	}
}

// gateOrigin blocks Open until released.
type gateOrigin struct {
	cache.Origin
	opened  chan struct{}
	release chan struct{}
	once    atomic.Bool
}

func (g *gateOrigin) Open(ctx context.Context, name string, off int64) (io.ReadCloser, error) {
	if g.once.CompareAndSwap(false, true) {
		close(g.opened)
	}
	<-g.release
	return g.Origin.Open(ctx, name, off)
}

func TestPurgeDuringFetchIsNotCommitted(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
	data := textish(401, 100<<10)
	obj := putObject(t, e.mc, e.bucket, "late.txt", data, contract.EncodingZstd)
	g := &gateOrigin{Origin: e.origin, opened: make(chan struct{}), release: make(chan struct{})}
	e.c.Mount(testContract, g, 0)
	errc := make(chan error)
	go func() {
		h, err := e.c.Get(context.Background(), testContract, &obj)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	<-g.opened
	e.c.Purge(testContract, obj.Name)
	close(g.release)
	if err := <-errc; !errors.Is(err, cache.ErrPurged) {
		t.Errorf("err = %v, want ErrPurged", err)
	}
	if s := e.c.Stats(); s.Entries != 0 || s.Bytes != 0 || s.Reserved != 0 {
		t.Errorf("%d entries %d bytes %d reserved after a purged fetch, want 0", s.Entries, s.Bytes, s.Reserved)
	}
}

func TestStreamWhileFetching(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
	data := textish(402, 2<<20)
	good := putObject(t, e.mc, e.bucket, "stream-good", data, contract.EncodingZstd)
	r, err := e.c.Stream(context.Background(), testContract, &good)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || sha(got) != good.DecodedSHA256 {
		t.Fatalf("stream: %d bytes, err %v; want the object", len(got), err)
	}
	h := mustGet(t, e.c, &good, data)
	if !h.Hit {
		t.Error("streamed object was not committed")
	}
	h.Close()

	// Same size, last byte changed: every byte streams, then the end is an
	// error, never a clean EOF.
	bad := putObject(t, e.mc, e.bucket, "stream-bad", data, contract.EncodingIdentity)
	tampered := append([]byte(nil), data...)
	tampered[len(tampered)-1] ^= 1
	putRaw(t, e.mc, e.bucket, "stream-bad", tampered)
	r, err = e.c.Stream(context.Background(), testContract, &bad)
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(r)
	r.Close()
	if err == nil || !cache.IsVerification(err) {
		t.Fatalf("stream of tampered bytes ended with err %v after %d bytes, want a verification error", err, len(got))
	}
	if s := e.c.Stats(); s.Entries != 1 {
		t.Errorf("%d entries, want only the good one", s.Entries)
	}
}

func TestRetentionRemovesOldEntries(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20, Now: clock})
	e.c.Mount(testContract, e.origin, 24*time.Hour)
	data := textish(403, 10<<10)
	obj := putObject(t, e.mc, e.bucket, "old.txt", data, contract.EncodingIdentity)
	mustGet(t, e.c, &obj, data).Close()

	now.Add(int64(23 * time.Hour))
	e.c.Sweep()
	if e.c.Stats().Entries != 1 {
		t.Fatal("entry removed before its retention ran out")
	}
	now.Add(int64(2 * time.Hour))
	e.c.Sweep()
	if s := e.c.Stats(); s.Entries != 0 || s.Expired != 1 || len(diskFiles(t, e.dir, "objects")) != 0 {
		t.Errorf("after retention: %d entries, %d expired, files %v; want 0, 1, none", s.Entries, s.Expired, diskFiles(t, e.dir, "objects"))
	}

	// Retention also holds across a restart.
	mustGet(t, e.c, &obj, data).Close()
	e.c.Close()
	now.Add(int64(25 * time.Hour))
	c2 := mustOpen(t, cache.Config{Dir: e.dir, MaxBytes: 64 << 20, Now: clock})
	if s := c2.Stats(); s.Entries != 0 || len(diskFiles(t, e.dir, "objects")) != 0 {
		t.Errorf("expired entry survived a restart: %d entries", s.Entries)
	}
}

func TestScrubAndVerifyOnHit(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20, VerifyOnHit: true})
	var objs []contract.ObjectClaim
	var datas [][]byte
	for i := range 3 {
		data := textish(uint64(410+i), 64<<10)
		objs = append(objs, putObject(t, e.mc, e.bucket, "s/"+string(rune('a'+i)), data, contract.EncodingZstd))
		datas = append(datas, data)
		mustGet(t, e.c, &objs[i], datas[i]).Close()
	}
	flip := func(path string) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		f.ReadAt(b, 1000)
		b[0] ^= 0x20
		f.WriteAt(b, 1000)
		f.Close()
	}
	// Bit-rot under a hit: the CRC check notices and the object is fetched again.
	files := diskFiles(t, e.dir, "objects")
	for _, p := range files {
		flip(p)
	}
	before := e.origin.opens.Load()
	for i := range 3 {
		mustGet(t, e.c, &objs[i], datas[i]).Close()
	}
	if got := e.origin.opens.Load() - before; got != 3 {
		t.Errorf("refetches after bit-rot = %d, want 3", got)
	}
	if got := e.c.Stats().Failures[cache.FailScrub]; got != 3 {
		t.Errorf("failures[scrub] = %d, want 3", got)
	}

	// Scrub re-hashes everything and removes what fails.
	files = diskFiles(t, e.dir, "objects")
	flip(files[0])
	res, err := e.c.Scrub(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Checked != 3 || len(res.Removed) != 1 {
		t.Errorf("scrub checked %d, removed %v; want 3 and 1", res.Checked, res.Removed)
	}
	if s := e.c.Stats(); s.Entries != 2 {
		t.Errorf("%d entries after scrub, want 2", s.Entries)
	}
	if _, err := os.Stat(files[0]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("damaged file still on disk: %v", err)
	}
}

func TestS3CredentialsFromEnvAndSharedFile(t *testing.T) {
	srv := testenv.MinIO(t)
	mc := srv.Client(t)
	bucket := srv.Bucket(t)
	data := textish(420, 10<<10)
	obj := putObject(t, mc, bucket, "cred.txt", data, contract.EncodingIdentity)
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(home, "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(home, "none"))
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} {
		t.Setenv(k, "")
	}
	read := func(cfg cache.S3Config) error {
		cfg.Endpoint, cfg.Bucket, cfg.Region, cfg.Lookup = srv.URL(), bucket, testenv.MinIORegion, "path"
		o, err := cache.NewS3Origin(cfg)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rc, err := o.Open(ctx, obj.Name, 0)
		if err != nil {
			return err
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err == nil && sha(b) != obj.StoredSHA256 {
			err = errors.New("wrong bytes")
		}
		return err
	}

	t.Run("env", func(t *testing.T) {
		t.Setenv("AWS_ACCESS_KEY_ID", testenv.MinIOAccessKey)
		t.Setenv("AWS_SECRET_ACCESS_KEY", testenv.MinIOSecretKey)
		if err := read(cache.S3Config{}); err != nil {
			t.Error(err)
		}
	})
	t.Run("shared file profile", func(t *testing.T) {
		path := filepath.Join(home, "credentials")
		os.WriteFile(path, []byte("[default]\naws_access_key_id = nope\naws_secret_access_key = nope\n\n[ci]\naws_access_key_id = "+
			testenv.MinIOAccessKey+"\naws_secret_access_key = "+testenv.MinIOSecretKey+"\n"), 0o600)
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", path)
		t.Setenv("AWS_PROFILE", "ci")
		if err := read(cache.S3Config{}); err != nil {
			t.Error(err)
		}
	})
	t.Run("wrong keys refused", func(t *testing.T) {
		err := read(cache.S3Config{AccessKey: "nope", SecretKey: "nope-nope"})
		var oe *cache.OriginError
		if !errors.As(err, &oe) || oe.Status != 403 || !errors.Is(err, cache.ErrOrigin) {
			t.Errorf("err = %v, want a 403 OriginError", err)
		}
	})
}

func TestCloseKeepsOpenHandlesReadable(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 64 << 20})
	data := textish(430, 64<<10)
	obj := putObject(t, e.mc, e.bucket, "open-at-close", data, contract.EncodingZstd)
	h := mustGet(t, e.c, &obj, data)
	if err := e.c.Close(); err != nil {
		t.Fatal(err)
	}
	if sha(mustRead(t, h)) != obj.DecodedSHA256 {
		t.Error("handle lost its bytes at Close")
	}
	if err := h.Close(); err != nil {
		t.Errorf("handle Close after cache Close: %v", err)
	}
	if _, err := e.c.Get(context.Background(), testContract, &obj); !errors.Is(err, cache.ErrClosed) {
		t.Errorf("Get after Close: err = %v, want ErrClosed", err)
	}
	c2 := mustOpen(t, cache.Config{Dir: e.dir, MaxBytes: 64 << 20})
	if s := c2.Stats(); s.Entries != 1 {
		t.Errorf("%d entries after reopening, want 1", s.Entries)
	}
}
