package verify_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

// A fresh sidecar killed (SIGKILL) in the middle of its first replay, its
// first batch written into the sync's transaction and the next manifest
// not yet come, leaves no trusted state behind: the next start finds no
// objects and no checkpoint, follows the log from first contact again, and
// is ready with every object.
func TestFreshBuildKilledMidwayIsDiscarded(t *testing.T) {
	const perBatch, batches = 2000, 3
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:crash", "bucket", alice))
	for b := range batches {
		objs := make([]contract.ObjectClaim, perBatch)
		for i := range objs {
			objs[i] = scaleObject(b*perBatch + i)
		}
		jws, manifest, err := verify.SignBatch(alice.Key, alice.ID, c.ContractID, objs)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.Client.AppendBatch(t.Context(), c.ContractID, jws, manifest); err != nil {
			t.Fatal(err)
		}
	}
	// The registry, but every batch manifest after the first stalls.
	target, err := url.Parse(h.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	var manifests atomic.Int32
	stalled := make(chan struct{})
	var once sync.Once
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") && manifests.Add(1) > 1 {
			once.Do(func() { close(stalled) })
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer srv.Close()
	defer close(release)

	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestScaleFollowerProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PROVGATE_SCALE_REGISTRY="+srv.URL, "PROVGATE_SCALE_CONTRACT="+c.ContractID,
		"PROVGATE_SCALE_DIR="+dir, "PROVGATE_SCALE_OBJECTS="+strconv.Itoa(perBatch*batches))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-stalled:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the sidecar fetched no second manifest")
	}
	// Its first batch is applied while the second manifest is awaited.
	time.Sleep(500 * time.Millisecond)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()

	store, err := verify.OpenStore(filepath.Join(dir, verify.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	cfg := verify.FollowerConfig{Contract: c, Source: h.Client, Store: store, PageSize: contract.MaxEventsLimit}
	f, err := verify.NewFollower(t.Context(), cfg, verify.WithTrustOnFirstUse())
	if err != nil {
		t.Fatal(err)
	}
	if st := f.Status(); st.Objects != 0 || st.Size != 0 || f.Ready() == nil {
		t.Fatalf("after the kill: status %+v, ready %v; want nothing trusted", st, f.Ready())
	}
	if err := f.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := f.Ready(); err != nil {
		t.Fatal(err)
	}
	if st := f.Status(); st.Objects != perBatch*batches {
		t.Fatalf("status %+v, want %d objects", st, perBatch*batches)
	}
	for _, i := range []int{0, perBatch*batches - 1} {
		want := scaleObject(i)
		if e, err := f.Lookup(want.Name); err != nil || e.ObjectClaim != want {
			t.Fatalf("Lookup(%s) = %+v, %v", want.Name, e, err)
		}
	}
}
