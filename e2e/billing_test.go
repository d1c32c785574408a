package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/tokenize"
)

// samplePrice is registrytest.NewContract's price per sample, in nano-USD.
const samplePrice = 500_000

// rangeGet reads one range of an object; it returns the status and body.
func rangeGet(t testing.TB, u, rng, job string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Range", rng)
	req.Header.Set("X-Provgate-Job", job)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", rng, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read: %v", rng, err)
	}
	return resp.StatusCode, b
}

// totals waits until the registry has n access events of job, then
// returns its totals.
func totals(t testing.TB, e *env, sc *sidecar.Sidecar, job string, n int64) *contract.MeteringTotals {
	t.Helper()
	var tot *contract.MeteringTotals
	waitFor(t, fmt.Sprintf("%d access events of job %q at the registry", n, job), 30*time.Second, func() bool {
		sc.SyncNow(context.Background())
		var err error
		tot, err = e.client.MeteringTotals(context.Background(), e.c.ContractID, job, -1)
		if err != nil {
			t.Fatal(err)
		}
		return tot.AccessEvents >= n && sc.Ledger().OutboxDepth(e.c.ContractID) == 0
	})
	return tot
}

// TestRangeFromOffsetOneBillsASample: a range that skips byte 0 still
// opens a pass over the object and bills its sample; ranging the rest of
// it in the same pass bills bytes only; asking for a byte again opens a
// new pass.
func TestRangeFromOffsetOneBillsASample(t *testing.T) {
	e := newEnv(t, envOpt{})
	data := randomBytes(t, 10000)
	e.put("o.bin", data, true)
	sc := e.sidecar(nil)
	u := sc.URL() + "/v1/contracts/" + e.c.ContractID + "/objects/o.bin"
	code, b := rangeGet(t, u, "bytes=1-", "off1")
	if code != http.StatusPartialContent || !bytes.Equal(b, data[1:]) {
		t.Fatalf("bytes=1-: %d, %d bytes", code, len(b))
	}
	tot := totals(t, e, sc, "off1", 1)
	if tot.Units != 1 || tot.CostNanoUSD != samplePrice || tot.AccessBytes != 9999 {
		t.Fatalf("bytes=1- billed %d units, %d nano-USD, %d bytes; want 1 sample (%d), 9999 bytes", tot.Units, tot.CostNanoUSD, tot.AccessBytes, samplePrice)
	}
	// Byte 0 completes the same pass: bytes only.
	if code, b := rangeGet(t, u, "bytes=0-0", "off1"); code != http.StatusPartialContent || !bytes.Equal(b, data[:1]) {
		t.Fatalf("bytes=0-0: %d, %d bytes", code, len(b))
	}
	// Byte 5 again: a second pass, a second sample.
	if code, _ := rangeGet(t, u, "bytes=5-5", "off1"); code != http.StatusPartialContent {
		t.Fatalf("bytes=5-5: %d", code)
	}
	// A suffix range from another job is its own pass.
	if code, _ := rangeGet(t, u, "bytes=-10", "off1-other"); code != http.StatusPartialContent {
		t.Fatalf("bytes=-10: %d", code)
	}
	tot = totals(t, e, sc, "off1", 3)
	if tot.Units != 2 || tot.CostNanoUSD != 2*samplePrice || tot.AccessBytes != 10001 {
		t.Errorf("job off1: %d units, %d nano-USD, %d bytes; want 2 samples, 10001 bytes", tot.Units, tot.CostNanoUSD, tot.AccessBytes)
	}
	if tot := totals(t, e, sc, "off1-other", 1); tot.Units != 1 {
		t.Errorf("job off1-other: %d units, want 1", tot.Units)
	}
}

