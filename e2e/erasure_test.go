package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provgate/provgate/internal/sidecar"
)

// TestErasureUnderRaces lands redactions at random moments while single,
// range and batch reads run concurrently, on cold and warm caches, with the
// sidecar reading the bucket with its own credentials (self-hosted) and
// through presigned URLs (marketplace). It checks what erasure promises:
// no unredacted object ever fails (no 502: one redaction must not fail the
// reads of others), a redacted name is never a 502 either, every redacted
// name is 451 afterwards, and its bytes are neither in the cache directory
// nor in the cache's journal, also after a restart.
func TestErasureUnderRaces(t *testing.T) {
	if testing.Short() {
		t.Skip("stress test")
	}
	for _, mode := range []string{"self-hosted", "marketplace"} {
		t.Run(mode, func(t *testing.T) { erasureRounds(t, mode == "marketplace") })
	}
}

const (
	erasureRoundsPerMode = 6
	erasureNamesPerRound = 10
	erasureVictims       = 3
)

func erasureRounds(t *testing.T, marketplace bool) {
	e := newEnv(t, envOpt{})
	type object struct {
		name string
		data []byte
	}
	rounds := make([][]object, erasureRoundsPerMode)
	for r := range rounds {
		for i := range erasureNamesPerRound {
			o := object{name: fmt.Sprintf("r%02d/s%03d.bin", r, i), data: randomBytes(t, 8<<10+rand.IntN(56<<10))}
			e.put(o.name, o.data, i%2 == 0)
			rounds[r] = append(rounds[r], o)
		}
	}
	dir := t.TempDir()
	mutate := func(c *sidecar.Config) {
		c.StateDir, c.CacheDir = filepath.Join(dir, "state"), filepath.Join(dir, "cache")
		if marketplace {
			c.S3Endpoint, c.ProxyListen = "", ""
		}
	}
	sc := e.sidecar(mutate)
	id := e.c.ContractID
	hc := &http.Client{Timeout: 30 * time.Second}
	redacted := map[string][]byte{}
	var live []object

	for r, objs := range rounds {
		warm := r%2 == 1
		if warm {
			for _, o := range objs {
				if code, _ := get(t, hc, sc.URL(), id, o.name, 1, "warm"); code != http.StatusOK {
					t.Fatalf("round %d: warming %s: %d", r, o.name, code)
				}
			}
		}
		victims := map[string]bool{}
		for _, i := range rand.Perm(len(objs))[:erasureVictims] {
			victims[objs[i].name] = true
		}
		want := map[string][]byte{}
		var names []string
		for _, o := range objs {
			want[o.name] = o.data
			names = append(names, o.name)
		}
		// check judges one answer: an unredacted object is 200 with its
		// bytes; a victim is 200 with its bytes (before the redaction
		// reached the sidecar) or 451, never anything else.
		check := func(how, name string, code int, body []byte, from, to int) {
			switch {
			case code == http.StatusOK && bytes.Equal(body, want[name][from:to]):
			case code == http.StatusUnavailableForLegalReasons && victims[name]:
			default:
				t.Errorf("round %d (warm %v): %s %s: status %d, %d bytes (victim %v)", r, warm, how, name, code, len(body), victims[name])
			}
		}
		ctx, stop := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		reader := func(read func(name string)) {
			wg.Go(func() {
				for ctx.Err() == nil {
					for _, i := range rand.Perm(len(names)) {
						if ctx.Err() != nil {
							return
						}
						read(names[i])
					}
				}
			})
		}
		for range 2 {
			reader(func(name string) {
				code, body := get(t, hc, sc.URL(), id, name, 1, "single")
				check("GET", name, code, body, 0, len(want[name]))
			})
		}
		reader(func(name string) {
			n := len(want[name])
			from, to := n/3, n-7
			code, body := getRange(t, hc, sc.URL(), id, name, from, to-1)
			if code == http.StatusPartialContent {
				code = http.StatusOK
			}
			check("range GET", name, code, body, from, to)
		})
		for range 2 {
			reader(func(string) {
				order := rand.Perm(len(names))
				batch := make([]string, len(names))
				for i, j := range order {
					batch[i] = names[j]
				}
				frames, err := batchFrames(hc, sc.URL(), id, batch)
				if err != nil {
					t.Errorf("round %d: batch: %v", r, err)
					return
				}
				for _, f := range frames {
					check("batch frame", f.name, f.status, f.body, 0, len(want[f.name]))
				}
			})
		}
		// The redactions land at random moments while the reads run.
		for name := range victims {
			time.Sleep(time.Duration(rand.IntN(120)) * time.Millisecond)
			e.alice.Redact(t, id, name)
		}
		time.Sleep(400 * time.Millisecond)
		stop()
		wg.Wait()
		if t.Failed() {
			t.Fatalf("round %d failed", r)
		}
		for name := range victims {
			waitFor(t, name+" to be 451", 10*time.Second, func() bool {
				code, _ := get(t, hc, sc.URL(), id, name, 1, "after")
				return code == http.StatusUnavailableForLegalReasons
			})
			redacted[name] = want[name]
		}
		for _, o := range objs {
			if !victims[o.name] {
				live = append(live, o)
			}
		}
		waitFor(t, "the cache's fetches to end", 30*time.Second, func() bool { return sc.Cache().Stats().InFlight == 0 })
		checkErased(t, sc, id, filepath.Join(dir, "cache"), redacted, fmt.Sprintf("round %d (warm %v)", r, warm))
	}

	// After a restart the redacted names are still 451, their bytes still
	// gone, and every other object still serves.
	shutdown(t, sc)
	checkErasedOnDisk(t, filepath.Join(dir, "cache"), redacted, "after shutdown")
	sc = e.sidecar(mutate)
	checkErased(t, sc, id, filepath.Join(dir, "cache"), redacted, "after a restart")
	for _, o := range live {
		if code, body := get(t, hc, sc.URL(), id, o.name, 2, "restart"); code != http.StatusOK || !bytes.Equal(body, o.data) {
			t.Errorf("after a restart: %s: %d, %d bytes", o.name, code, len(body))
		}
	}
}

