package registry_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
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

// BenchmarkIngestPerMillionSamples: the registry's CPU per million
// metered samples, for the same reads sent event by event (batches of 500
// events, the meter's per-event batch size) and in aggregate batches (each
// covering 20,000 rows summed under 10 keys, the meter's default). Each
// iteration posts one batch over loopback HTTP; the JWS are signed before
// the clock starts. CPU is the whole process's (getrusage: the registry,
// and the in-process client's HTTP and DPoP proofs), so it is an upper
// bound on the registry's.
func BenchmarkIngestPerMillionSamples(b *testing.B) {
	for _, form := range []struct {
		name        string
		rowsPerPost int
	}{{"events", 500}, {"aggregates", 20_000}} {
		b.Run("form="+form.name, func(b *testing.B) {
			ctx := context.Background()
			h := registrytest.Start(b)
			alice := h.NewContributor(b, "did:example:alice")
			c := h.CreateContract(b, registrytest.NewContract("did:example:ingest", "bucket", alice))
			key, err := verify.GenerateKey(jose.EdDSA)
			if err != nil {
				b.Fatal(err)
			}
			jkt, _ := verify.Thumbprint(key)
			client, err := contract.NewClient(h.URL)
			if err != nil {
				b.Fatal(err)
			}
			client.Proof = verify.ProofFunc(key)
			tok, err := client.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", JWK: key.Public(),
				Enrolment: h.Enrol(b, c.ContractID, key)})
			if err != nil {
				b.Fatal(err)
			}
			const ledger = "bench-ledger"
			now := time.Now().UTC()
			jws := make([]string, b.N)
			for i := range b.N {
				mb := &contract.MeteringBatch{Contract: c.ContractID, BatchID: fmt.Sprint("b", i), Sidecar: jkt, IssuedAt: now.Unix()}
				first := int64(i * form.rowsPerPost)
				if form.name == "events" {
					for j := range int64(form.rowsPerPost) {
						mb.Events = append(mb.Events, contract.MeteringEvent{ID: fmt.Sprintf("%s-%d", ledger, first+j+1), Time: now,
							Kind: contract.EventAccess, Name: fmt.Sprintf("train/shard-%04d/sample-%08d.jpg", j/100, j), Bytes: 123456,
							Samples: 1, Units: 1, CostNanoUSD: 500000, Epoch: j % 5, Job: []string{"a", "b"}[j%2], TokenID: "tok-0123456789abcdef",
							DecodedSHA: fmt.Sprintf("%064x", j), Outcome: "served"})
					}
				} else {
					per := int64(form.rowsPerPost / 10)
					for k := range int64(10) {
						mb.Aggregates = append(mb.Aggregates, contract.MeteringAggregate{Kind: contract.EventAccess, Outcome: "served",
							Job: []string{"a", "b"}[k%2], Epoch: k / 2, Events: per, Samples: per, Bytes: per * 123456, Units: per,
							CostNanoUSD: per * 500000, FirstTime: now, LastTime: now})
					}
					root := make([]byte, contract.RowsRootSize)
					root[0] = byte(i)
					mb.Rows = &contract.RowCommitment{Ledger: ledger, AfterSeq: first, LastSeq: first + int64(form.rowsPerPost),
						Count: int64(form.rowsPerPost), Root: root}
				}
				if jws[i], err = verify.SignMeteringBatch(key, mb); err != nil {
					b.Fatal(err)
				}
			}
			cpu := func() time.Duration {
				var ru syscall.Rusage
				syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
				return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			}
			b.ResetTimer()
			start := cpu()
			for i := range b.N {
				r, err := client.PostMetering(ctx, c.ContractID, tok.Token, fmt.Sprint("k", i), jws[i])
				if err != nil || r.Accepted != form.rowsPerPost {
					b.Fatalf("batch %d: %+v, %v", i, r, err)
				}
			}
			used := cpu() - start
			b.StopTimer()
			samples := float64(b.N * form.rowsPerPost)
			b.ReportMetric(used.Seconds()/(samples/1e6), "cpu-s/Msamples")
			b.ReportMetric(samples/b.Elapsed().Seconds(), "samples/s")
		})
	}
}