// TestAbortThenRangeTheRestBillsTheObject: reading most of an object,
// resetting the connection, then ranging the rest used to rebuild the
// object for nothing. The aborted response bills the bytes it sent and the
// sample of the pass it opened; the registry sees at least one sample and
// at least the object's size in bytes.
func TestAbortThenRangeTheRestBillsTheObject(t *testing.T) {
	e := newEnv(t, envOpt{})
	const size = 16 << 20
	data := randomBytes(t, size)
	e.put("big.bin", data, false)
	sc := e.sidecar(nil)
	u := sc.URL() + "/v1/contracts/" + e.c.ContractID + "/objects/big.bin"
	// Warm the cache under another job, so the abort below is a hit.
	if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "big.bin", 0, "warm"); code != http.StatusOK {
		t.Fatalf("warm: %d", code)
	}
	hc := &http.Client{Transport: &http.Transport{}}
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("X-Provgate-Job", "abort")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 12<<20)
	if _, err := io.ReadFull(resp.Body, got); err != nil {
		t.Fatalf("reading most of the object: %v", err)
	}
	resp.Body.Close() // before the end: the connection is reset
	hc.CloseIdleConnections()
	code, rest := rangeGet(t, u, fmt.Sprintf("bytes=%d-", len(got)), "abort")
	if code != http.StatusPartialContent || !bytes.Equal(append(got, rest...), data) {
		t.Fatalf("the rest: %d, %d bytes; the pieces do not rebuild the object", code, len(rest))
	}
	tot := totals(t, e, sc, "abort", 2)
	// The server may have sent more than the client read before it saw the
	// reset; the range then repeats bytes and opens a second pass.
	if tot.Units < 1 || tot.Units > 2 || tot.CostNanoUSD != tot.Units*samplePrice || tot.AccessBytes < size {
		t.Errorf("read most, abort, range the rest: %d units, %d nano-USD, %d bytes; want 1 or 2 samples and at least %d bytes",
			tot.Units, tot.CostNanoUSD, tot.AccessBytes, size)
	}
}

// TestConcurrentGetsCannotOverrunTheQuota: with 16 samples left on the
// lease, 30 parallel GETs of a large object get exactly 16 answers of 200
// (the quota is reserved as it is checked), the rest 403, and the
// registry bills exactly the 16.
func TestConcurrentGetsCannotOverrunTheQuota(t *testing.T) {
	for _, mode := range []string{contract.ModeSelfHosted, contract.ModeMarketplace} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, envOpt{})
			const size = 4 << 20
			data := randomBytes(t, size)
			e.put("q.bin", data, false)
			sc := e.sidecar(func(c *sidecar.Config) {
				c.Quota = contract.Quota{MaxSamples: 20}
				if mode == contract.ModeMarketplace {
					c.S3Endpoint, c.ProxyListen = "", ""
				}
			})
			for i := range 4 { // 16 samples left
				if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "q.bin", int64(i), "spent"); code != http.StatusOK {
					t.Fatalf("read %d: %d", i, code)
				}
			}
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 30}}
			var mu sync.Mutex
			codes := map[int]int{}
			var wg sync.WaitGroup
			for i := range 30 {
				wg.Go(func() {
					req, _ := http.NewRequest(http.MethodGet, sc.URL()+"/v1/contracts/"+e.c.ContractID+"/objects/q.bin", nil)
					req.Header.Set("X-Provgate-Job", "overrun")
					req.Header.Set("X-Provgate-Epoch", fmt.Sprint(i))
					resp, err := hc.Do(req)
					if err != nil {
						t.Error(err)
						return
					}
					defer resp.Body.Close()
					b, err := io.ReadAll(resp.Body)
					if err != nil || (resp.StatusCode == http.StatusOK && !bytes.Equal(b, data)) {
						t.Errorf("GET: %d, %d bytes, %v", resp.StatusCode, len(b), err)
					}
					mu.Lock()
					codes[resp.StatusCode]++
					mu.Unlock()
				})
			}
			wg.Wait()
			if codes[http.StatusOK] != 16 || codes[http.StatusForbidden] != 14 {
				t.Errorf("30 parallel GETs with 16 samples left: %v; want 16 × 200, 14 × 403", codes)
			}
			tot := totals(t, e, sc, "overrun", int64(codes[http.StatusOK]))
			if tot.Units != int64(codes[http.StatusOK]) || tot.AccessBytes != int64(codes[http.StatusOK])*size {
				t.Errorf("registry: %d units, %d bytes for %d responses of 200", tot.Units, tot.AccessBytes, codes[http.StatusOK])
			}
		})
	}
}