func shutdown(t *testing.T, sc *sidecar.Sidecar) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sc.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// checkErased checks that every redacted name is 451, alone and in a
// batch, and that its bytes are gone from the cache directory and journal.
func checkErased(t *testing.T, sc *sidecar.Sidecar, id, cacheDir string, redacted map[string][]byte, when string) {
	t.Helper()
	var names []string
	for name := range redacted {
		names = append(names, name)
		if code, _ := get(t, http.DefaultClient, sc.URL(), id, name, 3, "check"); code != http.StatusUnavailableForLegalReasons {
			t.Errorf("%s: redacted %s: GET %d, want 451", when, name, code)
		}
	}
	frames, err := batchFrames(http.DefaultClient, sc.URL(), id, names)
	if err != nil {
		t.Fatalf("%s: batch: %v", when, err)
	}
	for _, f := range frames {
		if f.status != http.StatusUnavailableForLegalReasons {
			t.Errorf("%s: redacted %s: batch frame %d, want 451", when, f.name, f.status)
		}
	}
	checkErasedOnDisk(t, cacheDir, redacted, when)
}

// checkErasedOnDisk looks for the redacted objects' bytes in every file
// under the cache directory, and for their names among the journal's live
// records.
func checkErasedOnDisk(t *testing.T, cacheDir string, redacted map[string][]byte, when string) {
	t.Helper()
	bySHA := map[string]string{}
	for name, b := range redacted {
		bySHA[sha(b)] = name
	}
	err := filepath.WalkDir(cacheDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		if name, ok := bySHA[hex.EncodeToString(h.Sum(nil))]; ok {
			t.Errorf("%s: the bytes of redacted %s are in the cache directory: %s", when, name, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name := range journalLive(t, cacheDir) {
		if _, ok := redacted[name]; ok {
			t.Errorf("%s: redacted %s is live in the cache's journal", when, name)
		}
	}
}

// journalLive replays the cache's journal (one JSON record a line, then a
// checksum) and returns the names whose put is not followed by a del.
func journalLive(t *testing.T, cacheDir string) map[string]bool {
	t.Helper()
	f, err := os.Open(filepath.Join(cacheDir, "index.journal"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	byFile := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		end := strings.LastIndex(line, "}")
		if end < 0 {
			continue
		}
		var rec struct {
			Op   string `json:"op"`
			File string `json:"f"`
			Name string `json:"n"`
		}
		if json.Unmarshal([]byte(line[:end+1]), &rec) != nil {
			continue
		}
		switch rec.Op {
		case "put":
			byFile[rec.File] = rec.Name
		case "del":
			delete(byFile, rec.File)
		}
	}
	live := map[string]bool{}
	for _, name := range byFile {
		live[name] = true
	}
	return live
}

func getRange(t testing.TB, hc *http.Client, base, id, name string, from, to int) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/contracts/"+id+"/objects/"+name, nil)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
	req.Header.Set("X-Provgate-Epoch", "1")
	req.Header.Set("X-Provgate-Job", "range")
	resp, err := hc.Do(req)
	if err != nil {
		t.Errorf("GET %s: %v", name, err)
		return 0, nil
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("GET %s: read: %v", name, err)
	}
	return resp.StatusCode, b
}

// batchFrames posts a batch and parses its frames, without t.Fatal (it
// runs in reader goroutines).
func batchFrames(hc *http.Client, base, id string, names []string) ([]frame, error) {
	body, _ := json.Marshal(map[string][]string{"names": names})
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/contracts/"+id+"/batch", bytes.NewReader(body))
	req.Header.Set("X-Provgate-Epoch", "1")
	req.Header.Set("X-Provgate-Job", "batch")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	var out []frame
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, fmt.Errorf("truncated frame header")
		}
		nl := int(binary.BigEndian.Uint32(b))
		if len(b) < 4+nl+10 {
			return nil, fmt.Errorf("truncated frame")
		}
		name := string(b[4 : 4+nl])
		b = b[4+nl:]
		st := int(binary.BigEndian.Uint16(b))
		size := binary.BigEndian.Uint64(b[2:10])
		b = b[10:]
		if uint64(len(b)) < size {
			return nil, fmt.Errorf("frame %q: body of %d bytes, %d left", name, size, len(b))
		}
		out = append(out, frame{name: name, status: st, body: b[:size]})
		b = b[size:]
	}
	if len(out) != len(names) {
		return nil, fmt.Errorf("%d frames for %d names", len(out), len(names))
	}
	return out, nil
}
