package meter_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/provgate/provgate/meter"
)

// BenchmarkRecord measures sustained acknowledged events per second: many
// concurrent callers each wait for their event's commit (group commit).
func BenchmarkRecord(b *testing.B) {
	for _, sc := range []struct {
		name string
		sync meter.Sync
	}{{"normal", meter.SyncNormal}, {"full", meter.SyncFull}} {
		b.Run("sync="+sc.name, func(b *testing.B) {
			l := MustOpen(b, "", meter.Config{Sync: sc.sync})
			ev := access(1)
			b.SetParallelism(64)
			b.ResetTimer()
			start, cpu := time.Now(), cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := l.Record(context.Background(), ev); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/event")
		})
	}
}

// BenchmarkSubmit measures the writer's sustained rate when callers do not
// wait: b.N events are submitted, then the last is waited for.
func BenchmarkSubmit(b *testing.B) {
	l := MustOpen(b, "", meter.Config{})
	ev := access(1)
	b.ResetTimer()
	start, cpu := time.Now(), cpuTime()
	var last meter.Pending
	for range b.N {
		p, err := l.Submit(context.Background(), ev)
		for err != nil {
			p, err = l.Submit(context.Background(), ev)
		}
		last = p
	}
	if _, err := last.Wait(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/event")
}

// BenchmarkHit compares, in one run, a warm 64 KiB GET over loopback HTTP
// served from a file (client and server in this process) with the same
// GET plus one ledger event per request: "async" submits it after the
// body without waiting; "ack" records it after the body and waits for the
// commit (Record); "overlap" submits it before the body and waits for the
// commit after it, so the commit overlaps the send and concurrent
// requests share it. cpu-ns/op is the
// process's CPU time per request, the figure to compare on a shared
// machine; ns/op is wall time.
func BenchmarkHit(b *testing.B) {
	dir := b.TempDir()
	file := filepath.Join(dir, "obj")
	if err := os.WriteFile(file, make([]byte, 64<<10), 0o600); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"plain", "async", "ack", "overlap"} {
		b.Run("meter="+mode, func(b *testing.B) {
			var l *meter.Ledger
			if mode != "plain" {
				l = MustOpen(b, "", meter.Config{})
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				f, err := os.Open(file)
				if err != nil {
					http.Error(w, err.Error(), 500)
					return
				}
				defer f.Close()
				ev := meter.Event{Contract: testContract, Name: "obj", Bytes: 64 << 10, Epoch: 1, Job: "bench", TokenID: "tok"}
				ctx := context.WithoutCancel(r.Context())
				var p meter.Pending
				if mode == "overlap" {
					// Submit before the body, wait for the commit after it.
					if p, err = l.Submit(ctx, ev); err != nil {
						b.Error(err)
					}
				}
				http.ServeContent(w, r, "", time.Time{}, f)
				switch mode {
				case "async":
					_, err = l.Submit(ctx, ev)
				case "ack":
					_, err = l.Record(ctx, ev)
				case "overlap":
					_, err = p.Wait(ctx)
				}
				if err != nil {
					b.Error(err)
				}
			})}
			url, stop := serve(b, srv)
			defer stop()
			tr := &http.Transport{MaxIdleConnsPerHost: 64}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			b.SetParallelism(4)
			b.SetBytes(64 << 10)
			b.ResetTimer()
			cpu := cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					n, _ := io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if n != 64<<10 {
						b.Errorf("read %d bytes", n)
						return
					}
				}
			})
			if l != nil {
				// The writer's work for the last events counts too.
				if _, err := l.Record(context.Background(), meter.Event{Contract: testContract, Name: "flush"}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
			if l != nil {
				b.ReportMetric(float64(l.Stats().Commits)/float64(b.N), "commits/op")
			}
		})
	}
}

// BenchmarkRecordSerial is one caller recording and waiting, one event
// per transaction: the cost of a commit.
func BenchmarkRecordSerial(b *testing.B) {
	l := MustOpen(b, "", meter.Config{})
	ev := access(1)
	b.ResetTimer()
	cpu := cpuTime()
	for range b.N {
		if _, err := l.Record(context.Background(), ev); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/event")
}

// BenchmarkHitInterleaved is BenchmarkHit's plain and async modes
// interleaved in rounds of 256 requests (4 clients), so that a shared
// machine's changing load falls on both alike; it reports the metered
// mode's CPU per request relative to the plain GET's (overhead-%). The
// ack mode is left out: its commits' WAL checkpoints would land in the
// other modes' rounds. b.N rounds per mode.
func BenchmarkHitInterleaved(b *testing.B) {
	file := filepath.Join(b.TempDir(), "obj")
	if err := os.WriteFile(file, make([]byte, 64<<10), 0o600); err != nil {
		b.Fatal(err)
	}
	l := MustOpen(b, "", meter.Config{})
	modes := []string{"plain", "async"}
	urls := map[string]string{}
	for _, mode := range modes {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f, err := os.Open(file)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			defer f.Close()
			http.ServeContent(w, r, "", time.Time{}, f)
			ev := meter.Event{Contract: testContract, Name: "obj", Bytes: 64 << 10, Epoch: 1, Job: "bench", TokenID: "tok"}
			ctx := context.WithoutCancel(r.Context())
			if mode == "async" {
				_, err = l.Submit(ctx, ev)
			}
			if err != nil {
				b.Error(err)
			}
		})}
		url, stop := serve(b, srv)
		defer stop()
		urls[mode] = url
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	const clients, perClient = 4, 64
	round := func(url string) {
		var wg sync.WaitGroup
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range perClient {
					resp, err := client.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}()
		}
		wg.Wait()
	}
	for _, mode := range modes { // warm up connections and files
		round(urls[mode])
	}
	cpu := map[string]time.Duration{}
	b.ResetTimer()
	for range b.N {
		for _, mode := range modes {
			start := cpuTime()
			round(urls[mode])
			if mode == "async" { // the writer's share of this round
				if _, err := l.Record(context.Background(), meter.Event{Contract: testContract, Name: "flush"}); err != nil {
					b.Fatal(err)
				}
			}
			cpu[mode] += cpuTime() - start
		}
	}
	per := func(mode string) float64 { return float64(cpu[mode]) / float64(b.N*clients*perClient) }
	b.ReportMetric(per("plain"), "plain-cpu-ns/req")
	b.ReportMetric(per("async"), "async-cpu-ns/req")
	b.ReportMetric(100*(per("async")/per("plain")-1), "async-overhead-%")
}
