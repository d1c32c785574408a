package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// Two `provgate registry` processes with --db postgres://… serve one
// registry: a contract created through one is served by the other, with
// the same log key; rotate-key on the URL reaches both; the URL's password
// stays out of the logs.
func TestRegistryCLIOnPostgres(t *testing.T) {
	ctx := context.Background()
	db := testenv.Postgres(t).NewDatabase(t)
	dir := t.TempDir()
	keyFile, adminFile := filepath.Join(dir, "r.jwk"), filepath.Join(dir, "admin")
	if err := os.WriteFile(adminFile, []byte("admin-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withPassword := strings.Replace(db, "postgres@", "postgres:s3cret-pw@", 1) // trust auth ignores it
	a := startRegistryCLI(t, "--db", withPassword, "--key", keyFile, "--admin-token-file", adminFile)
	b := startRegistryCLI(t, "--db", db, "--key", keyFile, "--admin-token-file", adminFile)
	ca, _ := contract.NewClient(a)
	cb, _ := contract.NewClient(b)
	alice, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	spec := registrytest.NewContract("did:example:pg", "bucket")
	spec.Contributors = []contract.Contributor{{ID: "did:example:alice", JWKS: verify.PublicJWKS(alice)}}
	created, err := ca.CreateContract(ctx, "admin-secret", spec)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := cb.GetContract(ctx, spec.ContractID, "")
	if err != nil || got.Log != created.Log {
		t.Fatalf("the other replica serves %+v, %v; want the log %+v", got, err, created.Log)
	}
	cpA, errA := ca.Checkpoint(ctx, spec.ContractID)
	cpB, errB := cb.Checkpoint(ctx, spec.ContractID)
	v, err := verify.NewCheckpointVerifier(created.Log.Origin, created.Log.CheckpointKey)
	if err != nil || errA != nil || errB != nil {
		t.Fatal(err, errA, errB)
	}
	if _, err := v.Parse(cpA); err != nil {
		t.Fatalf("replica A's checkpoint: %v", err)
	}
	if _, err := v.Parse(cpB); err != nil {
		t.Fatalf("replica B's checkpoint: %v", err)
	}

	var pub struct {
		JWK jose.JSONWebKey `json:"jwk"`
	}
	json.Unmarshal([]byte(mustCLI(t, "registry", "rotate-key", "--db", db, "--key", keyFile)), &pub)
	for _, c := range []*contract.Client{ca, cb} {
		keys, err := c.JWKS(ctx, c.RegistryJWKSURL())
		if err != nil || len(keys.Key(pub.JWK.KeyID)) != 1 {
			t.Fatalf("%s JWKS after rotate-key: %+v, %v", c.BaseURL(), keys, err)
		}
	}
	if dbForLog(withPassword) == withPassword || strings.Contains(dbForLog(withPassword), "s3cret-pw") {
		t.Fatalf("dbForLog(%q) = %q keeps the password", withPassword, dbForLog(withPassword))
	}
}