// putText stores text and attests it with its whitespace-v1 token count
// plus lie (a contributor overstating it).
func (e *env) putText(name, text string, lie int64) {
	e.t.Helper()
	obj := registrytest.Object(name, []byte(text))
	n, err := tokenize.Count(tokenize.Whitespace, strings.NewReader(text))
	if err != nil {
		e.t.Fatal(err)
	}
	obj.Tokens = n + lie
	e.putRaw(name, []byte(text))
	e.alice.Attest(e.t, e.c.ContractID, obj)
}

// TestTokenUnitBillsAttestedCounts: a contract priced per token bills each
// pass over an object its attested token count (which the sidecar counts
// again as it verifies the bytes); an overstated count is a verification
// failure (502, not cached, not billed); a token contract whose tokenizer
// is unknown is refused at creation.
func TestTokenUnitBillsAttestedCounts(t *testing.T) {
	const perToken = 1000 // nano-USD
	e := newEnv(t, envOpt{contract: func(c *contract.Contract) {
		c.Pricing = contract.Pricing{Unit: contract.UnitToken, PriceUSD: perToken / 1e9, Tokenizer: tokenize.Whitespace}
	}})
	e.putText("t/a.txt", "the quick brown fox", 0)                // 4
	e.putText("t/b.txt", "  jumps\tover\n the\u00a0lazy dog ", 0) // 5
	e.putText("t/lie.txt", "two words", 1)
	sc := e.sidecar(nil)
	for _, name := range []string{"t/a.txt", "t/b.txt", "t/a.txt"} {
		if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, name, 0, "tok"); code != http.StatusOK {
			t.Fatalf("%s: %d", name, code)
		}
	}
	// A range from offset 1 opens a pass too: all of b's tokens.
	if code, _ := rangeGet(t, sc.URL()+"/v1/contracts/"+e.c.ContractID+"/objects/t/b.txt", "bytes=1-", "tok"); code != http.StatusPartialContent {
		t.Fatalf("range of b: %d", code)
	}
	if code, b := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "t/lie.txt", 0, "tok"); code != http.StatusBadGateway || errorCode(b) != contract.CodeVerification {
		t.Errorf("object with an overstated token count: %d %s, want 502 %s", code, b, contract.CodeVerification)
	}
	tot := totals(t, e, sc, "tok", 4)
	if want := int64(4 + 5 + 4 + 5); tot.Units != want || tot.CostNanoUSD != want*perToken {
		t.Errorf("registry: %d units, %d nano-USD; want %d tokens, %d", tot.Units, tot.CostNanoUSD, want, want*perToken)
	}
	// The same bytes attested again with an overstated count: a new
	// version purges the cached copy, so it is fetched and counted again
	// under the new claim, which fails.
	e.putText("t/a.txt", "the quick brown fox", 7)
	waitFor(t, "the overstated re-attestation to be refused", 15*time.Second, func() bool {
		code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "t/a.txt", 9, "tok-again")
		return code == http.StatusBadGateway
	})
	// The registry refuses a token unit it cannot bill.
	for _, p := range []contract.Pricing{{Unit: contract.UnitToken, PriceUSD: 1e-6}, {Unit: contract.UnitToken, PriceUSD: 1e-6, Tokenizer: "bpe-unknown"}} {
		c := registrytest.NewContract("did:example:unbillable-"+p.Tokenizer, e.bucket, e.alice)
		c.Pricing = p
		if _, err := e.reg.Client.CreateContract(context.Background(), e.reg.AdminToken, c); contract.StatusOf(err) != http.StatusBadRequest {
			t.Errorf("creating a contract priced per token with tokenizer %q: %v, want 400", p.Tokenizer, err)
		}
	}
}

