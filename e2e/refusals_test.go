package e2e_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/proxy"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// Each attack or failure in DESIGN.md's "what must hold" gives the status
// code clients rely on, with the error code in the JSON body, and nothing
// unverified is served.

func TestTamperedOriginIs502AndNeverCached(t *testing.T) {
	e := newEnv(t, envOpt{})
	good := randomBytes(t, 4096)
	e.put("a.bin", good, true)
	e.put("b.bin", randomBytes(t, 100), false)
	// The stored object is replaced after its attestation.
	evil := append([]byte(nil), good...)
	evil[100] ^= 0xff
	e.putRaw("a.bin", evil)
	sc := e.sidecar(nil)
	for attempt := 1; attempt <= 2; attempt++ {
		code, body := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "a.bin", 1, "t")
		if code != http.StatusBadGateway || errorCode(body) != contract.CodeVerification {
			t.Fatalf("attempt %d: got %d %s, want 502 %s", attempt, code, body, contract.CodeVerification)
		}
	}
	if st := sc.Cache().Stats(); st.Bytes != 0 {
		t.Errorf("cache holds %d bytes after failed verifications, want 0", st.Bytes)
	}
	if v := metric(t, sc.URL(), "provgate_verification_failures_total"); v < 2 {
		t.Errorf("provgate_verification_failures_total = %v, want >= 2", v)
	}
	// A verified neighbour still serves.
	if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "b.bin", 1, "t"); code != http.StatusOK {
		t.Errorf("untampered object: %d", code)
	}
}

func TestRedactionIs451AndPurges(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.put("keep.bin", randomBytes(t, 200), false)
	e.put("gone.bin", randomBytes(t, 300), true)
	sc := e.sidecar(nil)
	if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "gone.bin", 1, "t"); code != http.StatusOK {
		t.Fatalf("before redaction: %d", code)
	}
	cached := sc.Cache().Stats().Bytes
	e.alice.Redact(t, e.c.ContractID, "gone.bin")
	waitFor(t, "the redaction to reach the sidecar", 10*time.Second, func() bool {
		code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "gone.bin", 1, "t")
		return code == http.StatusUnavailableForLegalReasons
	})
	if got := sc.Cache().Stats().Bytes; got != cached-300 {
		t.Errorf("cache holds %d bytes after the purge, want %d", got, cached-300)
	}
	if manifest := manifestNames(t, sc.URL(), e.c.ContractID); strings.Contains(strings.Join(manifest, ","), "gone.bin") {
		t.Errorf("redacted name still in the manifest: %v", manifest)
	}
	if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "keep.bin", 1, "t"); code != http.StatusOK {
		t.Errorf("unredacted object: %d", code)
	}
}

func TestRetroactivelyRevokedKeyIs404(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.put("by-alice.bin", randomBytes(t, 200), false)
	sc := e.sidecar(nil)
	if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "by-alice.bin", 1, "t"); code != http.StatusOK {
		t.Fatalf("before revocation: %d", code)
	}
	jws := e.alice.Sign(t, e.c.ContractID, &contract.Attestation{Type: contract.Revocation,
		Revocation: &contract.RevocationClaim{KeyID: e.alice.Key.KeyID, Reason: "key compromised", Retroactive: true}})
	e.alice.Append(t, e.c.ContractID, jws)
	waitFor(t, "the revocation to reach the sidecar", 10*time.Second, func() bool {
		code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "by-alice.bin", 1, "t")
		return code == http.StatusNotFound
	})
	// New attestations with the revoked key are refused by the registry.
	obj := registrytest.Object("late.bin", []byte("late"))
	late := e.alice.Sign(t, e.c.ContractID, &contract.Attestation{Type: contract.Contribution, Object: &obj})
	if _, err := e.reg.Client.AppendAttestation(context.Background(), e.c.ContractID, late); contract.StatusOf(err) == 0 {
		t.Errorf("registry accepted an attestation signed by a revoked key: %v", err)
	}
}

