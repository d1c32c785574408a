package cache_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
)

const testContract = "did:example:cache-test"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		os.Exit(runChild(dir))
	}
	testenv.Main(m)
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// encode returns data in the given encoding.
func encode(tb testing.TB, data []byte, enc string) []byte {
	tb.Helper()
	var buf bytes.Buffer
	switch enc {
	case contract.EncodingIdentity:
		return data
	case contract.EncodingGzip:
		w := gzip.NewWriter(&buf)
		w.Write(data)
		if err := w.Close(); err != nil {
			tb.Fatal(err)
		}
	case contract.EncodingZstd:
		w, err := zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1))
		if err != nil {
			tb.Fatal(err)
		}
		w.Write(data)
		if err := w.Close(); err != nil {
			tb.Fatal(err)
		}
	default:
		tb.Fatalf("encoding %q", enc)
	}
	return buf.Bytes()
}

// textish makes n bytes of compressible, text-like data.
func textish(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	words := make([][]byte, 512)
	for i := range words {
		w := make([]byte, 3+r.IntN(9))
		for j := range w {
			w[j] = byte('a' + r.IntN(26))
		}
		words[i] = w
	}
	out := make([]byte, 0, n+16)
	for len(out) < n {
		out = append(out, words[r.IntN(len(words))]...)
		out = append(out, ' ')
	}
	return out[:n]
}

// putObject stores data at the origin in the encoding and returns its claim.
func putObject(tb testing.TB, mc *minio.Client, bucket, name string, data []byte, enc string) contract.ObjectClaim {
	tb.Helper()
	stored := encode(tb, data, enc)
	putRaw(tb, mc, bucket, name, stored)
	return contract.ObjectClaim{
		Name: name, Encoding: enc,
		StoredSHA256: sha(stored), StoredSize: int64(len(stored)),
		DecodedSHA256: sha(data), DecodedSize: int64(len(data)),
	}
}

func putRaw(tb testing.TB, mc *minio.Client, bucket, name string, stored []byte) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := mc.PutObject(ctx, bucket, name, bytes.NewReader(stored), int64(len(stored)), minio.PutObjectOptions{}); err != nil {
		tb.Fatalf("put %s: %v", name, err)
	}
}

// countingOrigin counts the origin requests (Open calls) per name.
type countingOrigin struct {
	cache.Origin
	opens atomic.Int64
}

func (o *countingOrigin) Open(ctx context.Context, name string, off int64) (io.ReadCloser, error) {
	o.opens.Add(1)
	return o.Origin.Open(ctx, name, off)
}

func s3Origin(tb testing.TB, endpoint, bucket string) *cache.S3Origin {
	tb.Helper()
	o, err := cache.NewS3Origin(cache.S3Config{
		Endpoint: "http://" + endpoint, Region: testenv.MinIORegion, Bucket: bucket, Lookup: "path",
		AccessKey: testenv.MinIOAccessKey, SecretKey: testenv.MinIOSecretKey,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return o
}

// env is a bucket, a cache on it and a counting origin.
type env struct {
	srv    *testenv.MinIOServer
	mc     *minio.Client
	bucket string
	dir    string
	origin *countingOrigin
	c      *cache.Cache
}

func newEnv(tb testing.TB, cfg cache.Config) *env {
	tb.Helper()
	srv := testenv.MinIO(tb)
	e := &env{srv: srv, mc: srv.Client(tb), bucket: srv.Bucket(tb), dir: tb.TempDir()}
	e.origin = &countingOrigin{Origin: s3Origin(tb, srv.Endpoint, e.bucket)}
	if cfg.Dir == "" {
		cfg.Dir = e.dir
	}
	e.dir = cfg.Dir
	cfg.Retry.BaseDelay = 5 * time.Millisecond
	e.c = mustOpen(tb, cfg)
	if err := e.c.Mount(testContract, e.origin, 0); err != nil {
		tb.Fatal(err)
	}
	return e
}

func mustOpen(tb testing.TB, cfg cache.Config) *cache.Cache {
	tb.Helper()
	c, err := cache.Open(cfg)
	if err != nil {
		tb.Fatalf("open cache: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// mustGet gets obj and checks the bytes against want.
func mustGet(tb testing.TB, c *cache.Cache, obj *contract.ObjectClaim, want []byte) *cache.Handle {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h, err := c.Get(ctx, testContract, obj)
	if err != nil {
		tb.Fatalf("get %s: %v", obj.Name, err)
	}
	got, err := io.ReadAll(io.NewSectionReader(h.File(), 0, h.Size))
	if err != nil {
		tb.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		tb.Fatalf("get %s: %d bytes, sha256 %s; want %d bytes, sha256 %s", obj.Name, len(got), sha(got), len(want), sha(want))
	}
	if h.Size != int64(len(want)) || h.SHA256 != sha(want) {
		tb.Fatalf("handle: size %d sha %s; want %d %s", h.Size, h.SHA256, len(want), sha(want))
	}
	return h
}

// diskFiles lists the regular files under dir/sub.
func diskFiles(tb testing.TB, dir, sub string) []string {
	tb.Helper()
	var out []string
	filepath.WalkDir(filepath.Join(dir, sub), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// diskBytes sums the sizes of the files under dir/sub.
func diskBytes(dir, sub string) int64 {
	var n int64
	filepath.WalkDir(filepath.Join(dir, sub), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// epochHitRatio reads objs for the given number of epochs, in order or
// shuffled per epoch ("sequential" or "shuffled"), and returns the hit
// ratio of every epoch after the first.
func epochHitRatio(tb testing.TB, c *cache.Cache, objs []contract.ObjectClaim, epochs int, order string, r *rand.Rand) float64 {
	tb.Helper()
	hits, reads := 0, 0
	for ep := range epochs {
		idx := r.Perm(len(objs))
		if order == "sequential" {
			for i := range idx {
				idx[i] = i
			}
		}
		for _, i := range idx {
			h, err := c.Get(context.Background(), testContract, &objs[i])
			if err != nil {
				tb.Fatal(err)
			}
			if ep > 0 {
				reads++
				if h.Hit {
					hits++
				}
			}
			h.Close()
		}
	}
	return float64(hits) / float64(reads)
}
