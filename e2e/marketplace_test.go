package e2e_test

import (
	"bytes"
	"context"
	"net/http"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/verify"
)

// TestMarketplaceMode runs the sidecar with no bucket credentials at all:
// every byte comes through short-lived URLs that the registry presigns for
// names in the contract, for a valid token and proof. Without them the
// bucket cannot be read.
func TestMarketplaceMode(t *testing.T) {
	e := newEnv(t, envOpt{})
	want := map[string][]byte{}
	var storedBytes int64
	for i, name := range []string{"m/1.bin", "m/2.bin", "m/3.bin"} {
		want[name] = randomBytes(t, 3000+i)
		storedBytes += e.put(name, want[name], i != 1).StoredSize
	}
	sc := e.sidecar(func(c *sidecar.Config) { c.S3Endpoint, c.ProxyListen = "", "" })
	for name, b := range want {
		code, got := get(t, http.DefaultClient, sc.URL(), e.c.ContractID, name, 1, "m")
		if code != http.StatusOK || !bytes.Equal(got, b) {
			t.Errorf("%s through presigned URLs: %d, %d bytes", name, code, len(got))
		}
	}
	// The registry's totals show the presigned objects beside the metered
	// samples.
	drain(t, sc, e.c.ContractID)
	r, err := e.client.MeteringReport(context.Background(), e.c.ContractID, contract.TotalsFilter{Epoch: -1})
	if err != nil {
		t.Fatal(err)
	}
	if r.PresignedObjects != 3 || r.PresignedBytes != storedBytes || r.BilledSamples != 3 {
		t.Errorf("registry totals: %d presigned objects (%d bytes), %d billed samples; want 3 (%d bytes), 3",
			r.PresignedObjects, r.PresignedBytes, r.BilledSamples, storedBytes)
	}
	// The bucket itself is closed to anyone without credentials.
	resp, err := http.Get(e.minio.URL() + "/" + e.bucket + "/" + e.c.Origin.Key("m/1.bin"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("anonymous GET on the bucket: %d, want 403", resp.StatusCode)
	}
	// And the registry presigns nothing without a token and its proof.
	anon, _ := contract.NewClient(e.reg.URL)
	stranger, _ := verify.GenerateKey(jose.EdDSA)
	anon.Proof = func(method, url, token string) (string, error) {
		return verify.NewDPoPProof(stranger, method, url, token, time.Now())
	}
	if _, err := anon.Presign(context.Background(), e.c.ContractID, "not-a-token", []string{"m/1.bin"}); contract.StatusOf(err) != http.StatusUnauthorized {
		t.Errorf("presign without a valid token: %v, want 401", err)
	}
}
