package e2e_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/sidecar"
)

// announce POSTs an epoch order and returns the status and body.
func announce(t testing.TB, hc *http.Client, base, id string, epoch int64, job string, body []byte) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/v1/contracts/%s/epochs/%d/order", base, id, epoch), bytes.NewReader(body))
	req.Header.Set("X-Provgate-Job", job)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("announce: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func orderBody(names []string) []byte {
	b, _ := json.Marshal(map[string][]string{"names": names})
	return b
}

// TestOrderAnnounceRefusesBadInput: the order endpoint is bounded (too many
// names, or too large a body: 413) and refuses malformed orders with 400
// and a message that says what is wrong.
func TestOrderAnnounceRefusesBadInput(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.put("o/a.bin", randomBytes(t, 100), false)
	sc := e.sidecar(func(c *sidecar.Config) { c.MaxOrderNames = 100 })
	hc := &http.Client{}
	id := e.c.ContractID
	many := make([]string, 101)
	for i := range many {
		many[i] = fmt.Sprintf("o/%03d.bin", i)
	}
	for _, tc := range []struct {
		what   string
		path   string
		body   []byte
		status int
		code   string
		msg    string
	}{
		{"101 names", "1", orderBody(many), http.StatusRequestEntityTooLarge, contract.CodeTooLarge, "exceeds 100"},
		{"a body past the bound", "1", []byte(`{"names": ["` + strings.Repeat("x", 200<<10) + `"]}`), http.StatusRequestEntityTooLarge, contract.CodeTooLarge, "order body exceeds"},
		{"not JSON", "1", []byte(`names: a`), http.StatusBadRequest, contract.CodeBadRequest, "order body"},
		{"an unknown field", "1", []byte(`{"names": ["o/a.bin"], "seed": 1}`), http.StatusBadRequest, contract.CodeBadRequest, "unknown field"},
		{"no names", "1", []byte(`{"names": []}`), http.StatusBadRequest, contract.CodeBadRequest, "1 to 100 names"},
		{"a bad name", "1", orderBody([]string{"o/a.bin", "../etc/passwd"}), http.StatusBadRequest, contract.CodeBadRequest, "order name 1"},
		{"a bad epoch", "x", orderBody([]string{"o/a.bin"}), http.StatusBadRequest, contract.CodeBadRequest, "epoch"},
	} {
		req, _ := http.NewRequest(http.MethodPost, sc.URL()+"/v1/contracts/"+id+"/epochs/"+tc.path+"/order", bytes.NewReader(tc.body))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || errorCode(b) != tc.code || !strings.Contains(string(b), tc.msg) {
			t.Errorf("%s: %d %s, want %d %s mentioning %q", tc.what, resp.StatusCode, b, tc.status, tc.code, tc.msg)
		}
	}
	if code, b := announce(t, hc, sc.URL(), "did:example:nope", 1, "j", orderBody([]string{"o/a.bin"})); code != http.StatusNotFound {
		t.Errorf("unknown contract: %d %s, want 404", code, b)
	}
	// At the bound it is taken; names not in the manifest are skipped.
	if code, b := announce(t, hc, sc.URL(), id, 1, "j", orderBody(many[:100])); code != http.StatusOK {
		t.Errorf("100 names: %d %s, want 200", code, b)
	}
}

// TestReadAheadFetchesAheadAndNeverBills: after an order is announced the
// sidecar fetches its objects into the cache before they are read, and
// that bills nothing: the registry's totals stay at zero samples and
// bytes. The reads that follow are hits and bill exactly what they serve.
func TestReadAheadFetchesAheadAndNeverBills(t *testing.T) {
	e := newEnv(t, envOpt{})
	const n = 12
	names := make([]string, n)
	want := map[string][]byte{}
	var total int64
	for i := range names {
		names[i] = fmt.Sprintf("ra/%02d.bin", i)
		want[names[i]] = randomBytes(t, 20<<10+i)
		total += int64(len(want[names[i]]))
		e.put(names[i], want[names[i]], i%2 == 0)
	}
	sc := e.sidecar(nil)
	hc := &http.Client{}
	id := e.c.ContractID
	if code, b := announce(t, hc, sc.URL(), id, 3, "train", orderBody(names)); code != http.StatusOK {
		t.Fatalf("announce: %d %s", code, b)
	}
	waitFor(t, "read-ahead to cache the order", 30*time.Second, func() bool {
		s := sc.Cache().Stats()
		return s.Entries == n && s.InFlight == 0
	})
	// Nothing was served: nothing bills. An epoch summary makes sure the
	// registry has seen everything the ledger holds.
	drain(t, sc, id)
	tot, err := e.client.MeteringTotals(t.Context(), id, "train", -1)
	if err != nil {
		t.Fatal(err)
	}
	if tot.AccessEvents != 0 || tot.BilledSamples != 0 || tot.BilledBytes != 0 {
		t.Fatalf("after read-ahead alone: %d access events, %d samples, %d bytes billed; want 0", tot.AccessEvents, tot.BilledSamples, tot.BilledBytes)
	}
	if n := sc.Ledger().Stats().Written; n != 0 {
		t.Fatalf("the ledger holds %d events after read-ahead alone, want 0", n)
	}
	fetches := sc.Cache().Stats().Fetches
	for _, name := range names {
		code, b := get(t, hc, sc.URL(), id, name, 3, "train")
		if code != http.StatusOK || !bytes.Equal(b, want[name]) {
			t.Fatalf("GET %s: %d, %d bytes", name, code, len(b))
		}
	}
	if got := sc.Cache().Stats().Fetches; got != fetches {
		t.Errorf("the reads after read-ahead made %d origin fetches, want 0", got-fetches)
	}
	tot = totals(t, e, sc, "train", n)
	if tot.BilledSamples != n || tot.BilledBytes != total {
		t.Errorf("after reading the order: %d samples, %d bytes billed; want %d, %d", tot.BilledSamples, tot.BilledBytes, n, total)
	}
}

