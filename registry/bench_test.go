package registry_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/provgate/provgate/registry/registrytest"
)

// BenchmarkAppendAttestation: verified appends per second over loopback
// HTTP (signature check, entry, Merkle nodes, signed checkpoint, one
// SQLite transaction with synchronous=FULL each).
func BenchmarkAppendAttestation(b *testing.B) {
	h, alice, c := setupB(b)
	jws := make([]string, b.N)
	for i := range jws {
		jws[i] = alice.Sign(b, c, attestation(alice.ID, c, fmt.Sprintf("obj/%d", i)))
	}
	b.ResetTimer()
	for i := range b.N {
		if _, err := h.Client.AppendAttestation(context.Background(), c, jws[i]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
}

// BenchmarkEventsReplay: entries per second served by the events cursor.
func BenchmarkEventsReplay(b *testing.B) {
	h, alice, c := setupB(b)
	const n = 2000
	for i := range n {
		alice.Attest(b, c, registrytest.Object(fmt.Sprintf("obj/%d", i), []byte{byte(i)}))
	}
	b.ResetTimer()
	for range b.N {
		var since uint64
		for since < n {
			page, err := h.Client.Events(context.Background(), c, since, 1000)
			if err != nil {
				b.Fatal(err)
			}
			since = page.Entries[len(page.Entries)-1].Seq
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "entries/s")
}

func setupB(b *testing.B) (*registrytest.Harness, *registrytest.Contributor, string) {
	h := registrytest.Start(b)
	alice := h.NewContributor(b, "did:example:alice")
	c := h.CreateContract(b, registrytest.NewContract("did:example:c1", "bucket", alice))
	return h, alice, c.ContractID
}
