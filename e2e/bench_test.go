package e2e_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/provgate/provgate/contract"
)

// BenchmarkWarmHit compares the sidecar serving warm, verified objects
// (metering on: every GET writes a ledger event) with nginx serving the same
// decoded files with sendfile, through the same keep-alive client in the
// same run. `scripts/bench.sh` prints the ratios; DESIGN.md's targets are
// in the names.
func BenchmarkWarmHit(b *testing.B) {
	for _, tc := range []struct {
		name  string
		size  int
		count int
	}{
		{"1MiB_target0.9", 1 << 20, 32},
		{"64KiB_target0.7", 64 << 10, 256},
	} {
		b.Run(tc.name, func(b *testing.B) {
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
			// The outbox ships in the background; here the registry shares
			// the sidecar's two cores, so it ships once a minute instead of
			// stealing them mid-measurement. Every access is still written
			// to the ledger before its last byte goes out.
			args := []string{"--sync-interval", "1m", "--quota-samples", "0"} // an unlimited contract: an unlimited lease
			if d := os.Getenv("PROVGATE_BENCH_DEBUG_LISTEN"); d != "" {
				args = append(args, "--debug-listen", d) // to profile the sidecar during the run
			}
			sc := e.startServe(b, args...)
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
				b.SetParallelism(4) // 8 requests in flight, as 4 loader workers with a prefetch of 2
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
