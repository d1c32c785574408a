package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/audit"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
)

// TestAuditCLI: a ledger synced with `meter replay` is exported, verifies
// (--json), and `audit check` finds the read of a redacted name, from the
// bundle and from the registry alike (exit 1); a garbled bundle is
// refused (exit 1, malformed).
func TestAuditCLI(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:audit-cli", "datasets", alice))
	alice.Attest(t, c.ContractID, registrytest.Object("keep.bin", []byte("keep")))
	alice.Attest(t, c.ContractID, registrytest.Object("gone.bin", []byte("gone")))
	dir := t.TempDir()
	keyFile := newSidecarKeyFile(t, dir)
	enrolment := enrolCLI(t, dir, c.ContractID, keyFile)
	ledger := filepath.Join(dir, "ledger.db")
	l, err := meter.Open(ctx, ledger, meter.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.SetTerms(ctx, c.ContractID, c.Pricing, c.TermsSeq); err != nil {
		t.Fatal(err)
	}
	l.Start(ctx)
	for _, n := range []string{"keep.bin", "gone.bin"} {
		if _, err := l.Record(ctx, meter.Event{Contract: c.ContractID, Name: n, Bytes: 4, Job: "j", TokenID: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	alice.Redact(t, c.ContractID, "gone.bin")
	time.Sleep(10 * time.Millisecond)
	if _, err := l.Record(ctx, meter.Event{Contract: c.ContractID, Name: "gone.bin", Bytes: 4, Job: "j", TokenID: "t"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, "meter", "replay", "--ledger", ledger, "--to", h.URL, "--key", keyFile, "--purpose", "training", "--enrolment", enrolment)

	bundle := filepath.Join(dir, "bundle.json")
	out := mustCLI(t, "audit", "export", "--registry", h.URL, "--ledger", ledger, "--contract", c.ContractID, "--rows", "3", "-o", bundle)
	if !strings.Contains(out, "1 batches") || !strings.Contains(out, "1 rows disclosed") {
		t.Errorf("audit export:\n%s", out)
	}
	var res struct {
		OK       bool         `json:"ok"`
		Totals   audit.Totals `json:"totals"`
		Problems []any        `json:"problems"`
		Rows     int          `json:"rows"`
		Pinned   bool         `json:"pinned"`
	}
	if err := json.Unmarshal([]byte(mustCLI(t, "audit", "verify", "--checkpoint-key", c.Log.CheckpointKey, "--json", bundle)), &res); err != nil {
		t.Fatal(err)
	}
	if !res.OK || !res.Pinned || res.Totals.Events != 3 || res.Totals.Bytes != 12 || res.Rows != 1 || len(res.Problems) != 0 {
		t.Errorf("audit verify --json: %+v", res)
	}

	code, out, errs := cli(t, "audit", "check", "--ledger", ledger, "--bundle", bundle, "--purpose", "training")
	if code != 1 || !strings.Contains(out, "redacted  3    gone.bin") || !strings.Contains(errs, "1 findings") {
		t.Errorf("audit check --bundle: exit %d\n%s%s", code, out, errs)
	}
	code, out, _ = cli(t, "audit", "check", "--ledger", ledger, "--registry", h.URL, "--contract", c.ContractID, "--json")
	var findings []audit.Finding
	if err := json.Unmarshal([]byte(out), &findings); err != nil {
		t.Fatalf("audit check --json: %v\n%s", err, out)
	}
	if code != 1 || len(findings) != 1 || findings[0].Kind != audit.FindingRedacted || findings[0].Seq != 3 {
		t.Errorf("audit check --registry --json: exit %d, %+v", code, findings)
	}

	data, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	garbled := filepath.Join(dir, "garbled.json")
	if err := os.WriteFile(garbled, data[:len(data)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := cli(t, "audit", "verify", garbled); code != 1 || !strings.Contains(errs, "malformed audit bundle") {
		t.Errorf("audit verify of half a bundle: exit %d\n%s", code, errs)
	}
	if code, _, _ := cli(t, "audit", "verify"); code != 2 {
		t.Errorf("audit verify without a bundle: exit %d, want 2", code)
	}

	// The registry's operator drops the receipted batch (entry 5) from its
	// log and restarts it: the export is written, as evidence, and names
	// the batch the log no longer holds.
	var e struct {
		Batches []struct {
			Batch string `json:"batch"`
		} `json:"batches"`
	}
	if err := json.Unmarshal(data, &e); err != nil || len(e.Batches) != 1 {
		t.Fatalf("bundle batches: %v %+v", err, e)
	}
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
		if _, err := db.Exec(q, c.ContractID, 5); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()
	h2 := registrytest.Start(t, registrytest.WithConfig(func(cfg *registry.Config) { cfg.DBPath = h.DBPath }))
	evidence := filepath.Join(dir, "evidence.json")
	code, _, errs = cli(t, "audit", "export", "--registry", h2.URL, "--ledger", ledger, "--contract", c.ContractID, "-o", evidence)
	if code != 1 || !strings.Contains(errs, "wrote "+evidence) || !strings.Contains(errs, "batch "+e.Batches[0].Batch+": receipted entry 5 is beyond the bundle's log of 4 entries") {
		t.Errorf("audit export after the registry dropped a batch: exit %d\n%s", code, errs)
	}
	if code, _, errs := cli(t, "audit", "verify", "--checkpoint-key", c.Log.CheckpointKey, evidence); code != 1 || !strings.Contains(errs, "batch "+e.Batches[0].Batch) {
		t.Errorf("audit verify of the evidence: exit %d\n%s", code, errs)
	}
}

// On a contract with several licensees, `audit check` without --licensee
// cannot tell whose quota, expiry and purposes apply: it refuses (exit 2,
// naming them) rather than leave those checks out unsaid; with one named
// it checks.
func TestAuditCheckNamesTheLicensee(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	nc := registrytest.NewContract("did:example:audit-two", "datasets", alice)
	other := registrytest.DefaultLicensee().Entry()
	other.ID = "did:example:other-lab"
	nc.Licensees = append(nc.Licensees, other)
	c := h.CreateContract(t, nc)
	alice.Attest(t, c.ContractID, registrytest.Object("a.bin", []byte("a")))
	dir := t.TempDir()
	ledger := filepath.Join(dir, "ledger.db")
	l, err := meter.Open(ctx, ledger, meter.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "bundle.json")
	mustCLI(t, "audit", "export", "--registry", h.URL, "--ledger", ledger, "--contract", c.ContractID, "-o", bundle)

	code, out, errs := cli(t, "audit", "check", "--ledger", ledger, "--bundle", bundle)
	if code != 2 || !strings.Contains(errs, "--licensee") || !strings.Contains(errs, other.ID) {
		t.Errorf("audit check on two licensees without --licensee: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs := cli(t, "audit", "check", "--ledger", ledger, "--bundle", bundle, "--licensee", other.ID); code != 0 {
		t.Errorf("audit check --licensee %s: exit %d\n%s%s", other.ID, code, out, errs)
	}
	if code, out, errs := cli(t, "audit", "check", "--ledger", ledger, "--bundle", bundle, "--licensee", "did:example:nobody"); code != 2 {
		t.Errorf("audit check --licensee of no licensee: exit %d\n%s%s", code, out, errs)
	}
}
