package cache_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
)

const childEnv = "PROVGATE_CACHE_TEST_CHILD"

// childSpec is what the parent hands the child process.
type childSpec struct {
	Endpoint string
	Bucket   string
	MaxBytes int64
	Strict   bool // SyncEachCommit
	Objects  []contract.ObjectClaim
}

// runChild fetches objects in a loop, with 4 workers, printing a line per
// commit, until it is killed.
func runChild(dir string) int {
	raw, err := os.ReadFile(filepath.Join(dir, "..", "spec.json"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var spec childSpec
	if err := json.Unmarshal(raw, &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c, err := cache.Open(cache.Config{Dir: dir, MaxBytes: spec.MaxBytes, MaxFetches: 4, SyncEachCommit: spec.Strict})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	o, err := cache.NewS3Origin(cache.S3Config{Endpoint: "http://" + spec.Endpoint, Bucket: spec.Bucket,
		Region: "us-east-1", Lookup: "path", AccessKey: os.Getenv("CHILD_AK"), SecretKey: os.Getenv("CHILD_SK")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c.Mount(testContract, o, 0)
	lines := make(chan string)
	for w := range 4 {
		go func() {
			r := rand.New(rand.NewPCG(uint64(w), uint64(os.Getpid())))
			for {
				obj := &spec.Objects[r.IntN(len(spec.Objects))]
				h, err := c.Get(context.Background(), testContract, obj)
				if err != nil {
					lines <- "error " + err.Error()
					continue
				}
				h.Close()
				lines <- "ok " + obj.Name
			}
		}()
	}
	for l := range lines {
		fmt.Println(l)
	}
	return 0
}

func TestKillDuringCommitsLeavesNoPartialEntry(t *testing.T) {
	e := newEnv(t, cache.Config{MaxBytes: 1})
	e.c.Close()
	spec := childSpec{Endpoint: e.srv.Endpoint, Bucket: e.bucket, MaxBytes: 3 << 20}
	byDigest := map[string]bool{}
	datas := map[string][]byte{}
	for i := range 24 {
		data := textish(uint64(500+i), 128<<10+i*4096)
		obj := putObject(t, e.mc, e.bucket, fmt.Sprintf("k/%02d", i), data, contract.EncodingZstd)
		spec.Objects = append(spec.Objects, obj)
		byDigest[obj.DecodedSHA256] = true
		datas[obj.Name] = data
	}
	root := t.TempDir()
	dir := filepath.Join(root, "cache")
	kept := 0
	for round := range 4 {
		spec.Strict = round == 3
		raw, _ := json.Marshal(spec)
		if err := os.WriteFile(filepath.Join(root, "spec.json"), raw, 0o600); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+dir, "CHILD_AK="+testenv.MinIOAccessKey, "CHILD_SK="+testenv.MinIOSecretKey)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		guard := time.AfterFunc(time.Minute, func() { cmd.Process.Kill() })
		sc := bufio.NewScanner(out)
		oks, lines := 0, 0
		// Run long enough for batched syncs to make some commits durable.
		for (lines < 30 || time.Since(start) < 700*time.Millisecond) && sc.Scan() {
			lines++
			if l := sc.Text(); len(l) > 5 && l[:5] == "error" {
				t.Errorf("child: %s", l)
			} else {
				oks++
			}
		}
		guard.Stop()
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		go io.Copy(io.Discard, out)
		cmd.Wait()
		if oks < 30 {
			t.Fatalf("round %d: child committed only %d objects", round, oks)
		}

		// Before any repair: every file in objects/ is a whole, verified object.
		for _, p := range diskFiles(t, dir, "objects") {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !byDigest[sha(b)] {
				t.Errorf("round %d: %s holds %d bytes that are no whole object", round, p, len(b))
			}
		}
		c := mustOpen(t, cache.Config{Dir: dir, MaxBytes: spec.MaxBytes})
		s := c.Stats()
		if n := len(diskFiles(t, dir, "tmp")); n != 0 {
			t.Errorf("round %d: %d temporary files after Open", round, n)
		}
		if n := len(diskFiles(t, dir, "objects")); n != s.Entries {
			t.Errorf("round %d: %d files on disk, %d entries in the index", round, n, s.Entries)
		}
		if s.Bytes > spec.MaxBytes || s.Bytes != diskBytes(dir, "objects") {
			t.Errorf("round %d: index says %d bytes, disk has %d, limit %d", round, s.Bytes, diskBytes(dir, "objects"), spec.MaxBytes)
		}
		res, err := c.Scrub(context.Background(), nil)
		if err != nil || len(res.Removed) != 0 {
			t.Errorf("round %d: scrub removed %v (err %v)", round, res.Removed, err)
		}
		t.Logf("round %d (sync each commit %v): killed after %d commits; %d entries (%d bytes) kept, all verified", round, spec.Strict, oks, s.Entries, s.Bytes)
		kept += s.Entries
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if kept == 0 {
		t.Error("no entry survived any kill: the test did not reach durable commits")
	}
}
