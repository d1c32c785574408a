package registry_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/witness"
)

// testWitness is a real witness on a fixed loopback address.
type testWitness struct {
	addr, skey, vkey, db string
	logs                 map[string]string
	srv                  *http.Server
	w                    *witness.Witness
}

func newTestWitness(t *testing.T, logVKey string) *testWitness {
	t.Helper()
	skey, vkey, err := witness.GenerateKey("witness.test/r")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return &testWitness{addr: addr, skey: skey, vkey: vkey, db: filepath.Join(t.TempDir(), "w.db"),
		logs: map[string]string{"registrytest/log/*": logVKey}}
}

func (tw *testWitness) url() string { return "http://" + tw.addr }

func (tw *testWitness) start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", tw.addr)
	if err != nil {
		t.Fatal(err)
	}
	if tw.w, err = witness.New(context.Background(), witness.Config{Key: tw.skey, Logs: tw.logs, DBPath: tw.db,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}); err != nil {
		t.Fatal(err)
	}
	tw.srv = &http.Server{Handler: tw.w.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go tw.srv.Serve(ln)
	t.Cleanup(func() {
		tw.srv.Close()
		tw.w.Close()
	})
}

func cosignedAt(t *testing.T, h *registrytest.Harness, id, vkey string, size string) bool {
	t.Helper()
	raw, err := h.Client.Checkpoint(context.Background(), id)
	if err != nil || !bytes.Contains(raw, []byte("\n"+size+"\n")) {
		return false
	}
	v, err := fnote.NewVerifierForCosignatureV1(vkey)
	if err != nil {
		t.Fatal(err)
	}
	_, err = note.Open(raw, note.VerifierList(v))
	return err == nil
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestWitnessDownDoesNotBlockAppends: appends go on at full speed with
// the witness unreachable, and the checkpoint is cosigned once it comes up.
func TestWitnessDownDoesNotBlockAppends(t *testing.T) {
	skey, vkey, err := note.GenerateKey(rand.Reader, "registrytest")
	if err != nil {
		t.Fatal(err)
	}
	tw := newTestWitness(t, vkey)
	h := registrytest.Start(t, registrytest.WithConfig(func(c *registry.Config) {
		c.CheckpointKey = skey
		c.Witnesses = []registry.Witness{{URL: tw.url(), VKey: tw.vkey}}
	}))
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:w1", "bucket", alice))
	start := time.Now()
	for i := range 3 {
		alice.Attest(t, c.ContractID, registrytest.Object("a/"+string(rune('0'+i)), []byte{byte(i)}))
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("3 appends with the witness down took %s", d)
	}
	if cosignedAt(t, h, c.ContractID, tw.vkey, "4") {
		t.Fatal("cosigned with the witness down")
	}
	tw.start(t)
	eventually(t, "the checkpoint to be cosigned once the witness is up", func() bool {
		return cosignedAt(t, h, c.ContractID, tw.vkey, "4") // and the terms
	})
}

// TestWitnessConflictGetsProofFromItsSize: a registry that forgot what the
// witness cosigned sends old 0, gets 409 with the witness's size, and
// retries with a consistency proof from it.
func TestWitnessConflictGetsProofFromItsSize(t *testing.T) {
	skey, vkey, err := note.GenerateKey(rand.Reader, "registrytest")
	if err != nil {
		t.Fatal(err)
	}
	tw := newTestWitness(t, vkey)
	tw.start(t)
	db := filepath.Join(t.TempDir(), "registry.db")
	cfg := func(c *registry.Config) {
		c.DBPath = db
		c.CheckpointKey = skey
		c.Witnesses = []registry.Witness{{URL: tw.url(), VKey: tw.vkey}}
	}
	h := registrytest.Start(t, registrytest.WithConfig(cfg))
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:w2", "bucket", alice))
	alice.Attest(t, c.ContractID, registrytest.Object("a/1", []byte("1")))
	alice.Attest(t, c.ContractID, registrytest.Object("a/2", []byte("2")))
	eventually(t, "size 3 cosigned", func() bool { return cosignedAt(t, h, c.ContractID, tw.vkey, "3") })
	h.Server.Close()

	sdb, err := sql.Open("sqlite3", db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sdb.Exec(`DELETE FROM witness_cosigs`); err != nil {
		t.Fatal(err)
	}
	sdb.Close()

	h2 := registrytest.Start(t, registrytest.WithConfig(cfg))
	alice2 := h2.NewContributor(t, alice.ID)
	alice2.Key = alice.Key
	alice2.Attest(t, c.ContractID, registrytest.Object("a/3", []byte("3")))
	eventually(t, "size 4 cosigned after a 409", func() bool { return cosignedAt(t, h2, c.ContractID, tw.vkey, "4") })
}

// TestCheckpointRightAfterAppendIsCosigned: a reader asking right after
// an append gets the new checkpoint already cosigned (the registry waits
// briefly for witnesses in good standing), so sidecars that require
// witnesses are not refused after every append.
func TestCheckpointRightAfterAppendIsCosigned(t *testing.T) {
	skey, vkey, err := note.GenerateKey(rand.Reader, "registrytest")
	if err != nil {
		t.Fatal(err)
	}
	tw := newTestWitness(t, vkey)
	tw.start(t)
	h := registrytest.Start(t, registrytest.WithConfig(func(c *registry.Config) {
		c.CheckpointKey = skey
		c.Witnesses = []registry.Witness{{URL: tw.url(), VKey: tw.vkey}}
	}))
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:w3", "bucket", alice))
	if !cosignedAt(t, h, c.ContractID, tw.vkey, "1") { // entry 1: the terms
		t.Fatal("a new log's checkpoint is not cosigned when first read")
	}
	for i := 1; i <= 5; i++ {
		alice.Attest(t, c.ContractID, registrytest.Object(fmt.Sprintf("a/%d", i), []byte{byte(i)}))
		if !cosignedAt(t, h, c.ContractID, tw.vkey, fmt.Sprint(i+1)) {
			t.Fatalf("checkpoint %d read right after its append is not cosigned", i)
		}
	}
}
