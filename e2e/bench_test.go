package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
)

// Origin modes the benchmarks run the sidecar in: self-hosted (its own
// bucket credentials, --s3-endpoint) and marketplace (presigned URLs from
// the registry). PROVGATE_BENCH_MODES (comma-separated) picks a subset.
var benchModes = []string{"selfhosted", "marketplace"}

func modes() []string {
	v := os.Getenv("PROVGATE_BENCH_MODES")
	if v == "" {
		return benchModes
	}
	return strings.Split(v, ",")
}

// modeArgs are the `provgate serve` arguments of an origin mode.
func modeArgs(b *testing.B, mode string) []string {
	switch mode {
	case "selfhosted":
		return nil
	case "marketplace":
		return []string{"--s3-endpoint="} // the last one wins: no bucket credentials
	default:
		b.Fatalf("PROVGATE_BENCH_MODES: unknown mode %q (selfhosted, marketplace)", mode)
		return nil
	}
}

// benchConcurrency is the requests in flight: four loader workers with a
// prefetch of two.
const benchConcurrency = 8

// BenchmarkWarmHit compares the sidecar serving warm, verified objects
// (metering on: every GET writes a ledger event) with nginx serving the same
// decoded files with sendfile, through the same keep-alive client in the
// same run. `scripts/bench.sh` prints the ratios; the targets are in the
// names.
func BenchmarkWarmHit(b *testing.B) {
	for _, mode := range modes() {
		for _, tc := range []struct {
			name  string
			size  int
			count int
		}{
			{"1MiB_target0.95", 1 << 20, 32},
			{"64KiB_target0.8", 64 << 10, 256},
			{"4KiB_target0.6", 4 << 10, 1024},
		} {
			b.Run(mode+"/"+tc.name, func(b *testing.B) {
				e := newEnv(b, envOpt{contract: func(c *contract.Contract) { c.Usage.MaxSamples = 0 }})
				root := b.TempDir()
				names := make([]string, tc.count)
				for i := range names {
					names[i] = fmt.Sprintf("w/%04d.bin", i)
					data := randomBytes(b, tc.size)
					e.put(names[i], data, i%2 == 0)
					p := filepath.Join(root, filepath.FromSlash(names[i]))
					os.MkdirAll(filepath.Dir(p), 0o755)
					if err := os.WriteFile(p, data, 0o644); err != nil {
						b.Fatal(err)
					}
				}
				sc := e.startServe(b, serveArgs(b, mode)...)
				ng := startNginx(b, root)
				hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
				sidecarURL := func(name string) string {
					return sc.URL + "/v1/contracts/" + e.c.ContractID + "/objects/" + name
				}
				for _, n := range names { // warm the cache
					if err := fetch(hc, sidecarURL(n), tc.size); err != nil {
						b.Fatal(err)
					}
				}
				run := func(b *testing.B, url func(string) string) {
					b.SetBytes(int64(tc.size))
					b.SetParallelism(benchConcurrency / 2) // GOMAXPROCS is 2 on the reference machine
					var next atomic.Int64
					b.ResetTimer()
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if err := fetch(hc, url(names[next.Add(1)%int64(len(names))]), tc.size); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				b.Run("baseline", func(b *testing.B) { run(b, func(n string) string { return ng.URL + "/" + n }) })
				b.Run("provgate", func(b *testing.B) { run(b, sidecarURL) })
			})
		}
	}
}

// serveArgs are the arguments every benchmarked `provgate serve` gets.
func serveArgs(b *testing.B, mode string, extra ...string) []string {
	// The outbox ships in the background; here the registry shares the
	// sidecar's two cores, so it ships once a minute instead of stealing
	// them mid-measurement. Every access is still written to the ledger
	// before its last byte goes out. An unlimited contract: an unlimited
	// lease.
	args := []string{"--sync-interval", "1m", "--quota-samples", "0"}
	if d := os.Getenv("PROVGATE_BENCH_DEBUG_LISTEN"); d != "" {
		args = append(args, "--debug-listen", d) // to profile the sidecar during the run
	}
	args = append(args, modeArgs(b, mode)...)
	return append(args, extra...)
}

// BenchmarkColdRead reads an epoch of objects that are not cached, with 8
// readers: through a fresh `provgate serve` (its own process, an empty
// cache; the loader announces the epoch's order first, as the Python
// client does, so the sidecar reads ahead) against the origin client
// itself, minio-go GetObject + zstd decode, reading the same objects in
// the same order. The origin is MinIO on loopback, or the same MinIO
// behind a proxy that delays every response by 20 ms (the same proxy for
// both sides). One op is one epoch.
func BenchmarkColdRead(b *testing.B) {
	for _, mode := range modes() {
		for _, tc := range []struct {
			name  string
			size  int
			count int
			delay time.Duration
		}{
			// Epochs of 128-256 MiB (a second or more each): a first epoch
			// is long, and shorter ones measured the read-ahead's ramp-up
			// more than its pace (64 objects were done in 0.2 s).
			{"1MiB_target0.9", 1 << 20, 256, 0},
			{"64KiB_target0.9", 64 << 10, 2048, 0},
			{"1MiB_origin20ms_target1.5", 1 << 20, 256, 20 * time.Millisecond},
			{"64KiB_origin20ms_target1.5", 64 << 10, 1024, 20 * time.Millisecond},
		} {
			b.Run(mode+"/"+tc.name, func(b *testing.B) {
				e := newEnv(b, envOpt{originDelay: tc.delay, contract: func(c *contract.Contract) { c.Usage.MaxSamples = 0 }})
				names := make([]string, tc.count)
				for i := range names {
					names[i] = fmt.Sprintf("c/%04d.bin", i)
					e.put(names[i], compressible(uint64(i), tc.size), true)
				}
				rand.New(rand.NewPCG(1, 2)).Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
				peak := func(b *testing.B) {
					if e.originLoad != nil {
						b.ReportMetric(float64(e.originLoad.peak.Swap(0)), "origin-peak-inflight")
					}
				}
				b.Run("baseline", func(b *testing.B) {
					mc, err := minio.New(e.origin, &minio.Options{
						Creds: credentials.NewStaticV4(testenv.MinIOAccessKey, testenv.MinIOSecretKey, ""), Region: testenv.MinIORegion,
						Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
					})
					if err != nil {
						b.Fatal(err)
					}
					defer peak(b)
					b.SetBytes(int64(tc.size * tc.count))
					for b.Loop() {
						readEpoch(b, names, func(dec *zstd.Decoder, buf []byte, name string) error {
							obj, err := mc.GetObject(context.Background(), e.bucket, e.c.Origin.Key(name), minio.GetObjectOptions{})
							if err != nil {
								return err
							}
							defer obj.Close()
							if err := dec.Reset(obj); err != nil {
								return err
							}
							n, err := io.CopyBuffer(io.Discard, dec, buf)
							if err == nil && n != int64(tc.size) {
								err = fmt.Errorf("%s: %d bytes decoded, want %d", name, n, tc.size)
							}
							return err
						})
					}
				})
				b.Run("provgate", func(b *testing.B) {
					defer peak(b)
					hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
					order, _ := json.Marshal(map[string][]string{"names": names})
					b.SetBytes(int64(tc.size * tc.count))
					b.StopTimer()
					for range b.N {
						sc := e.startServe(b, serveArgs(b, mode)...) // an empty cache each time
						b.StartTimer()
						req, _ := http.NewRequest(http.MethodPost, sc.URL+"/v1/contracts/"+e.c.ContractID+"/epochs/1/order", bytes.NewReader(order))
						req.Header.Set("X-Provgate-Job", "bench")
						resp, err := hc.Do(req)
						if err != nil {
							b.Fatal(err)
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != http.StatusOK {
							b.Fatalf("announcing the order: %d", resp.StatusCode)
						}
						readEpoch(b, names, func(_ *zstd.Decoder, _ []byte, name string) error {
							return fetch(hc, sc.URL+"/v1/contracts/"+e.c.ContractID+"/objects/"+name, tc.size)
						})
						b.StopTimer()
						sc.kill()
						hc.CloseIdleConnections()
					}
				})
			})
		}
	}
}

// readEpoch reads names in order with benchConcurrency readers, each with
// its own zstd decoder and buffer.
func readEpoch(b *testing.B, names []string, read func(dec *zstd.Decoder, buf []byte, name string) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range benchConcurrency {
		wg.Go(func() {
			dec, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
			defer dec.Close()
			buf := make([]byte, 256<<10)
			for {
				i := next.Add(1) - 1
				if i >= int64(len(names)) {
					return
				}
				if err := read(dec, buf, names[i]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// compressible is n bytes that zstd compresses about 3:1, as text and
// tokenised data do: words drawn from a small random vocabulary.
func compressible(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 99))
	vocab := make([][]byte, 512)
	for i := range vocab {
		w := make([]byte, 3+r.IntN(9))
		for j := range w {
			w[j] = byte(r.IntN(256))
		}
		vocab[i] = w
	}
	out := make([]byte, 0, n+16)
	for len(out) < n {
		out = append(out, vocab[r.IntN(len(vocab))]...)
	}
	return out[:n]
}

var discardPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// fetch GETs url and checks the status and length; it is safe to call
// from any goroutine (it returns the failure instead of failing the test).
func fetch(hc *http.Client, url string, size int) error {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("X-Provgate-Epoch", "1")
	req.Header.Set("X-Provgate-Job", "bench")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	buf := discardPool.Get().(*[]byte)
	n, err := io.CopyBuffer(io.Discard, resp.Body, *buf)
	discardPool.Put(buf)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || n != int64(size) {
		return fmt.Errorf("GET %s: %d, %d bytes, %v", url, resp.StatusCode, n, err)
	}
	return nil
}
