package verify_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// BenchmarkMillionObjects contributes a dataset of small objects (the log
// part only: claims, no bytes) as batch attestations of 10,000 objects to
// a real registry over loopback HTTP, then starts a fresh sidecar's
// follower on that log in a process of its own (this test binary again)
// and measures its wall time to ready and its peak RSS, then its restart
// from the persisted state. PROVGATE_BENCH_OBJECTS sets the size (default
// 1,000,000); PROVGATE_SCALE_VERBOSE=1 shows the follower process's
// output, PROVGATE_SCALE_CPUPROFILE=FILE profiles it (FILE.pid):
//
//	go test -run '^$' -bench BenchmarkMillionObjects -benchtime 1x -timeout 30m ./verify/
func BenchmarkMillionObjects(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("PROVGATE_BENCH_OBJECTS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	const perBatch = 10_000
	h := registrytest.Start(b)
	alice := h.NewContributor(b, "did:example:alice")
	c := h.CreateContract(b, registrytest.NewContract("did:example:scale", "bucket", alice))
	ctx := context.Background()
	for b.Loop() {
		start, cpu0 := time.Now(), cpuTime()
		entries := 0
		for first := 0; first < n; first += perBatch {
			objs := make([]contract.ObjectClaim, 0, perBatch)
			for i := first; i < min(n, first+perBatch); i++ {
				objs = append(objs, scaleObject(i))
			}
			jws, manifest, err := verify.SignBatch(alice.Key, alice.ID, c.ContractID, objs)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := h.Client.AppendBatch(ctx, c.ContractID, jws, manifest); err != nil {
				b.Fatalf("append batch at %d: %v", first, err)
			}
			entries++
		}
		appendTime, appendCPU := time.Since(start), cpuTime()-cpu0
		b.ReportMetric(appendTime.Seconds(), "append-s")
		b.ReportMetric(float64(entries), "log-entries")

		dir := b.TempDir()
		fresh, freshRSS, freshCPU := scaleChild(b, h.URL, c.ContractID, dir, n)
		restart, restartRSS, _ := scaleChild(b, h.URL, c.ContractID, dir, n)
		b.ReportMetric(fresh.Seconds(), "ready-s")
		b.ReportMetric(freshCPU.Seconds(), "ready-cpu-s")
		b.ReportMetric(float64(freshRSS)/(1<<20), "ready-peak-rss-MiB")
		b.ReportMetric(restart.Seconds(), "restart-s")
		fmt.Printf("scale: %d objects in %d batch attestations (+1 terms entry): attest+append %.1f s (registry in this process, %.1f CPU-s for both); "+
			"fresh sidecar ready in %.1f s (%.1f CPU-s), peak RSS %.0f MiB; restart ready in %.2f s, peak RSS %.0f MiB\n",
			n, entries, appendTime.Seconds(), appendCPU.Seconds(), fresh.Seconds(), freshCPU.Seconds(), float64(freshRSS)/(1<<20), restart.Seconds(), float64(restartRSS)/(1<<20))
	}
}

// scaleObject is the claim of the i-th small object (1 KiB, identity).
func scaleObject(i int) contract.ObjectClaim {
	name := fmt.Sprintf("train/%03d/%07d.json", i%1000, i)
	sum := sha256.Sum256([]byte(name))
	h := hex.EncodeToString(sum[:])
	return contract.ObjectClaim{Name: name, StoredSHA256: h, StoredSize: 1024, Encoding: contract.EncodingIdentity,
		DecodedSHA256: h, DecodedSize: 1024, MediaType: "application/json", Tokens: 200}
}

// scaleChild runs TestScaleFollowerProcess in a child process on the
// state dir and returns its time to ready and its peak RSS.
func scaleChild(b *testing.B, registryURL, contractID, dir string, n int) (ready time.Duration, rss int64, cpu time.Duration) {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestScaleFollowerProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "PROVGATE_SCALE_REGISTRY="+registryURL, "PROVGATE_SCALE_CONTRACT="+contractID,
		"PROVGATE_SCALE_DIR="+dir, "PROVGATE_SCALE_OBJECTS="+strconv.Itoa(n))
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("follower process: %v\n%s", err, out)
	}
	if os.Getenv("PROVGATE_SCALE_VERBOSE") != "" {
		os.Stderr.Write(out)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "scale-ready: "); ok {
			ready, _ = time.ParseDuration(v)
		}
	}
	if ready == 0 {
		b.Fatalf("follower process printed no time:\n%s", out)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return ready, ru.Maxrss << 10, time.Duration(ru.Utime.Nano() + ru.Stime.Nano()) // Maxrss: KiB on Linux
}

// TestScaleFollowerProcess is BenchmarkMillionObjects' sidecar: it follows
// the log from first contact (or its persisted state) until ready, checks
// a lookup, and prints its time. It is skipped unless the benchmark runs it.
func TestScaleFollowerProcess(t *testing.T) {
	reg := os.Getenv("PROVGATE_SCALE_REGISTRY")
	if reg == "" {
		t.Skip("run by BenchmarkMillionObjects")
	}
	n, _ := strconv.Atoi(os.Getenv("PROVGATE_SCALE_OBJECTS"))
	if p := os.Getenv("PROVGATE_SCALE_CPUPROFILE"); p != "" {
		pf, _ := os.Create(p + "." + strconv.Itoa(os.Getpid()))
		pprof.StartCPUProfile(pf)
		defer pprof.StopCPUProfile()
	}
	ctx := context.Background()
	start := time.Now()
	client, err := contract.NewClient(reg)
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := client.GetContract(ctx, os.Getenv("PROVGATE_SCALE_CONTRACT"), "")
	if err != nil {
		t.Fatal(err)
	}
	store, err := verify.OpenStore(filepath.Join(os.Getenv("PROVGATE_SCALE_DIR"), verify.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	f, err := verify.NewFollower(ctx, verify.FollowerConfig{Contract: c, Source: client, Store: store, PageSize: contract.MaxEventsLimit},
		verify.WithTrustOnFirstUse())
	if err != nil {
		t.Fatal(err)
	}
	if f.Ready() != nil {
		if err := f.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Ready(); err != nil {
		t.Fatal(err)
	}
	ready := time.Since(start)
	want := scaleObject(n - 1)
	if e, err := f.Lookup(want.Name); err != nil || e.ObjectClaim != want {
		t.Fatalf("Lookup(%s) = %+v, %v", want.Name, e, err)
	}
	if got := f.Status().Objects; got != n {
		t.Fatalf("%d objects, want %d", got, n)
	}
	fmt.Printf("scale-ready: %s\n", ready)
}
