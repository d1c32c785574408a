package e2e_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provgate/provgate/internal/sidecar"
)

// TestSharedPodAccess: with a local token the data endpoint answers 401
// without it; the unix socket serves the same API; /metrics (token too) exposes what
// an operator watches.
func TestSharedPodAccess(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.put("a.bin", []byte("hello"), false)
	sock := filepath.Join(t.TempDir(), "provgate.sock")
	sc := e.sidecar(func(c *sidecar.Config) { c.LocalToken = "pod-token"; c.UnixSocket = sock })
	u := sc.URL() + "/v1/contracts/" + e.c.ContractID + "/objects/a.bin"
	if code := status(t, u); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d, want 401", code)
	}
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Authorization", "Bearer pod-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "hello" {
		t.Fatalf("with the token: %d %q", resp.StatusCode, b)
	}
	overSocket := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	req, _ = http.NewRequest(http.MethodGet, "http://provgate/v1/contracts/"+e.c.ContractID+"/objects/a.bin", nil)
	req.Header.Set("Authorization", "Bearer pod-token")
	resp, err = overSocket.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "hello" {
		t.Fatalf("over the unix socket: %d %q", resp.StatusCode, b)
	}
	// /metrics honours the local token too.
	if code := status(t, sc.URL()+"/metrics"); code != http.StatusUnauthorized {
		t.Fatalf("/metrics without the token: %d, want 401", code)
	}
	req, _ = http.NewRequest(http.MethodGet, sc.URL()+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer pod-token")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{
		"provgate_requests_total", "provgate_bytes_served_total", "provgate_cache_hits_total", "provgate_cache_misses_total",
		"provgate_outbox_depth", "provgate_token_expiry_seconds", `provgate_contract_state{contract="` + e.c.ContractID + `",state="ready"} 1`,
		"provgate_log_entries_verified_total", "provgate_refusals_total",
	} {
		if !strings.Contains(string(m), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}
