package registry_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// Replicas starting together on a fresh database agree on the log key
// (one stored key wins; contracts publish it).
func TestReplicasStartingTogetherShareTheLogKey(t *testing.T) {
	ctx := context.Background()
	db := testenv.Postgres(t).NewDatabase(t)
	srvs := make([]*registry.Server, 4)
	errs := make([]error, 4)
	var wg sync.WaitGroup
	for i := range srvs {
		wg.Go(func() {
			srvs[i], errs[i] = registry.New(ctx, registry.Config{DBPath: db, Name: "together",
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		})
	}
	wg.Wait()
	for i, s := range srvs {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		defer s.Close()
		if s.CheckpointVerifierKey() != srvs[0].CheckpointVerifierKey() {
			t.Fatalf("replica %d signs with %s, replica 0 with %s", i, s.CheckpointVerifierKey(), srvs[0].CheckpointVerifierKey())
		}
	}
}

// Appends alternate between two replicas: each continues the log the
// other extended (its cached tree is checked against the database), and
// both serve the same verified log. Metering sent to one and retried at
// the other is counted once, and an idempotency key answers the same at
// either.
func TestReplicasContinueEachOthersLog(t *testing.T) {
	ctx := context.Background()
	hs := startReplicas(t, 2)
	alice := hs[0].NewContributor(t, "did:example:alice")
	c := hs[0].CreateContract(t, registrytest.NewContract("did:example:c1", "bucket", alice))
	for i := range 10 {
		jws := alice.Sign(t, c.ContractID, attestation(alice.ID, c.ContractID, fmt.Sprint("n", i)))
		res, err := hs[i%2].Client.AppendAttestation(ctx, c.ContractID, jws)
		if err != nil || res.Seq != uint64(i+2) {
			t.Fatalf("append %d via replica %d: %+v, %v; want seq %d", i, i%2, res, err, i+2)
		}
	}
	v, _ := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	for i, h := range hs {
		page, err := h.Client.Events(ctx, c.ContractID, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		chain, _ := verify.NewChain(c.ContractID, nil)
		for _, we := range page.Entries {
			if _, err := chain.Append(we.Seq, we.Entry); err != nil {
				t.Fatalf("replica %d entry %d: %v", i, we.Seq, err)
			}
		}
		raw, _ := h.Client.Checkpoint(ctx, c.ContractID)
		cp, err := v.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := chain.CheckCheckpoint(cp); err != nil || cp.Size != 11 {
			t.Fatalf("replica %d: checkpoint of size %d, %v; want 11", i, cp.Size, err)
		}
	}

	key, jkt := newKey(t)
	a, b := replicaClient(t, hs[0], key), replicaClient(t, hs[1], key)
	tok, err := a.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", JWK: key.Public(),
		Enrolment: hs[0].Enrol(t, c.ContractID, key)})
	if err != nil {
		t.Fatal(err)
	}
	jws := signBatch(t, key, jkt, c.ContractID, "e1", "e2", "e3")
	first, err := a.PostMetering(ctx, c.ContractID, tok.Token, "k1", jws)
	if err != nil || first.Accepted != 3 {
		t.Fatalf("first = %+v, %v", first, err)
	}
	replayed, err := b.PostMetering(ctx, c.ContractID, tok.Token, "k1", jws)
	if err != nil || !reflect.DeepEqual(replayed, first) {
		t.Fatalf("same key at the other replica = %+v, %v; want %+v", replayed, err, first)
	}
	other, err := b.PostMetering(ctx, c.ContractID, tok.Token, "k2", jws)
	if err != nil || other.Accepted != 0 || other.Duplicates != 3 {
		t.Fatalf("same batch, new key, other replica = %+v, %v", other, err)
	}
	for i, h := range hs {
		tot, err := h.Client.MeteringTotals(ctx, c.ContractID, "", -1)
		if err != nil || tot.Events != 3 {
			t.Fatalf("replica %d totals %+v, %v; want 3 events", i, tot, err)
		}
	}
}

// A live stream on one replica delivers entries another replica appends
// (it polls the database: no append of its own wakes it, nor, here, a
// checkpoint it re-signs).
func TestStreamAcrossReplicas(t *testing.T) {
	hs := startReplicas(t, 2, registrytest.WithConfig(func(c *registry.Config) { c.CheckpointInterval = time.Hour }))
	alice := hs[0].NewContributor(t, "did:example:alice")
	c := hs[0].CreateContract(t, registrytest.NewContract("did:example:c1", "bucket", alice))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan uint64, 10)
	go hs[1].Client.Stream(ctx, c.ContractID, 0, func(we contract.WireEntry) error {
		got <- we.Seq
		return nil
	})
	if seq := <-got; seq != 1 {
		t.Fatalf("first streamed seq = %d", seq)
	}
	alice.Attest(t, c.ContractID, registrytest.Object("b", []byte("b"))) // through replica 0
	select {
	case seq := <-got:
		if seq != 2 {
			t.Fatalf("streamed seq %d, want 2", seq)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an entry appended through replica 0 was not streamed by replica 1 within 5s")
	}
}

func newKey(t *testing.T) (*jose.JSONWebKey, string) {
	t.Helper()
	k, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	jkt, _ := verify.Thumbprint(k)
	return k, jkt
}

// signBatch is a metering batch of access events (one sample each) by
// the sidecar key.
func signBatch(t *testing.T, key *jose.JSONWebKey, jkt, contractID string, ids ...string) string {
	t.Helper()
	b := &contract.MeteringBatch{Contract: contractID, BatchID: ids[0], Sidecar: jkt, IssuedAt: time.Now().Unix()}
	for _, id := range ids {
		b.Events = append(b.Events, contract.MeteringEvent{ID: id, Time: time.Now().UTC(), Kind: contract.EventAccess, Name: "a/1.txt",
			Bytes: 100, Samples: 1, Units: 1, CostNanoUSD: 500000, Epoch: 1, Job: "job1"})
	}
	jws, err := verify.SignMeteringBatch(key, b)
	if err != nil {
		t.Fatal(err)
	}
	return jws
}

// Two replicas given one aggregate batch at once (under one idempotency
// key at both, and under another), and a batch of overlapping rows under
// another root, count the rows once: every answer that counts names the
// same log entry, the others are duplicates or 409 conflicts, and both
// replicas' totals count each round's rows exactly once.
func TestReplicasCountAnAggregateOnce(t *testing.T) {
	ctx := context.Background()
	hs := startReplicas(t, 2)
	alice := hs[0].NewContributor(t, "did:example:alice")
	c := hs[0].CreateContract(t, registrytest.NewContract("did:example:c1", "bucket", alice))
	key, jkt := newKey(t)
	a, b := replicaClient(t, hs[0], key), replicaClient(t, hs[1], key)
	tok, err := a.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", JWK: key.Public(),
		Enrolment: hs[0].Enrol(t, c.ContractID, key)})
	if err != nil {
		t.Fatal(err)
	}
	sign := func(rows *contract.RowCommitment) string {
		t.Helper()
		jws, err := verify.SignMeteringBatch(key, &contract.MeteringBatch{Contract: c.ContractID, BatchID: verify.NewID(), Sidecar: jkt,
			IssuedAt: time.Now().Unix(), Rows: rows, Aggregates: []contract.MeteringAggregate{replicaAggregate(rows.Count)}})
		if err != nil {
			t.Fatal(err)
		}
		return jws
	}
	const rounds, n = 12, 5
	for r := range rounds {
		x, y := sign(replicaRows(r, 0, n, "x")), sign(replicaRows(r, 2, 2+n, "y"))
		sends := []struct {
			c        *contract.Client
			idem, jw string
		}{{a, "k1", x}, {b, "k1", x}, {b, "k2", x}, {a, "k3", y}}
		answers := make([]*contract.MeteringResponse, len(sends))
		errs := make([]error, len(sends))
		var wg sync.WaitGroup
		for i, s := range sends {
			wg.Go(func() {
				answers[i], errs[i] = s.c.PostMetering(ctx, c.ContractID, tok.Token, fmt.Sprintf("r%d-%s", r, s.idem), s.jw)
			})
		}
		wg.Wait()
		// The winner: the batch whose answers count the rows. Its every
		// copy is counted (one entry) or a duplicate; the other batch is
		// refused for the overlap.
		seqs, winner := map[uint64]bool{}, ""
		for i, ans := range answers {
			if errs[i] == nil && ans.Accepted == n {
				seqs[ans.Seq], winner = true, sends[i].jw
			}
		}
		if len(seqs) != 1 {
			t.Fatalf("round %d: the rows were counted by log entries %v (%v), want one", r, seqs, errs)
		}
		for i, ans := range answers {
			err := errs[i]
			switch {
			case sends[i].jw == winner && err == nil && (ans.Accepted == n || ans.Duplicates == n):
			case sends[i].jw != winner && contract.StatusOf(err) == http.StatusConflict && strings.Contains(err.Error(), "overlap"):
			default:
				t.Fatalf("round %d, send %d (of the batch that %s): %+v, %v; want it counted or a duplicate, or the loser refused for the overlap",
					r, i, map[bool]string{true: "won", false: "lost"}[sends[i].jw == winner], ans, err)
			}
		}
	}
	for i, h := range hs {
		tot, err := h.Client.MeteringTotals(ctx, c.ContractID, "", -1)
		if err != nil || tot.Events != rounds*n || tot.AccessBytes != 100*rounds*n || tot.CostNanoUSD != 500000*rounds*n {
			t.Fatalf("replica %d totals %+v, %v; want %d events", i, tot, err, rounds*n)
		}
		raw, err := h.Client.Checkpoint(ctx, c.ContractID)
		if err != nil {
			t.Fatal(err)
		}
		if lines := strings.Split(string(raw), "\n"); len(lines) < 2 || lines[1] != fmt.Sprint(1+rounds) {
			t.Fatalf("replica %d's checkpoint %q: want size %d (terms and one entry per round)", i, raw, 1+rounds)
		}
	}
}
