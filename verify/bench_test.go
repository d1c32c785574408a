package verify_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/verify/verifytest"
)

var (
	benchOnce sync.Map // size -> *verifytest.Log
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchLog(b *testing.B, n int) *verifytest.Log {
	if l, ok := benchOnce.Load(n); ok {
		return l.(*verifytest.Log)
	}
	alice := verifytest.NewContributor(b, "did:example:alice", jose.EdDSA)
	l := verifytest.NewLog(b, cid, alice.Info())
	buildLog(b, l, alice, "obj", n)
	benchOnce.Store(n, l)
	return l
}

// BenchmarkFollowerReplay verifies a whole log from first contact: hash
// chain, Merkle root against the signed checkpoint, every EdDSA signature
// (in parallel, GOMAXPROCS workers), the manifest, and its commit to
// SQLite. PROVGATE_BENCH_ENTRIES sets the size (default 100000):
//
//	go test -run '^$' -bench BenchmarkFollowerReplay -benchtime 1x ./verify/
func BenchmarkFollowerReplay(b *testing.B) {
	n := 100000
	if s := os.Getenv("PROVGATE_BENCH_ENTRIES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	l := benchLog(b, n)
	b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
		cpu0 := cpuTime()
		for b.Loop() {
			b.StopTimer()
			store := mustStore(b, b.TempDir())
			f := mustFollower(b, verify.FollowerConfig{Contract: l.Contract, Source: l, Store: store, PageSize: 10000}, verify.WithTrustOnFirstUse())
			b.StartTimer()
			if err := f.Sync(context.Background()); err != nil {
				b.Fatal(err)
			}
			if st := f.Status(); st.Size != uint64(n) || st.Objects != n {
				b.Fatalf("status %+v", st)
			}
		}
		b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "entries/s")
		// CPU time of the whole process (setup included): on a shared
		// machine, cpu-s/op divided by the cores is what an idle one takes.
		b.ReportMetric((cpuTime()-cpu0).Seconds()/float64(b.N), "cpu-s/op")
	})
}

// BenchmarkFollowerResume measures a restart: a follower on a state file
// that holds a verified log (PROVGATE_BENCH_ENTRIES entries, default
// 100000) is ready to serve, without any network round trip:
//
//	go test -run '^$' -bench BenchmarkFollowerResume -benchtime 5x ./verify/
func BenchmarkFollowerResume(b *testing.B) {
	n := 100000
	if s := os.Getenv("PROVGATE_BENCH_ENTRIES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	l := benchLog(b, n)
	store := mustStore(b, b.TempDir())
	cfg := verify.FollowerConfig{Contract: l.Contract, Source: l, Store: store, PageSize: 10000}
	if err := mustFollower(b, cfg, verify.WithTrustOnFirstUse()).Sync(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
		for b.Loop() {
			f := mustFollower(b, cfg, verify.WithTrustOnFirstUse())
			if err := f.Ready(); err != nil {
				b.Fatal(err)
			}
			if f.Manifest().Len() != n {
				b.Fatalf("manifest of %d", f.Manifest().Len())
			}
		}
	})
}
