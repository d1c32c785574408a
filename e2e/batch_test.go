package e2e_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry/registrytest"
)

// TestBatchEndToEnd: objects contributed in one batch attestation are
// served by the sidecar, verified; redacting one name of the batch makes
// only that name 451. A registry that serves another manifest than the one
// signed gets none of a new batch's names served (404) while the rest
// goes on being served; once it serves the signed bytes, they are.
func TestBatchEndToEnd(t *testing.T) {
	e := newEnv(t, envOpt{})
	// A loopback proxy between the front and the registry that can serve
	// tampered manifests.
	target, _ := url.Parse(e.reg.URL)
	var tamper atomic.Bool
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(r *http.Response) error {
		if !tamper.Load() || !strings.Contains(r.Request.URL.Path, "/manifests/") || r.StatusCode != http.StatusOK {
			return nil
		}
		b, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			return err
		}
		// Same size, one name's digest changed: what a registry would do
		// to slip other bytes in.
		i := bytes.Index(b, []byte(`"decoded_sha256":"`)) + len(`"decoded_sha256":"`)
		b[i] ^= 1
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.Header.Set("Content-Length", strconv.Itoa(len(b)))
		return nil
	}
	mid := httptest.NewServer(rp)
	// Closed after the sidecar (cleanups run last first): Close waits for
	// the sidecar's live feed through it to end.
	t.Cleanup(mid.Close)
	e.front.point(mid.URL)

	data := map[string][]byte{}
	batch := func(prefix string, n int) []contract.ObjectClaim {
		var objs []contract.ObjectClaim
		for i := range n {
			name := fmt.Sprintf("%s/%03d.bin", prefix, i)
			data[name] = randomBytes(t, 1024+i)
			e.putRaw(name, data[name])
			objs = append(objs, registrytest.Object(name, data[name]))
		}
		return objs
	}
	seq := e.alice.AttestBatch(t, e.c.ContractID, batch("a", 20))
	sc := e.sidecar(nil)
	id := e.c.ContractID
	hc := &http.Client{Timeout: 30 * time.Second}
	for i := range 20 {
		name := fmt.Sprintf("a/%03d.bin", i)
		if code, b := get(t, hc, sc.URL(), id, name, 1, "batch"); code != http.StatusOK || !bytes.Equal(b, data[name]) {
			t.Fatalf("GET %s: %d (%d bytes), want 200 and its bytes", name, code, len(b))
		}
	}

	e.alice.Append(t, id, e.alice.Sign(t, id, &contract.Attestation{Type: contract.Redaction,
		Redaction: &contract.RedactionClaim{Name: "a/007.bin", Seq: seq, Reason: "erasure request"}}))
	waitFor(t, "a/007.bin to be redacted", 10*time.Second, func() bool {
		code, _ := get(t, hc, sc.URL(), id, "a/007.bin", 1, "batch")
		return code == http.StatusUnavailableForLegalReasons
	})
	for _, name := range []string{"a/006.bin", "a/008.bin"} {
		if code, _ := get(t, hc, sc.URL(), id, name, 1, "batch"); code != http.StatusOK {
			t.Fatalf("GET %s after redacting a/007.bin: %d, want 200", name, code)
		}
	}

	tamper.Store(true)
	e.alice.AttestBatch(t, id, batch("b", 5))
	time.Sleep(time.Second) // several polls
	if code, b := get(t, hc, sc.URL(), id, "b/000.bin", 1, "batch"); code != http.StatusNotFound {
		t.Fatalf("GET b/000.bin with a tampered manifest: %d %s, want 404", code, b)
	}
	if code, _ := get(t, hc, sc.URL(), id, "a/001.bin", 1, "batch"); code != http.StatusOK {
		t.Fatalf("GET a/001.bin while the manifest is tampered: %d, want 200", code)
	}
	tamper.Store(false)
	waitFor(t, "b/000.bin to be served", 15*time.Second, func() bool {
		code, _ := get(t, hc, sc.URL(), id, "b/000.bin", 1, "batch")
		return code == http.StatusOK
	})
}
