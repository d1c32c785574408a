package e2e_test

import (
	"context"
	"database/sql"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// TestForeignReplacementRefusedAndCaught: a second contributor of the
// contract can neither re-contribute nor redact the first one's names at
// the registry (403); when the registry is made to accept the replacement
// anyway (its owners table wiped), the running sidecar quarantines the
// contract with evidence naming the entry and never serves the poisoned
// bytes.
func TestForeignReplacementRefusedAndCaught(t *testing.T) {
	bobKey, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	const bob = "did:example:bob"
	e := newEnv(t, envOpt{contract: func(c *contract.Contract) {
		c.Contributors = append(c.Contributors, contract.Contributor{ID: bob, JWKS: verify.PublicJWKS(bobKey)})
	}})
	e.put("img/0001.txt", []byte("alice 1"), false)
	e.put("img/0002.txt", []byte("alice 2"), false)
	sc := e.sidecar(nil)
	obj := sc.URL() + "/v1/contracts/" + e.c.ContractID + "/objects/img/0001.txt"
	if b := body(t, obj); b != "alice 1" {
		t.Fatalf("before: %q", b)
	}

	ctx := context.Background()
	sign := func(a *contract.Attestation) string {
		a.Issuer, a.Subject, a.IssuedAt, a.ID = bob, e.c.ContractID, time.Now().Unix(), verify.NewID()
		jws, err := verify.SignAttestation(bobKey, a)
		if err != nil {
			t.Fatal(err)
		}
		return jws
	}
	poison := registrytest.Object("img/0001.txt", []byte("poisoned"))
	e.putRaw("img/0001.txt", []byte("poisoned"))
	replace := sign(&contract.Attestation{Type: contract.Contribution, Object: &poison})
	redact := sign(&contract.Attestation{Type: contract.Redaction, Redaction: &contract.RedactionClaim{Name: "img/0002.txt"}})
	for _, jws := range []string{replace, redact} {
		if _, err := e.reg.Client.AppendAttestation(ctx, e.c.ContractID, jws); contract.StatusOf(err) != http.StatusForbidden {
			t.Fatalf("registry accepted a foreign attestation: %v", err)
		}
	}

	// A registry that forgets who owns what.
	db, err := sql.Open("sqlite3", e.reg.DBPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`DELETE FROM owners`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	res, err := e.reg.Client.AppendAttestation(ctx, e.c.ContractID, replace)
	if err != nil {
		t.Fatalf("the tampered registry refused: %v", err)
	}

	list := sc.URL() + "/v1/contracts"
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(body(t, list), "owned by") {
		if time.Now().After(deadline) {
			t.Fatalf("sidecar did not quarantine: %s", body(t, list))
		}
		if b := body(t, obj); b == "poisoned" {
			t.Fatal("served the poisoned bytes")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if l := body(t, list); !strings.Contains(l, "entry "+strconv.FormatUint(res.Seq, 10)) || !strings.Contains(l, bob) {
		t.Fatalf("evidence does not name entry %d and %s: %s", res.Seq, bob, l)
	}
	if code := status(t, obj); code != http.StatusServiceUnavailable {
		t.Fatalf("object of a quarantined contract: %d, want 503", code)
	}
}

func body(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
