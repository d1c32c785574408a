package verify_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// TestFollowerAgainstRegistry follows a real registry (SQLite, loopback
// HTTP, the real client): replay, the live feed, a redaction reaching the
// cache hook, and a restart that resumes from the state file.
func TestFollowerAgainstRegistry(t *testing.T) {
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:reg1", "bucket", alice))
	for _, name := range []string{"a/1.txt", "a/2.txt", "a/3.txt"} {
		alice.Attest(t, c.ContractID, registrytest.Object(name, []byte(name)))
	}

	dir := t.TempDir()
	store, err := verify.OpenStore(filepath.Join(dir, verify.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var purged []string
	cfg := verify.FollowerConfig{
		Contract: c, Source: h.Client, Stream: h.Client, Fetcher: h.Client, Store: store,
		PollInterval: time.Hour, // only the live feed brings news in this test
		OnRedact: func(id, name string) {
			mu.Lock()
			purged = append(purged, id+" "+name)
			mu.Unlock()
		},
	}
	f := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "first sync", func() bool { return f.Ready() == nil })
	if e, err := f.Lookup("a/2.txt"); err != nil || e.Seq != 3 || e.Issuer != alice.ID {
		t.Fatalf("Lookup(a/2.txt) = %+v, %v", e, err)
	}

	alice.Redact(t, c.ContractID, "a/2.txt")
	alice.Attest(t, c.ContractID, registrytest.Object("b/1.txt", []byte("b")))
	waitFor(t, "the live feed", func() bool { _, err := f.Lookup("b/1.txt"); return err == nil })
	if _, err := f.Lookup("a/2.txt"); !errors.Is(err, verify.ErrRedacted) {
		t.Fatalf("redacted name: %v", err)
	}
	mu.Lock()
	if len(purged) != 1 || purged[0] != c.ContractID+" a/2.txt" {
		t.Fatalf("OnRedact calls %v", purged)
	}
	mu.Unlock()
	st := f.Status()
	if st.State != verify.StateReady || st.Size != 6 || st.Objects != 3 || st.Rejected != 0 {
		t.Fatalf("status %+v", st)
	}
	f.Stop()
	store.Close()

	// Restart on the same state: ready at once, then in step with the
	// registry, which signs a checkpoint per append and re-signs quiet logs.
	cfg.Store = mustStore(t, dir)
	g := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	if err := g.Ready(); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	alice.Attest(t, c.ContractID, registrytest.Object("c/1.txt", []byte("c")))
	mustSync(t, g)
	if e, err := g.Lookup("c/1.txt"); err != nil || e.Seq != 7 {
		t.Fatalf("after restart: %+v, %v", e, err)
	}

	// The registry's checkpoint verifies as the contract says, and the
	// follower's persisted checkpoint is consistent with the registry's log.
	note, err := h.Client.Checkpoint(context.Background(), c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := h.Client.VerifyCheckpoint(context.Background(), contract.VerifyRequest{Contract: c.ContractID, Checkpoint: string(note)})
	if err != nil || !resp.Consistent {
		t.Fatalf("registry says %+v, %v", resp, err)
	}
}

// TestFollowerCatchesRewrittenRegistry: the registry is replaced, while the
// sidecar is down, by one with the same checkpoint key and contract but a
// different history (a restored old backup, a rewritten database). The
// restarted follower, on its state file, quarantines the contract.
func TestFollowerCatchesRewrittenRegistry(t *testing.T) {
	skey, _, err := verify.GenerateCheckpointKey("registrytest")
	if err != nil {
		t.Fatal(err)
	}
	sameKey := registrytest.WithConfig(func(c *registry.Config) { c.CheckpointKey = skey })
	h1 := registrytest.Start(t, sameKey)
	alice := h1.NewContributor(t, "did:example:alice")
	c := h1.CreateContract(t, registrytest.NewContract("did:example:rw", "bucket", alice))
	for _, name := range []string{"a", "b", "c"} {
		alice.Attest(t, c.ContractID, registrytest.Object(name, []byte(name)))
	}
	dir := t.TempDir()
	cfg := verify.FollowerConfig{Contract: c, Source: h1.Client, Store: mustStore(t, dir)}
	mustSync(t, mustFollower(t, cfg, verify.WithTrustOnFirstUse()))

	h2 := registrytest.Start(t, sameKey)
	mallory := h2.NewContributor(t, alice.ID)
	mallory.Key = alice.Key // the same contributor, a different history
	c2 := h2.CreateContract(t, registrytest.NewContract("did:example:rw", "bucket", mallory))
	if c2.Log != c.Log {
		t.Fatalf("the second registry's log is %+v, want %+v", c2.Log, c.Log)
	}
	for _, name := range []string{"a", "x", "y", "z"} {
		mallory.Attest(t, c.ContractID, registrytest.Object(name, []byte(name)))
	}
	cfg.Source = h2.Client
	f := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	if err := f.Ready(); err != nil {
		t.Fatalf("before sync: %v", err)
	}
	err = f.Sync(context.Background())
	var ie *verify.InconsistentError
	if !errors.Is(err, verify.ErrQuarantined) || !errors.As(err, &ie) || ie.Old.Size != 4 || ie.New.Size != 5 {
		t.Fatalf("Sync = %v, want quarantine with the inconsistent checkpoints", err)
	}
	if _, err := f.Lookup("a"); !errors.Is(err, verify.ErrQuarantined) {
		t.Fatalf("Lookup = %v", err)
	}
}
