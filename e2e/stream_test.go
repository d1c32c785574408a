package e2e_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/provgate/provgate/internal/sidecar"
)

// TestStreamWhileFetching: with the option on, good objects stream with
// the right bytes and are metered; an object that fails verification at
// its end gives a broken response — never a clean one — is not cached and
// is not billed.
func TestStreamWhileFetching(t *testing.T) {
	e := newEnv(t, envOpt{})
	good := randomBytes(t, 3<<20)
	e.put("good.bin", good, true)
	bad := randomBytes(t, 2<<20)
	e.put("bad.bin", bad, false)
	evil := append([]byte(nil), bad...)
	evil[len(evil)-10] ^= 1 // only the end's digest check can tell
	e.putRaw("bad.bin", evil)
	sc := e.sidecar(func(c *sidecar.Config) { c.StreamWhileFetching = true })
	base := sc.URL() + "/v1/contracts/" + e.c.ContractID + "/objects/"
	get := func(name string) (int, []byte, error) {
		req, _ := http.NewRequest(http.MethodGet, base+name, nil)
		req.Header.Set("X-Provgate-Job", "stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}
	code, b, err := get("good.bin")
	if err != nil || code != http.StatusOK || !bytes.Equal(b, good) {
		t.Fatalf("good object streamed: %d, %d bytes, %v", code, len(b), err)
	}
	code, b, err = get("bad.bin")
	if err == nil {
		t.Fatalf("tampered object streamed to a clean end: %d, %d bytes", code, len(b))
	}
	if bytes.Equal(b, evil) {
		t.Fatal("the client received every tampered byte")
	}
	if v := metric(t, sc.URL(), "provgate_verification_failures_total"); v < 1 {
		t.Errorf("verification failures: %v, want >= 1", v)
	}
	drain(t, sc, e.c.ContractID)
	tot, err := e.client.MeteringTotals(context.Background(), e.c.ContractID, "stream", -1)
	if err != nil {
		t.Fatal(err)
	}
	if tot.AccessBytes != int64(len(good)) || tot.CostNanoUSD != 500_000 {
		t.Errorf("registry: %d bytes, %d nano-USD; want only the good object (%d bytes, one sample)", tot.AccessBytes, tot.CostNanoUSD, len(good))
	}
	// The tampered object was not cached: asking again fails again.
	if _, _, err := get("bad.bin"); err == nil {
		t.Error("second read of the tampered object ended cleanly")
	}
}
