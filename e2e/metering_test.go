package e2e_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/sidecar"
)

// TestRangesAreMeteredBeforeTheyComplete: a file read in ranges bills its
// bytes once and one sample (the range that starts it); an If-Range that
// does not match gets the whole object; every range is in the registry.
func TestRangesAreMeteredBeforeTheyComplete(t *testing.T) {
	e := newEnv(t, envOpt{})
	data := randomBytes(t, 10000)
	e.put("r.bin", data, true)
	sc := e.sidecar(nil)
	u := sc.URL() + "/v1/contracts/" + e.c.ContractID + "/objects/r.bin"
	var got []byte
	for _, rng := range []string{"bytes=0-3999", "bytes=4000-7999", "bytes=8000-"} {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("Range", rng)
		req.Header.Set("X-Provgate-Job", "ranges")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusPartialContent {
			t.Fatalf("%s: %d", rng, resp.StatusCode)
		}
		got = append(got, b...)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("ranges reassembled %d bytes, not the object", len(got))
	}
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Range", "bytes=0-9")
	req.Header.Set("If-Range", `"not-the-etag"`)
	req.Header.Set("X-Provgate-Job", "ranges")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	whole, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(whole, data) {
		t.Fatalf("If-Range mismatch: %d, %d bytes; want the whole object", resp.StatusCode, len(whole))
	}
	req.Header.Del("If-Range")
	req.Header.Set("Range", "bytes=20000-")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("range past the end: %d, want 416", resp.StatusCode)
	}
	drain(t, sc, e.c.ContractID)
	tot, err := e.client.MeteringTotals(context.Background(), e.c.ContractID, "ranges", -1)
	if err != nil {
		t.Fatal(err)
	}
	// Three ranges plus the whole object: 4 accesses, 20000 bytes, and two
	// samples billed (the range from byte 0, and the whole object).
	if tot.AccessEvents != 4 || tot.AccessBytes != 20000 || tot.CostNanoUSD != 2*500_000 {
		t.Errorf("registry: %d accesses, %d bytes, %d nano-USD; want 4, 20000, %d", tot.AccessEvents, tot.AccessBytes, tot.CostNanoUSD, 2*500_000)
	}
}

// TestBatchReservesTheQuotaAndMetersEmptyObjects: a batch cannot read past
// the quota (the frames beyond it say 403), and an empty object in a batch
// is metered like any other.
func TestBatchReservesTheQuotaAndMetersEmptyObjects(t *testing.T) {
	e := newEnv(t, envOpt{})
	names := []string{"b/empty", "b/1", "b/2", "b/3", "b/4"}
	for i, n := range names {
		e.put(n, bytes.Repeat([]byte{'x'}, i*10), false)
	}
	sc := e.sidecar(func(c *sidecar.Config) { c.Quota = contract.Quota{MaxSamples: 3} })
	body, _ := json.Marshal(map[string][]string{"names": names})
	req, _ := http.NewRequest(http.MethodPost, sc.URL()+"/v1/contracts/"+e.c.ContractID+"/batch", bytes.NewReader(body))
	req.Header.Set("X-Provgate-Job", "batchq")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	frames := parseFrames(t, resp)
	var statuses []string
	for _, f := range frames {
		statuses = append(statuses, fmt.Sprintf("%s:%d", f.name, f.status))
	}
	if got := strings.Join(statuses, " "); got != "b/empty:200 b/1:200 b/2:200 b/3:403 b/4:403" {
		t.Fatalf("frames with a quota of 3 samples: %s", got)
	}
	drain(t, sc, e.c.ContractID)
	tot, err := e.client.MeteringTotals(context.Background(), e.c.ContractID, "batchq", -1)
	if err != nil {
		t.Fatal(err)
	}
	if tot.AccessEvents != 3 || tot.AccessBytes != 30 {
		t.Errorf("registry: %d accesses / %d bytes, want 3 / 30 (the empty object counts)", tot.AccessEvents, tot.AccessBytes)
	}
}

