package registry_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
)

// maxAttestation is a valid contribution of name whose JWS is as large as
// the registry accepts (within a few bytes), padded in its license.
func maxAttestation(t *testing.T, c *registrytest.Contributor, id, name string) string {
	t.Helper()
	o := registrytest.Object(name, []byte(name))
	pad := contract.MaxAttestationSize*3/4 - 1024
	for {
		o.License = strings.Repeat("x", pad)
		jws := c.Sign(t, id, &contract.Attestation{Type: contract.Contribution, Object: &o})
		if over := len(jws) - contract.MaxAttestationSize; over > 0 {
			pad -= over*3/4 + 4
			continue
		}
		if len(jws) < contract.MaxAttestationSize-64 {
			pad += (contract.MaxAttestationSize - len(jws)) * 3 / 4
			continue
		}
		return jws
	}
}

// An attestation larger than contract.MaxAttestationSize is refused with
// 413, the limit in the message, and nothing is appended.
func TestGiantAttestationRefused(t *testing.T) {
	h, alice, c := setup(t)
	o := registrytest.Object("giant.txt", []byte("giant"))
	o.License = strings.Repeat("x", 240<<10)
	jws := alice.Sign(t, c.ContractID, &contract.Attestation{Type: contract.Contribution, Object: &o})
	mustRefuse(t, h, c.ContractID, jws, http.StatusRequestEntityTooLarge, contract.CodeTooLarge)
	_, err := h.Client.AppendAttestation(context.Background(), c.ContractID, jws)
	if !strings.Contains(err.Error(), strconv.Itoa(contract.MaxAttestationSize)) {
		t.Fatalf("error %q does not give the limit %d", err, contract.MaxAttestationSize)
	}
	// The largest accepted one goes in.
	alice.Append(t, c.ContractID, maxAttestation(t, alice, c.ContractID, "max.txt"))
}

// A log of maximal entries stays readable: pages are bounded in bytes as
// well as in count, and a client that asks for the largest page gets what
// fits and follows on, never more than it can read.
func TestLogOfMaximalEntriesIsReadable(t *testing.T) {
	const pageBytes = 256 << 10
	h := registrytest.Start(t, registrytest.WithConfig(func(c *registry.Config) {
		c.MaxPageBytes = pageBytes
		c.SyncNormalUnsafe = true
	}))
	alice := h.NewContributor(t, "did:example:alice")
	id := h.CreateContract(t, registrytest.NewContract("did:example:big", "bucket", alice)).ContractID
	const n = 24
	for i := range n {
		alice.Append(t, id, maxAttestation(t, alice, id, fmt.Sprintf("big/%02d.txt", i)))
	}
	client, err := contract.NewClient(h.URL)
	if err != nil {
		t.Fatal(err)
	}
	// A client that reads no more than twice the server's page bound.
	client.MaxResponseBytes = 2 * pageBytes
	var since uint64
	pages := 0
	for since < n {
		page, err := client.Events(context.Background(), id, since, contract.MaxEventsLimit)
		if err != nil {
			t.Fatalf("page after %d: %v", since, err)
		}
		if len(page.Entries) == 0 {
			t.Fatalf("empty page after %d", since)
		}
		bytes := 0
		for _, we := range page.Entries {
			if we.Seq != since+1 {
				t.Fatalf("got seq %d after %d", we.Seq, since)
			}
			since = we.Seq
			bytes += len(we.Entry)
		}
		if len(page.Entries) > 1 && bytes > pageBytes {
			t.Fatalf("page of %d entries holds %d bytes, over the bound %d", len(page.Entries), bytes, pageBytes)
		}
		pages++
	}
	if pages < n*contract.MaxAttestationSize/pageBytes {
		t.Fatalf("%d pages for %d maximal entries: pages are not bounded in bytes", pages, n)
	}
}

// openStream opens the live feed from a local address and returns the
// response (the caller closes its body).
func openStream(t *testing.T, url, id, from string) (*http.Response, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
	req, _ := http.NewRequest(http.MethodGet, url+"/provenance/"+id+"/events/stream", nil)
	return hc.Do(req)
}

func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(fds)
}

// A flood of live-feed connections is refused past the bound per client
// address (429) and in total (503); file descriptors stay bounded, and a
// closed stream frees its place.
func TestStreamFloodBounded(t *testing.T) {
	h := registrytest.Start(t, registrytest.WithConfig(func(c *registry.Config) {
		c.MaxStreams = 6
		c.MaxStreamsPerClient = 3
	}))
	alice := h.NewContributor(t, "did:example:alice")
	id := h.CreateContract(t, registrytest.NewContract("did:example:flood", "bucket", alice)).ContractID
	before := openFDs(t)
	var open []*http.Response
	t.Cleanup(func() {
		for _, r := range open {
			r.Body.Close()
		}
	})
	refused := map[int]int{}
	for _, from := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"} {
		for range 100 {
			resp, err := openStream(t, h.URL, id, from)
			if err != nil {
				t.Fatalf("stream from %s: %v", from, err)
			}
			if resp.StatusCode == http.StatusOK {
				open = append(open, resp)
				continue
			}
			refused[resp.StatusCode]++
			if resp.Header.Get("Retry-After") == "" {
				t.Errorf("%d without Retry-After", resp.StatusCode)
			}
			resp.Body.Close()
		}
	}
	if len(open) != 6 || refused[http.StatusTooManyRequests] != 2*97 || refused[http.StatusServiceUnavailable] != 100 {
		t.Fatalf("%d streams open, refused %v; want 6 open, 194 x 429 (3 per address), 100 x 503 (6 in all)", len(open), refused)
	}
	// Each open stream costs two fds here (client and server side).
	if grown := openFDs(t) - before; grown > 2*6+10 {
		t.Fatalf("fds grew by %d under a flood of 300 streams", grown)
	}
	open[0].Body.Close()
	open = open[1:]
	waitUntil(t, "a freed place", func() bool {
		resp, err := openStream(t, h.URL, id, "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusOK {
			open = append(open, resp)
			return true
		}
		resp.Body.Close()
		return false
	})
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
