package main

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
)

// BenchmarkVerifyLog: `provgate verify log` over a 2000-entry log on a
// loopback registry (checkpoint, chain, Merkle root, every signature).
func BenchmarkVerifyLog(b *testing.B) {
	const n = 2000
	h := registrytest.Start(b, registrytest.WithConfig(func(c *registry.Config) { c.SyncNormalUnsafe = true }))
	alice := h.NewContributor(b, "did:example:alice")
	c := h.CreateContract(b, registrytest.NewContract("did:example:c1", "bucket", alice))
	for i := range n {
		alice.Attest(b, c.ContractID, registrytest.Object(fmt.Sprintf("obj/%d", i), []byte{byte(i)}))
	}
	args := []string{"verify", "log", "--registry", h.URL, "--contract", c.ContractID}
	b.ResetTimer()
	for range b.N {
		if code := run(context.Background(), args, io.Discard, io.Discard); code != 0 {
			b.Fatalf("verify log exit %d", code)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "entries/s")
}
