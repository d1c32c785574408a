package e2e_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/sidecar"
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
