package e2e_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// TestRewrittenContractRefused: the registry's stored contract gains a key
// for the contributor (a DB edit, no new terms in the log) and the
// registry appends a replacement signed by that key. A sidecar restarted
// on the same state dir must not serve the forged bytes: the served
// document contradicts the terms its log holds, and the contract is
// quarantined with both as evidence.
func TestRewrittenContractRefused(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.put("img/0001.txt", []byte("alice 1"), false)
	dir := t.TempDir()
	dirs := func(cfg *sidecar.Config) {
		cfg.StateDir, cfg.CacheDir = filepath.Join(dir, "state"), filepath.Join(dir, "cache")
	}
	sc := e.sidecar(dirs)
	obj := "/v1/contracts/" + e.c.ContractID + "/objects/img/0001.txt"
	if b := body(t, sc.URL()+obj); b != "alice 1" {
		t.Fatalf("before: %q", b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sc.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	// The registry rewrites the stored contract: a second key for alice.
	mallory, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", e.reg.DBPath)
	if err != nil {
		t.Fatal(err)
	}
	var raw []byte
	if err := db.QueryRow(`SELECT body FROM contracts WHERE id = ?`, e.c.ContractID).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	var c contract.Contract
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	c.Contributors[0].JWKS.Keys = append(c.Contributors[0].JWKS.Keys, verify.PublicJWKS(mallory).Keys...)
	raw, _ = json.Marshal(&c)
	if _, err := db.Exec(`UPDATE contracts SET body = ? WHERE id = ?`, raw, e.c.ContractID); err != nil {
		t.Fatal(err)
	}
	db.Close()
	forged := registrytest.Object("img/0001.txt", []byte("forged"))
	e.putRaw("img/0001.txt", []byte("forged"))
	jws, err := verify.SignAttestation(mallory, &contract.Attestation{Issuer: e.alice.ID, Subject: e.c.ContractID,
		IssuedAt: time.Now().Unix(), ID: verify.NewID(), Type: contract.Contribution, Object: &forged})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.Client.AppendAttestation(context.Background(), e.c.ContractID, jws); err != nil {
		t.Fatalf("the rewritten registry refused the replacement: %v", err)
	}

	// Restart on the same state dir and cache.
	sc = e.sidecarNoWait(dirs)
	list := sc.URL() + "/v1/contracts"
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(body(t, list), "quarantined") {
		if time.Now().After(deadline) {
			t.Fatalf("sidecar did not quarantine the rewritten contract: %s", body(t, list))
		}
		if b := body(t, sc.URL()+obj); b == "forged" {
			t.Fatal("served the forged bytes")
		}
		time.Sleep(50 * time.Millisecond)
	}
	l := body(t, list)
	if !strings.Contains(l, "differs from the terms its log holds") || !strings.Contains(l, mallory.KeyID) {
		t.Fatalf("evidence does not show the served and the logged terms: %s", l)
	}
	if b := body(t, sc.URL()+obj); b == "forged" {
		t.Fatal("served the forged bytes")
	}
	if code := status(t, sc.URL()+obj); code != 503 {
		t.Fatalf("object of a quarantined contract: %d, want 503", code)
	}
}

// TestContractUpdateReachesRunningSidecar: the provider appends new terms
// (a new price); the running sidecar takes them from the live feed, bills
// the reads after it at the new price, and each ledger row names the terms
// (their log entry) it was billed under; the ledger still verifies.
func TestContractUpdateReachesRunningSidecar(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.put("a.txt", []byte("some text"), false)
	// The outbox ships only when asked, so the row billed under the old
	// terms reaches the registry after the update: it must be counted at
	// the old price, not refused for good.
	sc := e.sidecar(func(c *sidecar.Config) { c.SyncInterval = time.Hour })
	hc := &http.Client{}
	if code, _ := get(t, hc, sc.URL(), e.c.ContractID, "a.txt", 1, "job"); code != http.StatusOK {
		t.Fatalf("read before the update: %d", code)
	}
	next := *e.c
	next.Version, next.Pricing.PriceUSD = "2026-02-01", e.c.Pricing.PriceUSD*4
	updated, err := e.reg.Client.UpdateContract(context.Background(), e.reg.AdminToken, &next, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if updated.TermsSeq <= e.c.TermsSeq || updated.Pricing.PriceUSD != next.Pricing.PriceUSD {
		t.Fatalf("updated contract %+v", updated)
	}
	waitFor(t, "the sidecar to take the new terms", 10*time.Second, func() bool {
		return strings.Contains(body(t, sc.URL()+"/v1/contracts/"+e.c.ContractID), `"version":"2026-02-01"`)
	})
	if code, _ := get(t, hc, sc.URL(), e.c.ContractID, "a.txt", 2, "job"); code != http.StatusOK {
		t.Fatalf("read after the update: %d", code)
	}
	drain(t, sc, e.c.ContractID)
	var rows []meter.ExportRow
	if err := sc.Ledger().Export(context.Background(), 0, func(r meter.ExportRow) error {
		if r.Kind == contract.EventAccess {
			rows = append(rows, r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("access rows %+v, want 2", rows)
	}
	if rows[0].TermsSeq != e.c.TermsSeq || rows[1].TermsSeq != updated.TermsSeq {
		t.Fatalf("rows billed under terms %d and %d, want %d and %d", rows[0].TermsSeq, rows[1].TermsSeq, e.c.TermsSeq, updated.TermsSeq)
	}
	if rows[1].CostNanoUSD != 4*rows[0].CostNanoUSD || rows[0].CostNanoUSD == 0 {
		t.Fatalf("costs %d then %d, want the second 4 times the first", rows[0].CostNanoUSD, rows[1].CostNanoUSD)
	}
	if _, err := sc.Ledger().Verify(context.Background()); err != nil {
		t.Fatalf("ledger verify: %v", err)
	}
	r, err := e.client.MeteringReport(context.Background(), e.c.ContractID, contract.TotalsFilter{Epoch: -1})
	if err != nil {
		t.Fatal(err)
	}
	if want := rows[0].CostNanoUSD + rows[1].CostNanoUSD; r.BilledCostNanoUSD != want || r.BilledSamples != 2 {
		t.Errorf("registry bills %d samples for %d nano-USD, want 2 for %d (each at the price of its terms)", r.BilledSamples, r.BilledCostNanoUSD, want)
	}
}
