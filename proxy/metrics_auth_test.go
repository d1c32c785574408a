package proxy_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/provgate/provgate/proxy"
)

// /metrics answers only with the local token when one is configured: a
// neighbour on the host learns nothing from it (names, contracts, rates).
func TestMetricsHonourTheLocalToken(t *testing.T) {
	s := proxy.NewServer(proxy.Config{BearerToken: "local-secret"})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	get := func(token string) int {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get(""); got != http.StatusUnauthorized {
		t.Fatalf("/metrics without the token: %d, want 401", got)
	}
	if got := get("wrong"); got != http.StatusUnauthorized {
		t.Fatalf("/metrics with a wrong token: %d, want 401", got)
	}
	if got := get("local-secret"); got != http.StatusOK {
		t.Fatalf("/metrics with the token: %d, want 200", got)
	}
	// Health stays open for probes.
	if resp, err := http.Get(srv.URL + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: %v %v", resp, err)
	}
}
