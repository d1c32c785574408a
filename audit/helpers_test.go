package audit_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/audit"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// world is a real registry with one contract and a contributor, and a
// sidecar's real ledger file whose syncer sends to it.
type world struct {
	h      *registrytest.Harness
	alice  *registrytest.Contributor
	c      *contract.Contract
	key    *jose.JSONWebKey
	client *contract.Client // signs proofs with key
	ledger *meter.Ledger
	syncer *meter.Syncer
}

func newWorld(tb testing.TB, mutate func(*contract.Contract)) *world {
	tb.Helper()
	return newWorldWith(tb, registrytest.Start(tb), "did:example:audit-"+filepath.Base(tb.TempDir()), mutate, false)
}

// newWorldPerEvent is a world whose syncer sends every row as an event
// (the batch form before aggregate batches).
func newWorldPerEvent(tb testing.TB) *world {
	tb.Helper()
	return newWorldWith(tb, registrytest.Start(tb), "did:example:audit-"+filepath.Base(tb.TempDir()), nil, true)
}

// newWorldOn is a world of contract id on the registry h.
func newWorldOn(tb testing.TB, h *registrytest.Harness, id string) *world {
	tb.Helper()
	return newWorldWith(tb, h, id, nil, false)
}

func newWorldWith(tb testing.TB, h *registrytest.Harness, id string, mutate func(*contract.Contract), perEvent bool) *world {
	tb.Helper()
	ctx := context.Background()
	w := &world{h: h}
	w.alice = w.h.NewContributor(tb, "did:example:alice")
	c := registrytest.NewContract(id, "bucket", w.alice)
	c.Usage.RetentionDays = 30
	if mutate != nil {
		mutate(c)
	}
	w.c = w.h.CreateContract(tb, c)
	var err error
	if w.key, err = verify.GenerateKey(jose.EdDSA); err != nil {
		tb.Fatal(err)
	}
	if w.client, err = contract.NewClient(w.h.URL); err != nil {
		tb.Fatal(err)
	}
	w.client.Proof = verify.ProofFunc(w.key)
	enrolment := w.h.Enrol(tb, w.c.ContractID, w.key)
	if w.ledger, err = meter.Open(ctx, filepath.Join(tb.TempDir(), "ledger.db"), meter.Config{}); err != nil {
		tb.Fatal(err)
	}
	if err := w.ledger.SetTerms(ctx, w.c.ContractID, w.c.Pricing, w.c.TermsSeq); err != nil {
		tb.Fatal(err)
	}
	w.ledger.Start(ctx)
	tb.Cleanup(func() { w.ledger.Close() })
	tokens := &meter.RequestedTokens{Client: w.client, Key: w.key, Purpose: "training",
		Enrolment: func(string) (string, error) { return enrolment, nil }}
	if w.syncer, err = meter.NewSyncer(w.ledger, meter.SyncConfig{Client: w.client, Key: w.key, Tokens: tokens, BatchSize: 3, PerEvent: perEvent}); err != nil {
		tb.Fatal(err)
	}
	return w
}

// read records a served read of name.
func (w *world) read(tb testing.TB, name string, epoch int64, job string, at time.Time) {
	tb.Helper()
	if _, err := w.ledger.Record(context.Background(), meter.Event{Time: at, Contract: w.c.ContractID, Name: name, Bytes: 100,
		Epoch: epoch, Job: job, TokenID: "tok", DecodedSHA256: "sha-" + name}); err != nil {
		tb.Fatal(err)
	}
}

// sync sends every row and waits for the outbox to be empty.
func (w *world) sync(tb testing.TB) {
	tb.Helper()
	for range 50 {
		if _, err := w.syncer.Sync(context.Background()); err != nil {
			tb.Fatal(err)
		}
		if w.ledger.OutboxDepth(w.c.ContractID) == 0 {
			return
		}
	}
	tb.Fatal("outbox did not drain")
}

// traffic attests three objects, reads them over two epochs and syncs.
func (w *world) traffic(tb testing.TB) {
	tb.Helper()
	for _, n := range []string{"a.bin", "b.bin", "c.bin"} {
		w.alice.Attest(tb, w.c.ContractID, registrytest.Object(n, []byte("data of "+n)))
	}
	now := time.Now()
	for epoch := int64(1); epoch <= 2; epoch++ {
		for _, n := range []string{"a.bin", "b.bin", "c.bin"} {
			w.read(tb, n, epoch, "train", now)
		}
		w.sync(tb)
	}
}

func (w *world) export(tb testing.TB, opts audit.ExportOptions) *audit.Bundle {
	tb.Helper()
	opts.Contract = w.c.ContractID
	b, err := audit.Export(context.Background(), w.h.Client, w.ledger, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