// TestEveryPathBillsByThePassRule: HEAD and If-None-Match bill nothing; a
// range from offset 1 through the S3 facade bills a sample like one on the
// data endpoint; with stream-while-fetching, a client that goes away
// mid-stream is billed the bytes it was sent and the pass's sample.
func TestEveryPathBillsByThePassRule(t *testing.T) {
	e := newEnv(t, envOpt{})
	small := randomBytes(t, 5000)
	e.put("p/small.bin", small, false)
	big := randomBytes(t, 24<<20)
	e.put("p/big.bin", big, true)
	sc := e.sidecar(func(c *sidecar.Config) { c.StreamWhileFetching = true })
	u := sc.URL() + "/v1/contracts/" + e.c.ContractID + "/objects/p/small.bin"
	do := func(method, url string, hdr map[string]string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, url, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := do(http.MethodHead, u, map[string]string{"X-Provgate-Job": "free"}); resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD: %d", resp.StatusCode)
	}
	if resp := do(http.MethodGet, u, map[string]string{"X-Provgate-Job": "free", "If-None-Match": `"` + sha(small) + `"`}); resp.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match: %d", resp.StatusCode)
	}
	// Through the S3 facade, path-style: the contract's bucket and key.
	s3u := sc.URL() + "/s3/" + e.bucket + "/" + e.c.Origin.Key("p/small.bin")
	if resp := do(http.MethodGet, s3u, map[string]string{"X-Provgate-Job": "facade", "Range": "bytes=1-"}); resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("facade range: %d", resp.StatusCode)
	}
	// Stream-while-fetching, cut short by the client.
	hc := &http.Client{Transport: &http.Transport{}}
	req, _ := http.NewRequest(http.MethodGet, sc.URL()+"/v1/contracts/"+e.c.ContractID+"/objects/p/big.bin", nil)
	req.Header.Set("X-Provgate-Job", "stream-abort")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	hc.CloseIdleConnections()

	if tot := totals(t, e, sc, "facade", 1); tot.Units != 1 || tot.AccessBytes != 4999 {
		t.Errorf("facade bytes=1-: %d units, %d bytes; want 1 sample, 4999 bytes", tot.Units, tot.AccessBytes)
	}
	if tot := totals(t, e, sc, "stream-abort", 1); tot.Units != 1 || tot.AccessBytes < 1<<20 || tot.AccessBytes >= int64(len(big)) {
		t.Errorf("stream cut short: %d units, %d bytes; want 1 sample and the bytes sent", tot.Units, tot.AccessBytes)
	}
	tot, err := e.client.MeteringTotals(context.Background(), e.c.ContractID, "free", -1)
	if err != nil {
		t.Fatal(err)
	}
	if tot.AccessEvents != 0 || tot.Units != 0 {
		t.Errorf("HEAD and 304: %d accesses, %d units; want none", tot.AccessEvents, tot.Units)
	}
}

// TestBatchCutShortBillsWhatItSent: a batch read that the client resets in
// the middle of a frame bills the frames it completed and, for the frame
// it cut, the bytes sent and its sample.
func TestBatchCutShortBillsWhatItSent(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.put("bc/small", []byte("0123456789"), false)
	e.put("bc/big", randomBytes(t, 24<<20), false)
	sc := e.sidecar(nil)
	// Warm the cache, so that the batch below streams at once.
	for _, n := range []string{"bc/small", "bc/big"} {
		if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, n, 0, "warm"); code != http.StatusOK {
			t.Fatalf("warm %s: %d", n, code)
		}
	}
	body := `{"names": ["bc/small", "bc/big"]}`
	req, _ := http.NewRequest(http.MethodPost, sc.URL()+"/v1/contracts/"+e.c.ContractID+"/batch", strings.NewReader(body))
	req.Header.Set("X-Provgate-Job", "batch-cut")
	hc := &http.Client{Transport: &http.Transport{}}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	hc.CloseIdleConnections()
	tot := totals(t, e, sc, "batch-cut", 2)
	if tot.AccessEvents != 2 || tot.Units != 2 || tot.AccessBytes < 1<<20 || tot.AccessBytes >= 24<<20 {
		t.Errorf("batch cut in its second frame: %d accesses, %d units, %d bytes; want 2 accesses, 2 samples, the bytes sent", tot.AccessEvents, tot.Units, tot.AccessBytes)
	}
}