type frame struct {
	name   string
	status int
	body   []byte
}

// parseFrames reads a whole batch response and splits it into frames,
// failing on any truncation or trailing byte.
func parseFrames(t testing.TB, resp *http.Response) []frame {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("batch: %d %v %s", resp.StatusCode, err, b)
	}
	var out []frame
	for len(b) > 0 {
		if len(b) < 4 {
			t.Fatalf("truncated frame header")
		}
		nl := int(binary.BigEndian.Uint32(b))
		if len(b) < 4+nl+10 {
			t.Fatalf("truncated frame")
		}
		name := string(b[4 : 4+nl])
		b = b[4+nl:]
		st := int(binary.BigEndian.Uint16(b))
		size := binary.BigEndian.Uint64(b[2:10])
		b = b[10:]
		if uint64(len(b)) < size {
			t.Fatalf("frame %q: body of %d bytes, %d left", name, size, len(b))
		}
		out = append(out, frame{name: name, status: st, body: b[:size]})
		b = b[size:]
	}
	return out
}

// TestForwardProxyLocalToken: with a local token, a CONNECT without it is
// refused, and one with it reaches the verified object over HTTPS.
func TestForwardProxyLocalToken(t *testing.T) {
	e := newEnv(t, envOpt{})
	data := randomBytes(t, 500)
	e.put("p.bin", data, false)
	sc := e.sidecar(func(c *sidecar.Config) { c.LocalToken = "s3cret-local-token" })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(exportCA(t, sc))
	target := "https://" + strings.TrimPrefix(e.minio.URL(), "http://") + "/" + e.bucket + "/" + e.c.Origin.Key("p.bin")
	client := func(token string) *http.Client {
		pu, _ := url.Parse("http://" + sc.ProxyAddr())
		tr := &http.Transport{Proxy: http.ProxyURL(pu), TLSClientConfig: &tls.Config{RootCAs: pool}}
		if token != "" {
			tr.ProxyConnectHeader = http.Header{"Proxy-Authorization": {"Bearer " + token}}
		}
		return &http.Client{Transport: tr}
	}
	if resp, err := client("").Get(target); err == nil {
		resp.Body.Close()
		t.Fatalf("CONNECT without the local token: %d, want refused", resp.StatusCode)
	}
	if resp, err := client("wrong").Get(target); err == nil {
		resp.Body.Close()
		t.Fatalf("CONNECT with a wrong token: %d, want refused", resp.StatusCode)
	}
	resp, err := client("s3cret-local-token").Get(target)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(b, data) {
		t.Fatalf("with the token: %d, %d bytes", resp.StatusCode, len(b))
	}
}

// TestForwardProxyAllowlist: hosts that are not the origin pass only when
// allowlisted (a live loopback server stands in for them, so a wrongly
// allowed request would get its 200); everything else gets a 403 with a
// JSON error; an allowlist that covers the origin host is refused at start.
func TestForwardProxyAllowlist(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.put("x.bin", []byte("x"), false)
	allowed := strings.TrimPrefix(e.front.URL(), "http://")
	sc := e.sidecar(func(c *sidecar.Config) { c.AllowHosts = []string{allowed} })
	pu, _ := url.Parse("http://" + sc.ProxyAddr())
	pc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
	resp, err := pc.Get(e.front.URL() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("allowlisted host: %d, want the registry's 200", resp.StatusCode)
	}
	resp, err = pc.Get(e.reg.URL + "/healthz") // same machine, another port: not listed
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || errorCode(b) != contract.CodeForbidden {
		t.Fatalf("unlisted host: %d %s, want 403 %s", resp.StatusCode, b, contract.CodeForbidden)
	}
	// HTTPS to an unlisted host: the CONNECT itself is refused.
	if resp, err := pc.Get("https://" + strings.TrimPrefix(e.reg.URL, "http://") + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatalf("CONNECT to an unlisted host went through: %d", resp.StatusCode)
	}
	origin := strings.TrimPrefix(e.minio.URL(), "http://")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if bad, err := sidecar.Start(ctx, sidecar.Config{Registry: e.front.URL(), Contracts: []string{e.c.ContractID},
		StateDir: t.TempDir(), CacheDir: t.TempDir(), CacheSize: 1 << 20, Listen: "127.0.0.1:0", ProxyListen: "127.0.0.1:0",
		S3Endpoint: e.minio.URL(), AllowHosts: []string{origin}}); err == nil {
		bad.Shutdown(ctx)
		t.Fatal("a sidecar whose allowlist covers the origin host started")
	}
}

