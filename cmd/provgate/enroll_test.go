package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// TestEnrollCLI: the operator makes the sidecar's key where serve looks
// for it and hands over only its thumbprint or public key; the licensee's
// enrolment names that key, the contract and the licensee, and verifies
// against the licensee's key.
func TestEnrollCLI(t *testing.T) {
	dir := t.TempDir()
	licFile, scFile, scPub := filepath.Join(dir, "licensee.jwk"), filepath.Join(dir, "state", "sidecar.jwk"), filepath.Join(dir, "sidecar.pub.json")
	os.MkdirAll(filepath.Dir(scFile), 0o700)
	mustCLI(t, "keygen", "--out", licFile)
	pub := mustCLI(t, "keygen", "--out", scFile)
	if err := os.WriteFile(scPub, []byte(pub), 0o644); err != nil {
		t.Fatal(err)
	}
	scKey, err := verify.LoadKey(scFile)
	if err != nil {
		t.Fatal(err)
	}
	jkt, _ := verify.Thumbprint(scKey)
	if !strings.Contains(pub, jkt) {
		t.Fatalf("keygen output lacks the thumbprint %s:\n%s", jkt, pub)
	}
	lic, _ := verify.LoadKey(licFile)
	c := &contract.Contract{ContractID: "did:example:c1", Licensees: []contract.Licensee{{ID: "did:example:acme", JWKS: verify.PublicJWKS(lic)}}}

	byJKT := strings.TrimSpace(mustCLI(t, "enroll", "--licensee", "did:example:acme", "--contract", c.ContractID, "--key", licFile, "--sidecar-jkt", jkt, "--ttl", "2h"))
	out := filepath.Join(dir, "enrolment.jws")
	msg := mustCLI(t, "enroll", "--licensee", "did:example:acme", "--contract", c.ContractID, "--key", licFile, "--sidecar-key", scPub, "--out", out)
	if !strings.Contains(msg, jkt) {
		t.Errorf("enroll --out says %q, want the enrolled thumbprint", msg)
	}
	byFile, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
		t.Errorf("enrolment file mode %v, want 0600", fi.Mode().Perm())
	}
	for name, jws := range map[string]string{"--sidecar-jkt": byJKT, "--sidecar-key (keygen's public output)": strings.TrimSpace(string(byFile))} {
		e, l, err := verify.VerifyEnrolment(jws, c, "did:example:acme", verify.PublicJWKS(lic), jkt, time.Now())
		if err != nil || l.ID != "did:example:acme" {
			t.Fatalf("%s: %v", name, err)
		}
		if name == "--sidecar-jkt" && e.Expiry-e.IssuedAt != int64(2*time.Hour/time.Second) {
			t.Errorf("--ttl 2h: exp-iat = %ds", e.Expiry-e.IssuedAt)
		}
	}
	// A key that is not a signing key is refused.
	if code, _, errs := cli(t, "enroll", "--licensee", "did:example:acme", "--contract", c.ContractID, "--key", scPub, "--sidecar-jkt", jkt); code != 1 || errs == "" {
		t.Errorf("enroll with a public key as --key: exit %d, %q", code, errs)
	}
}
