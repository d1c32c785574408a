package e2e_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/proxy"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/witness"
)

// TestSplitViewRefusedBySidecar: registry A and registry B share the
// checkpoint key and the contract, so they are one log to a sidecar, and
// they show two trees of the same size. The witness both ask cosigns only
// A's. `provgate serve --witness` on A serves; a sidecar requiring the
// witness on B refuses B's checkpoint and serves nothing from it, while a
// sidecar on B without witnesses serves the forged object (the attack).
func TestSplitViewRefusedBySidecar(t *testing.T) {
	ctx := context.Background()
	skey, vkey, err := note.GenerateKey(rand.Reader, "registrytest")
	if err != nil {
		t.Fatal(err)
	}
	wskey, wvkey, err := witness.GenerateKey("witness.e2e/w1")
	if err != nil {
		t.Fatal(err)
	}
	w, err := witness.New(ctx, witness.Config{Key: wskey, DBPath: filepath.Join(t.TempDir(), "witness.db"),
		Logs: map[string]string{"registrytest/log/*": vkey}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ws := httptest.NewServer(w.Handler())
	t.Cleanup(func() { ws.Close(); w.Close() })
	shared := func(c *registry.Config) {
		c.CheckpointKey = skey
		c.Witnesses = []registry.Witness{{URL: ws.URL, VKey: wvkey}}
	}

	e := newEnv(t, envOpt{regConfig: shared})
	e.put("img/0001.txt", []byte("honest bytes"), false)
	cosigned := func(id, size string) bool {
		raw, err := e.reg.Client.Checkpoint(ctx, id)
		if err != nil || !bytes.Contains(raw, []byte("\n"+size+"\n")) {
			return false
		}
		v, _ := fnote.NewVerifierForCosignatureV1(wvkey)
		_, err = note.Open(raw, note.VerifierList(v))
		return err == nil
	}
	waitFor(t, "A's checkpoint cosigned", 20*time.Second, func() bool { return cosigned(e.c.ContractID, "2") }) // the terms and one object

	// Registry B: same key, same contract, another entry 1.
	var logsB testenv.SyncBuffer
	b := registrytest.Start(t, registrytest.WithMinIO(e.minio.Endpoint, testenv.MinIOAccessKey, testenv.MinIOSecretKey),
		registrytest.WithConfig(func(c *registry.Config) {
			shared(c)
			c.Logger = slog.New(slog.NewTextHandler(&logsB, nil))
		}))
	aliceB := b.NewContributor(t, e.alice.ID)
	aliceB.Key = e.alice.Key
	cb := registrytest.NewContract(e.c.ContractID, e.bucket, aliceB)
	cb.Origin.Prefix = e.c.Origin.Prefix
	cB := b.CreateContract(t, cb)
	if cB.Log != e.c.Log {
		t.Fatalf("B must look like the same log: %+v vs %+v", cB.Log, e.c.Log)
	}
	e.putRaw("img/evil.txt", []byte("poisoned bytes"))
	aliceB.Attest(t, cB.ContractID, registrytest.Object("img/evil.txt", []byte("poisoned bytes")))
	waitFor(t, "the witness to refuse B's tree", 20*time.Second, func() bool { return strings.Contains(logsB.String(), "witness answered 422") })

	// The sidecar process on A, requiring the witness, serves.
	pa := e.startServe(t, "--witness", wvkey, "--witness-quorum", "1")
	if code, body := get(t, http.DefaultClient, pa.URL, e.c.ContractID, "img/0001.txt", 1, "w"); code != 200 || string(body) != "honest bytes" {
		t.Fatalf("sidecar on A: %d %q", code, body)
	}

	policy, err := verify.NewWitnessPolicy([]string{wvkey}, 0)
	if err != nil {
		t.Fatal(err)
	}
	onB := func(p *verify.WitnessPolicy) *sidecar.Sidecar {
		return e.sidecarNoWait(func(c *sidecar.Config) {
			c.Registry = b.URL
			c.Witnesses = p
		})
	}
	// A sidecar on B without witnesses trusts the fork: the attack.
	naive := onB(nil)
	waitFor(t, "the naive sidecar to trust B", 20*time.Second, func() bool {
		return contractState(t, naive.URL(), e.c.ContractID).State == proxy.StateReady
	})
	if code, body := get(t, http.DefaultClient, naive.URL(), e.c.ContractID, "img/evil.txt", 1, "w"); code != 200 || string(body) != "poisoned bytes" {
		t.Fatalf("naive sidecar on B: %d %q (the fork should have been served without witnesses)", code, body)
	}

	// The sidecar on B that requires the witness refuses B's checkpoint.
	guarded := onB(policy)
	waitFor(t, "the guarded sidecar to report the missing quorum", 20*time.Second, func() bool {
		st := contractState(t, guarded.URL(), e.c.ContractID)
		return strings.Contains(st.Error, "witness quorum")
	})
	time.Sleep(500 * time.Millisecond)
	st := contractState(t, guarded.URL(), e.c.ContractID)
	if st.State != proxy.StateVerifying || st.TreeSize != 0 {
		t.Fatalf("guarded sidecar on B: %+v, want verifying with nothing verified", st)
	}
	for _, name := range []string{"img/evil.txt", "img/0001.txt"} {
		if code, body := get(t, http.DefaultClient, guarded.URL(), e.c.ContractID, name, 1, "w"); code != http.StatusServiceUnavailable {
			t.Fatalf("guarded sidecar on B served %s: %d %q, want 503", name, code, body)
		}
	}
}
