package e2e_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	_ "github.com/mattn/go-sqlite3"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// TestLicenseesQuotasAreTheirOwn runs two licensees with two marketplace
// sidecars each, every sidecar asking for a slice of its licensee's quota
// and reading every object: each sidecar's clients receive exactly its
// slice, the registry presigns exactly what they received per licensee,
// and one licensee spending everything leaves the other's quota whole.
func TestLicenseesQuotasAreTheirOwn(t *testing.T) {
	acme := registrytest.NewLicensee(t, "did:example:acme", contract.LicenseTerms{MaxSamples: 6})
	globex := registrytest.NewLicensee(t, "did:example:globex", contract.LicenseTerms{MaxSamples: 4})
	e := newEnv(t, envOpt{contract: func(c *contract.Contract) {
		c.Licensees = []contract.Licensee{acme.Entry(), globex.Entry()}
	}})
	const objects = 12
	for i := range objects {
		e.put(fmt.Sprintf("l/%02d.bin", i), randomBytes(t, 1000+i), i%2 == 0)
	}
	start := func(l *registrytest.Licensee, slice int64) *sidecar.Sidecar {
		k, err := verify.GenerateKey(jose.EdDSA)
		if err != nil {
			t.Fatal(err)
		}
		return e.sidecar(func(c *sidecar.Config) {
			c.S3Endpoint, c.ProxyListen = "", ""
			c.Key, c.Enrolments = k, []string{l.Enrol(t, e.c.ContractID, k)}
			c.Quota = contract.Quota{MaxSamples: slice}
		})
	}
	// readAll reads every object through each sidecar at once and returns
	// how many each one served.
	var all []*sidecar.Sidecar
	received := map[string]int64{} // bytes per licensee
	var mu sync.Mutex
	readAll := func(lic string, scs ...*sidecar.Sidecar) []int64 {
		all = append(all, scs...)
		served := make([]int64, len(scs))
		var wg sync.WaitGroup
		for i, sc := range scs {
			wg.Go(func() {
				for j := range objects {
					code, body := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, fmt.Sprintf("l/%02d.bin", j), 1, "job")
					switch {
					case code == http.StatusOK:
						served[i]++
						mu.Lock()
						received[lic] += int64(len(body))
						mu.Unlock()
					case code != http.StatusForbidden || errorCode(body) != contract.CodeQuotaExceeded:
						t.Errorf("sidecar %d, object %d: %d %s, want 200 or 403 %s", i, j, code, body, contract.CodeQuotaExceeded)
					}
				}
			})
		}
		wg.Wait()
		return served
	}
	a := readAll(acme.ID, start(acme, 3), start(acme, 3))
	if a[0] != 3 || a[1] != 3 {
		t.Fatalf("acme's sidecars served %v objects, want 3 each (their slices of acme's 6)", a)
	}
	g := readAll(globex.ID, start(globex, 2), start(globex, 0))
	if g[0] != 2 || g[1] != 2 {
		t.Fatalf("globex's sidecars served %v objects after acme spent its quota, want 2 each (all of globex's 4)", g)
	}
	// What the registry presigned, per licensee, is what the clients got.
	db, err := sql.Open("sqlite3", "file:"+e.reg.DBPath+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, tc := range []struct {
		licensee string
		want     int64
	}{{acme.ID, a[0] + a[1]}, {globex.ID, g[0] + g[1]}} {
		var n int64
		if err := db.QueryRow(`SELECT COALESCE(SUM(presigned_samples), 0) FROM leases WHERE contract_id = ? AND licensee = ?`, e.c.ContractID, tc.licensee).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != tc.want {
			t.Errorf("registry presigned %d objects for %s, its clients received %d", n, tc.licensee, tc.want)
		}
	}
	// What the registry bills each licensee, once every sidecar synced, is
	// exactly what its clients received: samples, bytes and cost.
	for _, sc := range all {
		drain(t, sc, e.c.ContractID)
	}
	r, err := e.client.MeteringReport(context.Background(), e.c.ContractID, contract.TotalsFilter{Epoch: -1})
	if err != nil {
		t.Fatal(err)
	}
	price := e.c.Pricing.NanoUSD()
	for _, tc := range []struct {
		licensee       string
		samples, bytes int64
	}{{acme.ID, a[0] + a[1], received[acme.ID]}, {globex.ID, g[0] + g[1], received[globex.ID]}} {
		got := r.Licensees[tc.licensee]
		if got.BilledSamples != tc.samples || got.BilledBytes != tc.bytes || got.BilledCostNanoUSD != tc.samples*price {
			t.Errorf("registry bills %s %d samples, %d bytes, %d nano-USD; its clients received %d samples, %d bytes (%d nano-USD)",
				tc.licensee, got.BilledSamples, got.BilledBytes, got.BilledCostNanoUSD, tc.samples, tc.bytes, tc.samples*price)
		}
	}
	if len(r.Licensees) != 2 {
		t.Errorf("registry totals name licensees %v, want only acme and globex", r.Licensees)
	}
}

// TestUnenrolledSidecarGetsNoToken: a sidecar whose key no licensee
// enrolled (or with an enrolment of another key) gets no token: it never
// becomes ready, says why, and serves nothing.
func TestUnenrolledSidecarGetsNoToken(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.put("x.bin", randomBytes(t, 100), false)
	other, _ := verify.GenerateKey(jose.EdDSA)
	for _, tc := range []struct {
		name       string
		enrolments func() []string
		want       string
	}{
		{"no enrolment", func() []string { return []string{} }, contract.CodeNotEnrolled},
		{"enrolment of another key", func() []string { return []string{e.reg.Enrol(t, e.c.ContractID, other)} }, "no enrolment of this sidecar's key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := e.sidecarNoWait(func(c *sidecar.Config) { c.S3Endpoint, c.ProxyListen, c.Enrolments = "", "", tc.enrolments() })
			var last string
			waitFor(t, "the contract's status to say why it has no token", 15*time.Second, func() bool {
				resp, err := http.Get(sc.URL() + "/v1/contracts")
				if err != nil {
					return false
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				last = string(b)
				return strings.Contains(last, tc.want)
			})
			if resp, err := http.Get(sc.URL() + "/readyz"); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("readyz: %v %v, want 503", resp.Status, err)
			}
			if code, body := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "x.bin", 1, "j"); code != http.StatusServiceUnavailable {
				t.Fatalf("GET without a token: %d %s, want 503", code, body)
			}
		})
	}
}
