package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// TestMeterReconcileCLI syncs three batches with `meter replay`, then
// `meter reconcile` agrees with the registry (exit 0). The registry's
// operator then drops the last receipted batch from its database (the
// entry, its Merkle node, the checkpoints over it and its counted events)
// and restarts it: reconcile exits 1 naming that batch.
func TestMeterReconcileCLI(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:reconcile-cli", "datasets", alice))
	dir := t.TempDir()
	keyFile := newSidecarKeyFile(t, dir)
	enrolment := enrolCLI(t, dir, c.ContractID, keyFile)
	ledger := filepath.Join(dir, "ledger.db")
	for round := range 3 {
		l, err := meter.Open(ctx, ledger, meter.Config{})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.SetPricing(ctx, c.ContractID, c.Pricing); err != nil {
			t.Fatal(err)
		}
		l.Start(ctx)
		for i := range 10 {
			ev := meter.Event{Contract: c.ContractID, Name: fmt.Sprintf("obj-%d-%d", round, i), Bytes: 100, Job: "job-1", TokenID: "t"}
			if _, err := l.Submit(ctx, ev); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		mustCLI(t, "meter", "replay", "--ledger", ledger, "--to", h.URL, "--key", keyFile, "--purpose", "training", "--enrolment", enrolment)
	}

	out := mustCLI(t, "meter", "reconcile", "--ledger", ledger, "--registry", h.URL)
	if !strings.Contains(out, c.ContractID) || strings.Contains(out, "KIND") {
		t.Errorf("reconcile of a clean ledger:\n%s", out)
	}
	var res struct {
		OK        bool                     `json:"ok"`
		Contracts []*meter.ReconcileResult `json:"contracts"`
	}
	if err := json.Unmarshal([]byte(mustCLI(t, "meter", "reconcile", "--ledger", ledger, "--registry", h.URL, "--json")), &res); err != nil {
		t.Fatal(err)
	}
	if !res.OK || len(res.Contracts) != 1 || res.Contracts[0].Receipts != 3 || res.Contracts[0].LedgerEvents != 30 || res.Contracts[0].RegistryEvents != 30 {
		t.Fatalf("reconcile --json of a clean ledger: %+v", res.Contracts[0])
	}

	l, err := meter.OpenReadOnly(ctx, ledger)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := l.Receipts(ctx, c.ContractID)
	l.Close()
	if err != nil || len(rs) != 3 {
		t.Fatalf("receipts: %d, %v", len(rs), err)
	}
	last := rs[2]
	db, err := sql.Open("sqlite3", "file:"+h.DBPath+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"DELETE FROM entries WHERE contract = ? AND seq >= ?",
		"DELETE FROM nodes WHERE contract = ? AND level = 0 AND idx >= ? - 1",
		"DELETE FROM checkpoints WHERE contract = ? AND size >= ?",
		"DELETE FROM metering_events WHERE contract = ? AND seq >= ?",
	} {
		if _, err := db.Exec(q, c.ContractID, last.Seq()); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()
	h2 := registrytest.Start(t, registrytest.WithConfig(func(cfg *registry.Config) { cfg.DBPath = h.DBPath }))

	code, out, errs := cli(t, "meter", "reconcile", "--ledger", ledger, "--registry", h2.URL, "--contract", c.ContractID)
	if code != 1 || !strings.Contains(out, last.Batch) || !strings.Contains(out, "missing") || !strings.Contains(errs, "difference") {
		t.Errorf("reconcile after the registry dropped batch %s: exit %d\nstdout: %s\nstderr: %s", last.Batch, code, out, errs)
	}
	t.Logf("reconcile after the drop:\n%s", out)
	for _, r := range rs[:2] {
		if strings.Contains(out, r.Batch) {
			t.Errorf("batch %s, still in the log, named:\n%s", r.Batch, out)
		}
	}
}

// newSidecarKeyFile writes a fresh sidecar key to dir/sidecar.jwk.
func newSidecarKeyFile(t *testing.T, dir string) string {
	t.Helper()
	keyFile := filepath.Join(dir, "sidecar.jwk")
	key, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.SaveKey(keyFile, key); err != nil {
		t.Fatal(err)
	}
	return keyFile
}

// enrolCLI has the default licensee enrol the sidecar key in keyFile under
// contractID with provgate enroll, and returns the enrolment file.
func enrolCLI(t *testing.T, dir, contractID, keyFile string) string {
	t.Helper()
	licFile, enrolment := filepath.Join(dir, "licensee.jwk"), filepath.Join(dir, "enrolment.jws")
	if err := verify.SaveKey(licFile, registrytest.DefaultLicensee().Key); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, "enroll", "--licensee", registrytest.DefaultLicenseeID, "--contract", contractID, "--key", licFile,
		"--sidecar-key", keyFile, "--ttl", "1h", "--out", enrolment)
	return enrolment
}
