package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// TestRedactAndRevokeKeyCLI is the contributor's erasure workflow with the
// CLI alone, against a real registry, MinIO and sidecar: contribute (with
// the old --prefix spelling), redact one name (the sidecar answers 451 and
// drops its bytes), then revoke the first key retroactively (what it
// signed is 404; what the second key signed still serves).
func TestRedactAndRevokeKeyCLI(t *testing.T) {
	mio := testenv.MinIO(t)
	bucket := mio.Bucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", testenv.MinIOAccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testenv.MinIOSecretKey)
	t.Setenv("AWS_REGION", testenv.MinIORegion)
	dir := t.TempDir()

	keys := map[string]jose.JSONWebKey{}
	for _, k := range []string{"old", "new"} {
		var pub struct {
			JWK jose.JSONWebKey `json:"jwk"`
		}
		if err := json.Unmarshal([]byte(mustCLI(t, "keygen", "--out", filepath.Join(dir, k+".jwk"))), &pub); err != nil {
			t.Fatal(err)
		}
		keys[k] = pub.JWK
	}
	adminFile := filepath.Join(dir, "admin-token")
	url := startRegistryCLI(t, "--db", filepath.Join(dir, "registry.db"), "--key", filepath.Join(dir, "registry.jwk"),
		"--admin-token-file", adminFile, "--s3-endpoint", mio.URL(), "--name", "redact.test")
	const id = "did:example:redact-cli"
	const who = "did:example:contributor-9"
	spec := contract.Contract{
		ContractID: id, Version: "2026-01-15", License: "cc-by-4.0",
		Pricing:      contract.Pricing{Unit: contract.UnitSample, PriceUSD: 0.0005},
		Usage:        contract.Usage{Purposes: []string{"training"}},
		Contributors: []contract.Contributor{{ID: who, JWKS: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{keys["old"], keys["new"]}}}},
		Licensees:    []contract.Licensee{registrytest.DefaultLicensee().Entry()},
		Origin:       contract.Origin{Bucket: bucket, Prefix: "store/"},
	}
	b, _ := json.Marshal(spec)
	contractFile := filepath.Join(dir, "contract.json")
	os.WriteFile(contractFile, b, 0o644)
	mustCLI(t, "contract", "create", "--registry", url, "--admin-token-file", adminFile, "--file", contractFile)

	write := func(sub string, names ...string) string {
		d := filepath.Join(dir, sub)
		for _, n := range names {
			os.MkdirAll(d, 0o755)
			os.WriteFile(filepath.Join(d, n), []byte("bytes of "+n), 0o644)
		}
		return d
	}
	contribute := func(key, namePrefixFlag, path string) {
		mustCLI(t, "contribute", "--registry", url, "--contract", id, "--key", filepath.Join(dir, key+".jwk"),
			"--s3-endpoint", mio.URL(), namePrefixFlag, "people", path)
	}
	contribute("old", "--prefix", write("a", "alice.txt", "bob.txt"))
	contribute("new", "--name-prefix", write("b", "carol.txt"))

	sc := startSidecar(t, url, id, mio.URL())
	get := func(name string) int {
		resp, err := http.Get(sc.URL() + "/v1/contracts/" + id + "/objects/" + name)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, n := range []string{"people/alice.txt", "people/bob.txt", "people/carol.txt"} {
		if code := get(n); code != http.StatusOK {
			t.Fatalf("%s before: %d", n, code)
		}
	}
	cached := sc.Cache().Stats().Entries

	out := mustCLI(t, "redact", "--registry", url, "--contract", id, "--key", filepath.Join(dir, "old.jwk"),
		"--reason", "erasure request", "people/alice.txt")
	if !strings.Contains(out, "redacted people/alice.txt in "+id+" (entry ") {
		t.Errorf("redact printed %q", out)
	}
	waitUntil(t, "the redaction to reach the sidecar", func() bool { return get("people/alice.txt") == http.StatusUnavailableForLegalReasons })
	if n := sc.Cache().Stats().Entries; n != cached-1 {
		t.Errorf("%d cache entries after the redaction, want %d", n, cached-1)
	}
	// Redacting a name the log does not hold is refused, with exit 1.
	if code, _, errs := cli(t, "redact", "--registry", url, "--contract", id, "--key", filepath.Join(dir, "old.jwk"), "people/nobody.txt"); code != 1 || !strings.Contains(errs, "404") {
		t.Errorf("redact of an unknown name: exit %d, %s", code, errs)
	}
	if code, _, _ := cli(t, "redact", "--registry", url, "--contract", id, "--key", filepath.Join(dir, "old.jwk")); code != 2 {
		t.Errorf("redact without a name: exit %d, want 2", code)
	}

	out = mustCLI(t, "revoke-key", "--registry", url, "--contract", id, "--key", filepath.Join(dir, "new.jwk"),
		"--kid", keys["old"].KeyID, "--retroactive", "--reason", "laptop stolen")
	if !strings.Contains(out, "revoked key "+keys["old"].KeyID+" of "+who) || !strings.Contains(out, "retroactively") {
		t.Errorf("revoke-key printed %q", out)
	}
	waitUntil(t, "the revocation to reach the sidecar", func() bool { return get("people/bob.txt") == http.StatusNotFound })
	if code := get("people/carol.txt"); code != http.StatusOK {
		t.Errorf("object signed by the other key after the revocation: %d", code)
	}
	if n := sc.Cache().Stats().Entries; n != 1 {
		t.Errorf("%d cache entries after the retroactive revocation, want 1 (carol)", n)
	}
	// The revoked key can sign nothing more.
	if code, _, errs := cli(t, "redact", "--registry", url, "--contract", id, "--key", filepath.Join(dir, "old.jwk"), "people/carol.txt"); code != 1 {
		t.Errorf("redact with a revoked key: exit %d, %s", code, errs)
	}
	if out := mustCLI(t, "verify", "log", "--registry", url, "--contract", id); !strings.Contains(out, "OK") {
		t.Errorf("verify log after redaction and revocation: %s", out)
	}
}

func startSidecar(t *testing.T, registry, id, s3 string) *sidecar.Sidecar {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := sidecar.Start(ctx, sidecar.Config{Registry: registry, Contracts: []string{id}, Purpose: "training",
		Key: key, Enrolments: []string{registrytest.DefaultLicensee().Enrol(t, id, key)},
		StateDir: filepath.Join(dir, "state"), CacheDir: filepath.Join(dir, "cache"), CacheSize: 1 << 30,
		Listen: "127.0.0.1:0", TrustOnFirstUse: true, S3Endpoint: s3, S3Region: testenv.MinIORegion,
		PollInterval: 100 * time.Millisecond, SyncInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sc.Shutdown(ctx)
	})
	if err := sc.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return sc
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
