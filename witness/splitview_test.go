package witness_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/witness"
)

// loopWitness is a witness served on a fixed loopback address, so that
// it can be stopped and restarted where the registries reach it.
type loopWitness struct {
	addr, db, skey string
	logs           map[string]string
	w              *witness.Witness
	srv            *http.Server
}

func (lw *loopWitness) start(t *testing.T) {
	t.Helper()
	addr := lw.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	lw.addr = ln.Addr().String()
	if lw.w, err = witness.New(context.Background(), witness.Config{Key: lw.skey, Logs: lw.logs, DBPath: lw.db,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}); err != nil {
		t.Fatal(err)
	}
	lw.srv = &http.Server{Handler: lw.w.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go lw.srv.Serve(ln)
	t.Cleanup(lw.stop)
}

func (lw *loopWitness) stop() {
	if lw.srv != nil {
		lw.srv.Close()
		lw.w.Close()
		lw.srv = nil
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cosignedBy reports whether a checkpoint note carries a valid
// cosignature from the witness key.
func cosignedBy(vkey string, raw []byte) bool {
	v, err := fnote.NewVerifierForCosignatureV1(vkey)
	if err != nil {
		return false
	}
	_, err = note.Open(raw, note.VerifierList(v))
	return err == nil
}

// TestSplitViewCannotGatherQuorum: two registries share a checkpoint key
// and a contract, so they are one log to everyone, and show two sidecars
// two different trees of the same size. One witness, restarted mid-way,
// cosigns the first tree it sees and refuses the other, so the sidecar
// shown the fork refuses it while the other serves; without the witness
// requirement, the fork would have been trusted.
func TestSplitViewCannotGatherQuorum(t *testing.T) {
	ctx := context.Background()
	skey, vkey, err := note.GenerateKey(rand.Reader, "registrytest")
	if err != nil {
		t.Fatal(err)
	}
	wskey, wvkey, err := witness.GenerateKey("witness.test/w1")
	if err != nil {
		t.Fatal(err)
	}
	lw := &loopWitness{db: filepath.Join(t.TempDir(), "witness.db"), skey: wskey,
		logs: map[string]string{"registrytest/log/*": vkey}}
	lw.start(t)
	wurl := "http://" + lw.addr

	var logsB testenv.SyncBuffer
	start := func(logs io.Writer) *registrytest.Harness {
		return registrytest.Start(t, registrytest.WithConfig(func(c *registry.Config) {
			c.CheckpointKey = skey
			c.Witnesses = []registry.Witness{{URL: wurl, VKey: wvkey}}
			c.Logger = slog.New(slog.NewTextHandler(logs, nil))
		}))
	}
	hA := start(io.Discard)
	alice := hA.NewContributor(t, "did:example:alice")
	cA := hA.CreateContract(t, registrytest.NewContract("did:example:split", "bucket", alice))
	honest := registrytest.Object("img/0001.txt", []byte("honest bytes"))
	forged := registrytest.Object("img/0001.txt", []byte("poisoned bytes"))
	alice.Attest(t, cA.ContractID, honest)
	waitFor(t, "the witness to cosign A's tree", func() bool {
		raw, err := hA.Client.Checkpoint(ctx, cA.ContractID)
		return err == nil && bytes.Contains(raw, []byte("\n2\n")) && cosignedBy(wvkey, raw) // the terms and one object
	})
	// Registry B, the other view of the same log, starts only now: had both
	// shown the witness their first checkpoints at once, which one it
	// cosigned would be a race (their terms entries differ when the two
	// contracts were created in different seconds).
	hB := start(&logsB)
	aliceAtB := hB.NewContributor(t, alice.ID)
	aliceAtB.Key = alice.Key
	cB := hB.CreateContract(t, registrytest.NewContract("did:example:split", "bucket", aliceAtB))
	if cA.Log != cB.Log {
		t.Fatalf("the two registries must look like one log: %+v vs %+v", cA.Log, cB.Log)
	}

	// The witness restarts (same key, same state file) before it is shown
	// the fork.
	lw.stop()
	lw.start(t)

	aliceAtB.Attest(t, cB.ContractID, forged)
	waitFor(t, "registry B to be refused by the witness", func() bool { return strings.Contains(logsB.String(), "witness answered 422") })

	rawA, _ := hA.Client.Checkpoint(ctx, cA.ContractID)
	rawB, _ := hB.Client.Checkpoint(ctx, cB.ContractID)
	cpv, err := verify.NewCheckpointVerifier(cA.Log.Origin, cA.Log.CheckpointKey)
	if err != nil {
		t.Fatal(err)
	}
	cpA, errA := cpv.Parse(rawA)
	cpB, errB := cpv.Parse(rawB)
	if errA != nil || errB != nil || cpA.Size != cpB.Size || bytes.Equal(cpA.Hash, cpB.Hash) {
		t.Fatalf("want two validly signed trees of the same size with different roots: %v %v", errA, errB)
	}
	if cosignedBy(wvkey, rawB) {
		t.Fatal("the witness cosigned the fork")
	}

	policy, err := verify.NewWitnessPolicy([]string{wvkey}, 0)
	if err != nil {
		t.Fatal(err)
	}
	follow := func(h *registrytest.Harness, c *contract.Contract, p *verify.WitnessPolicy) *verify.Follower {
		st, err := verify.OpenStore(filepath.Join(t.TempDir(), verify.StateFile))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		f, err := verify.NewFollower(ctx, verify.FollowerConfig{Contract: c, Source: h.Client, Store: st, Witnesses: p},
			verify.WithTrustOnFirstUse())
		if err != nil {
			t.Fatal(err)
		}
		return f
	}

	// The sidecar shown A's tree verifies it and serves the honest name.
	sideA := follow(hA, cA, policy)
	if err := sideA.Sync(ctx); err != nil {
		t.Fatalf("sidecar on the cosigned tree: %v", err)
	}
	if e, err := sideA.Lookup("img/0001.txt"); err != nil || e.DecodedSHA256 != honest.DecodedSHA256 {
		t.Fatalf("sidecar A: lookup %+v, %v: want the honest object", e, err)
	}

	// The sidecar shown the fork refuses it: not ready, with the reason.
	sideB := follow(hB, cB, policy)
	err = sideB.Sync(ctx)
	if !errors.Is(err, verify.ErrWitnessQuorum) {
		t.Fatalf("sidecar on the fork: Sync = %v, want ErrWitnessQuorum", err)
	}
	if st := sideB.Status(); st.State != verify.StateSyncing || !strings.Contains(st.LastError, "witness") {
		t.Fatalf("sidecar B status %+v: want syncing with the witness error", st)
	}
	if _, err := sideB.Lookup("img/0001.txt"); !errors.Is(err, verify.ErrNotVerified) {
		t.Fatalf("sidecar B served from the fork: %v", err)
	}

	// Without the witness requirement the fork would have been served:
	// this is the attack the quorum stops.
	naive := follow(hB, cB, nil)
	if err := naive.Sync(ctx); err != nil {
		t.Fatalf("a sidecar without witnesses: %v", err)
	}
	if e, err := naive.Lookup("img/0001.txt"); err != nil || e.DecodedSHA256 != forged.DecodedSHA256 {
		t.Fatalf("without witnesses: lookup %+v, %v: the fork should have been trusted", e, err)
	}

	// A keeps growing and keeps being cosigned by the restarted witness.
	alice.Attest(t, cA.ContractID, registrytest.Object("img/0002.txt", []byte("more")))
	waitFor(t, "the witness to cosign A's next tree", func() bool {
		raw, err := hA.Client.Checkpoint(ctx, cA.ContractID)
		return err == nil && bytes.Contains(raw, []byte("\n3\n")) && cosignedBy(wvkey, raw)
	})
	if err := sideA.Sync(ctx); err != nil {
		t.Fatalf("sidecar A, next tree: %v", err)
	}
}