// TestSidecarAlarmsWhenRegistryCountsLess: a registry that acknowledges
// the sidecar's metering but counts less than it was sent (here: half the
// cost) raises the alarm where an operator looks: an error log, the
// provgate_ledger_sync_disputes_total counter and the contract's detail in
// /readyz; the reads themselves go on.
func TestSidecarAlarmsWhenRegistryCountsLess(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.put("a.bin", randomBytes(t, 1000), false)
	sc := e.sidecar(nil)
	lie := func(r *contract.MeteringResponse) { r.Counted.CostNanoUSD /= 2 }
	e.front.lie.Store(&lie)
	if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "a.bin", 1, "lied"); code != http.StatusOK {
		t.Fatalf("GET: %d", code)
	}
	drain(t, sc, e.c.ContractID)

	if ready := readyzDisputes(t, sc.URL()); len(ready) != 1 || ready[0].MeteringDisputes != 1 || !strings.Contains(ready[0].MeteringDispute, "counted") {
		t.Errorf("/readyz contracts = %+v, want one metering dispute with its detail", ready)
	}
	resp, err := http.Get(sc.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "provgate_ledger_sync_disputes_total 1\n") {
		t.Errorf("/metrics has no provgate_ledger_sync_disputes_total 1:\n%s", grepLines(string(metrics), "dispute"))
	}
	// The rows are kept: the ledger still holds the disputed read.
	tot, err := sc.Ledger().Totals(context.Background(), e.c.ContractID, false)
	if err != nil || tot.AccessEvents != 1 {
		t.Errorf("ledger totals %+v, %v; want the disputed read kept", tot, err)
	}
}

// A registry (here a front rewriting its answers) whose receipt does not
// prove the batch has it refused: the sidecar raises the dispute alarm on
// /readyz and /metrics.
func TestSidecarRefusesBadReceipt(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.put("a.bin", randomBytes(t, 1000), false)
	sc := e.sidecar(nil)
	lie := func(r *contract.MeteringResponse) {
		if r.Receipt != nil {
			r.Receipt.Leaf = bytes.Repeat([]byte{7}, 32)
		}
	}
	e.front.lie.Store(&lie)
	if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "a.bin", 1, "lied"); code != http.StatusOK {
		t.Fatalf("GET: %d", code)
	}
	drain(t, sc, e.c.ContractID)
	if ready := readyzDisputes(t, sc.URL()); len(ready) != 1 || ready[0].MeteringDisputes != 1 || !strings.Contains(ready[0].MeteringDispute, "metering receipt refused") {
		t.Errorf("/readyz contracts = %+v, want one dispute: the receipt refused", ready)
	}
	if rs, err := sc.Ledger().Receipts(context.Background(), e.c.ContractID); err != nil || len(rs) != 0 {
		t.Errorf("%d receipts stored (%v), want none", len(rs), err)
	}
}

// contractDisputes is a contract's metering dispute state on /readyz.
type contractDisputes struct {
	MeteringDisputes int64  `json:"metering_disputes"`
	MeteringDispute  string `json:"metering_dispute"`
}

// readyzDisputes reads the dispute state of every contract from /readyz.
func readyzDisputes(t *testing.T, base string) []contractDisputes {
	t.Helper()
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ready struct{ Contracts []contractDisputes }
	if err := json.NewDecoder(resp.Body).Decode(&ready); err != nil {
		t.Fatal(err)
	}
	return ready.Contracts
}

func grepLines(s, word string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, word) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