// TestReadAheadSkipsRedactedAndUnverified: read-ahead never fetches a name
// redacted before its turn, and never makes an object that fails
// verification servable: the redacted name is 451 and was never fetched,
// the corrupt one is 502 and is not in the cache.
func TestReadAheadSkipsRedactedAndUnverified(t *testing.T) {
	e := newEnv(t, envOpt{})
	const n, redacted, corrupt = 8, 5, 3
	names := make([]string, n)
	want := map[string][]byte{}
	for i := range names {
		names[i] = fmt.Sprintf("rx/%02d.bin", i)
		want[names[i]] = randomBytes(t, 16<<10)
		e.put(names[i], want[names[i]], true)
	}
	e.putRaw(names[corrupt], randomBytes(t, 4<<10)) // the origin's bytes no longer match the attestation
	var cacheDir string
	sc := e.sidecar(func(c *sidecar.Config) { c.ReadAheadObjects, cacheDir = 2, c.CacheDir })
	hc := &http.Client{}
	id := e.c.ContractID
	if code, b := announce(t, hc, sc.URL(), id, 1, "job", orderBody(names)); code != http.StatusOK {
		t.Fatalf("announce: %d %s", code, b)
	}
	waitFor(t, "read-ahead to fill its window", 30*time.Second, func() bool {
		s := sc.Cache().Stats()
		return s.Entries == 2 && s.InFlight == 0
	})
	e.alice.Redact(t, id, names[redacted])
	waitFor(t, "the sidecar to apply the redaction", 30*time.Second, func() bool {
		resp, err := hc.Get(sc.URL() + "/v1/contracts/" + id + "/manifest")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK && !bytes.Contains(b, []byte(names[redacted]))
	})
	for i, name := range names {
		code, b := get(t, hc, sc.URL(), id, name, 1, "job")
		switch i {
		case redacted:
			if code != http.StatusUnavailableForLegalReasons {
				t.Errorf("GET redacted %s: %d, want 451", name, code)
			}
		case corrupt:
			if code != http.StatusBadGateway {
				t.Errorf("GET corrupt %s: %d (%d bytes), want 502", name, code, len(b))
			}
		default:
			if code != http.StatusOK || !bytes.Equal(b, want[name]) {
				t.Errorf("GET %s: %d, %d bytes", name, code, len(b))
			}
		}
		time.Sleep(20 * time.Millisecond) // let the window move
	}
	waitFor(t, "fetches to end", 30*time.Second, func() bool { return sc.Cache().Stats().InFlight == 0 })
	s := sc.Cache().Stats()
	if s.Entries != n-2 {
		t.Errorf("%d cache entries, want %d (neither the redacted nor the corrupt object)", s.Entries, n-2)
	}
	// Every name but the redacted one was fetched at least once; the
	// corrupt one may have been tried twice (read-ahead, then the GET).
	if s.Fetches < n-1 || s.Fetches > n {
		t.Errorf("%d origin fetches, want %d or %d: the redacted name must never be fetched", s.Fetches, n-1, n)
	}
	checkErasedOnDisk(t, cacheDir, map[string][]byte{names[redacted]: want[names[redacted]]}, "after read-ahead")
}

// TestReadAheadLetsGoOfRedactedObjects: an object read-ahead fetched and
// holds for a read that has not come yet is redacted; its bytes leave the
// cache directory without any read (read-ahead's pin does not keep the
// purged file), and its read is 451.
func TestReadAheadLetsGoOfRedactedObjects(t *testing.T) {
	e := newEnv(t, envOpt{})
	const n, victim = 6, 4
	names := make([]string, n)
	want := map[string][]byte{}
	for i := range names {
		names[i] = fmt.Sprintf("rr/%02d.bin", i)
		want[names[i]] = randomBytes(t, 8<<10)
		e.put(names[i], want[names[i]], i%2 == 0)
	}
	var cacheDir string
	sc := e.sidecar(func(c *sidecar.Config) { cacheDir = c.CacheDir })
	hc := &http.Client{}
	id := e.c.ContractID
	if code, b := announce(t, hc, sc.URL(), id, 1, "job", orderBody(names)); code != http.StatusOK {
		t.Fatalf("announce: %d %s", code, b)
	}
	waitFor(t, "read-ahead to cache the order", 30*time.Second, func() bool {
		s := sc.Cache().Stats()
		return s.Entries == n && s.InFlight == 0
	})
	e.alice.Redact(t, id, names[victim])
	gone := func() bool {
		found := false
		filepath.WalkDir(cacheDir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, want[names[victim]]) {
				found = true
			}
			return nil
		})
		return !found
	}
	waitFor(t, "the redacted object's bytes to leave the cache directory", 15*time.Second, gone)
	if code, _ := get(t, hc, sc.URL(), id, names[victim], 1, "job"); code != http.StatusUnavailableForLegalReasons {
		t.Errorf("GET redacted %s: %d, want 451", names[victim], code)
	}
	checkErasedOnDisk(t, cacheDir, map[string][]byte{names[victim]: want[names[victim]]}, "after the redaction")
}