func TestForkedLogQuarantinesWith503(t *testing.T) {
	signing, err := verify.GenerateKey("EdDSA")
	if err != nil {
		t.Fatal(err)
	}
	skey, _, err := verify.GenerateCheckpointKey("fork-test")
	if err != nil {
		t.Fatal(err)
	}
	sameKeys := func(c *registry.Config) { c.SigningKey, c.CheckpointKey, c.Name = signing, skey, "fork-test" }
	e := newEnv(t, envOpt{regConfig: sameKeys})
	e.put("x.bin", randomBytes(t, 100), false)
	e.put("y.bin", randomBytes(t, 100), false)
	sc := e.sidecar(nil)
	if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "x.bin", 1, "t"); code != http.StatusOK {
		t.Fatalf("before the fork: %d", code)
	}
	// A second registry with the same keys and the same contract, but a
	// different history: the registry "forks" its log.
	other := registrytest.Start(t, registrytest.WithConfig(func(c *registry.Config) {
		sameKeys(c)
		c.PublicURL = e.front.URL()
	}))
	twin := *e.c
	twin.Log = contract.LogInfo{}
	twin.CreatedAt = time.Time{}
	twin.ProvenanceEndpoint = ""
	other.CreateContract(t, &twin)
	for _, name := range []string{"x.bin", "other.bin", "third.bin"} {
		obj := registrytest.Object(name, []byte(name))
		jws := e.alice.Sign(t, e.c.ContractID, &contract.Attestation{Type: contract.Contribution, Object: &obj})
		if _, err := other.Client.AppendAttestation(context.Background(), e.c.ContractID, jws); err != nil {
			t.Fatal(err)
		}
	}
	e.front.point(other.URL)
	waitFor(t, "the sidecar to quarantine the contract", 10*time.Second, func() bool {
		code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "x.bin", 1, "t")
		return code == http.StatusServiceUnavailable
	})
	if st := contractState(t, sc.URL(), e.c.ContractID); st.State != proxy.StateQuarantined {
		t.Errorf("state %q, want quarantined", st.State)
	}
	if code := status(t, sc.URL()+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz: %d, want 503", code)
	}
	// Pointing back at the honest registry does not lift the quarantine.
	e.front.point(e.reg.URL)
	time.Sleep(300 * time.Millisecond)
	if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "y.bin", 1, "t"); code != http.StatusServiceUnavailable {
		t.Errorf("after the fork, honest registry again: %d, want 503 (quarantine is sticky)", code)
	}
	// It survives a restart, and only an operator's reset lifts it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sc.Shutdown(ctx)
	stateDir := sc.StateDir()
	restarted := e.sidecarNoWait(func(c *sidecar.Config) { c.StateDir = stateDir })
	time.Sleep(300 * time.Millisecond)
	if st := contractState(t, restarted.URL(), e.c.ContractID); st.State != proxy.StateQuarantined {
		t.Errorf("after a restart: state %q, want quarantined", st.State)
	}
	restarted.Shutdown(ctx)
	if out, err := exec.Command(provgateBinary(t), "verify", "reset", "--state-dir", stateDir, "--contract", e.c.ContractID).CombinedOutput(); err != nil {
		t.Fatalf("provgate verify reset: %v\n%s", err, out)
	}
	healed := e.sidecar(func(c *sidecar.Config) { c.StateDir = stateDir })
	if code, _ := get(t, http.DefaultClient, healed.URL(), e.c.ContractID, "y.bin", 1, "t"); code != http.StatusOK {
		t.Errorf("after verify reset against the honest registry: %d, want 200", code)
	}
}

func TestRegistryDownServesUntilTokenExpiryThen503(t *testing.T) {
	const ttl = 3 * time.Second
	e := newEnv(t, envOpt{regConfig: func(c *registry.Config) { c.TokenTTL = ttl }})
	e.put("warm.bin", randomBytes(t, 1000), false)
	sc := e.sidecar(nil)
	if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "warm.bin", 1, "t"); code != http.StatusOK {
		t.Fatalf("warm-up: %d", code)
	}
	st := contractState(t, sc.URL(), e.c.ContractID)
	e.front.down.Store(true)
	// Still serving from verified state while the token is valid.
	if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "warm.bin", 1, "t"); code != http.StatusOK && time.Now().Before(st.TokenExpiry) {
		t.Fatalf("registry down, token valid: %d, want 200", code)
	}
	waitFor(t, "the token to expire", ttl+5*time.Second, func() bool { return time.Now().After(st.TokenExpiry.Add(time.Second)) })
	code, body := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "warm.bin", 1, "t")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("registry down, token expired: %d %s, want 503", code, body)
	}
	if s := contractState(t, sc.URL(), e.c.ContractID); s.State != proxy.StateExpired {
		t.Errorf("state %q, want expired", s.State)
	}
	// The registry comes back: the sidecar recovers by itself.
	e.front.down.Store(false)
	waitFor(t, "the sidecar to recover", 15*time.Second, func() bool {
		code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "warm.bin", 1, "t")
		return code == http.StatusOK
	})
}

func TestSpentQuotaIs403(t *testing.T) {
	e := newEnv(t, envOpt{})
	for _, n := range []string{"1", "2", "3", "4"} {
		e.put(n, []byte("sample "+n), false)
	}
	sc := e.sidecar(func(c *sidecar.Config) { c.Quota = contract.Quota{MaxSamples: 3} })
	for _, n := range []string{"1", "2", "3"} {
		if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, n, 1, "t"); code != http.StatusOK {
			t.Fatalf("sample %s: %d", n, code)
		}
	}
	code, body := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "4", 1, "t")
	if code != http.StatusForbidden || errorCode(body) != contract.CodeQuotaExceeded {
		t.Fatalf("fourth sample with a quota of 3: %d %s, want 403 %s", code, body, contract.CodeQuotaExceeded)
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.put("ok.bin", []byte("ok"), false)
	sc := e.sidecar(nil)
	base := sc.URL() + "/v1/contracts/" + e.c.ContractID
	for _, tc := range []struct {
		name, method, path string
		header             map[string]string
		want               int
	}{
		{"unknown contract", "GET", sc.URL() + "/v1/contracts/did:example:nope/objects/ok.bin", nil, 404},
		{"name not in the manifest", "GET", base + "/objects/missing.bin", nil, 404},
		{"path traversal", "GET", base + "/objects/a/%2e%2e/ok.bin", nil, 400},
		{"backslash", "GET", base + "/objects/..%5Cok.bin", nil, 400},
		{"control character", "GET", base + "/objects/ok%00.bin", nil, 400},
		{"bad epoch", "GET", base + "/objects/ok.bin", map[string]string{"X-Provgate-Epoch": "-1"}, 400},
		{"huge header", "GET", base + "/objects/ok.bin", map[string]string{"X-Big": strings.Repeat("a", 200<<10)}, 431},
		{"garbage batch", "POST", base + "/batch", nil, 400},
		{"bad epoch end", "POST", base + "/epochs/x/end", nil, 400},
		// Beyond what the registry takes: such a row would block the outbox.
		{"absurd epoch", "GET", base + "/objects/ok.bin", map[string]string{"X-Provgate-Epoch": "2199023255553"}, 400},
		{"absurd epoch end", "POST", base + "/epochs/2199023255553/end", nil, 400},
		{"write through the facade", "PUT", sc.URL() + "/" + e.bucket + "/ds/ok.bin", nil, 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, tc.path, strings.NewReader("{not json"))
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("%s %s: %d %s, want %d", tc.method, tc.path, resp.StatusCode, b, tc.want)
			}
		})
	}
	// Nothing was lost: the good object still serves, and only it was metered.
	if code, _ := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, "ok.bin", 1, "t"); code != http.StatusOK {
		t.Fatalf("good request after bad ones: %d", code)
	}
}

func contractState(t testing.TB, base, id string) proxy.Status {
	t.Helper()
	resp, err := http.Get(base + "/v1/contracts")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Contracts []proxy.Status `json:"contracts"`
	}
	json.NewDecoder(resp.Body).Decode(&out)
	for _, s := range out.Contracts {
		if s.ID == id {
			return s
		}
	}
	t.Fatalf("contract %s not listed", id)
	return proxy.Status{}
}

func status(t testing.TB, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func manifestNames(t testing.TB, base, id string) []string {
	t.Helper()
	resp, err := http.Get(base + "/v1/contracts/" + id + "/manifest")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var names []string
	dec := json.NewDecoder(resp.Body)
	for dec.More() {
		var l struct {
			Name string `json:"name"`
		}
		if err := dec.Decode(&l); err != nil {
			t.Fatal(err)
		}
		names = append(names, l.Name)
	}
	return names
}

// metric reads one un-labelled (or summed) metric from /metrics.
func metric(t testing.TB, base, name string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			var v float64
			f := strings.Fields(line)
			json.Unmarshal([]byte(f[len(f)-1]), &v)
			sum += v
		}
	}
	return sum
}
