package registry_test

import (
	"context"
	"database/sql"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
)

// ownersSetup is a contract with two contributors, alice and bob, and a
// curator, carol; alice contributed img/0001.txt and img/0002.txt.
func ownersSetup(t *testing.T) (h *registrytest.Harness, alice, bob, carol *registrytest.Contributor, id string) {
	t.Helper()
	h = registrytest.Start(t)
	alice = h.NewContributor(t, "did:example:alice")
	bob = h.NewContributor(t, "did:example:bob")
	carol = h.NewContributor(t, "did:example:carol")
	c := registrytest.NewContract("did:example:owned", "bucket", alice, bob, carol)
	c.Curators = []string{carol.ID}
	id = h.CreateContract(t, c).ContractID
	alice.Attest(t, id, registrytest.Object("img/0001.txt", []byte("alice 1")))
	alice.Attest(t, id, registrytest.Object("img/0002.txt", []byte("alice 2")))
	return h, alice, bob, carol, id
}

// A second contributor may neither re-contribute, transform into nor
// redact a name the first one attested: 403 naming the owner, and nothing
// is appended.
func TestCrossContributorReplacementRefused(t *testing.T) {
	h, alice, bob, _, id := ownersSetup(t)
	poison := registrytest.Object("img/0001.txt", []byte("poisoned"))
	bob.Attest(t, id, registrytest.Object("bob/src.txt", []byte("src")))
	for name, jws := range map[string]string{
		"contribution": bob.Sign(t, id, &contract.Attestation{Type: contract.Contribution, Object: &poison}),
		"transformation": bob.Sign(t, id, &contract.Attestation{Type: contract.Transformation, Object: &poison,
			Sources: []string{"bob/src.txt"}}),
		"redaction": bob.Sign(t, id, &contract.Attestation{Type: contract.Redaction,
			Redaction: &contract.RedactionClaim{Name: "img/0002.txt", Reason: "mine now"}}),
	} {
		t.Run(name, func(t *testing.T) {
			mustRefuse(t, h, id, jws, http.StatusForbidden, contract.CodeForbidden)
			_, err := h.Client.AppendAttestation(context.Background(), id, jws)
			if !strings.Contains(err.Error(), alice.ID) {
				t.Fatalf("error %q does not name the owner %s", err, alice.ID)
			}
		})
	}
	// The owner still may.
	alice.Attest(t, id, registrytest.Object("img/0001.txt", []byte("alice 1, v2")))
	alice.Redact(t, id, "img/0002.txt")
}

// A curator the contract names may replace and redact anyone's names, and
// ownership stays with the first contributor after a redaction.
func TestCuratorMayReplaceAndRedact(t *testing.T) {
	h, alice, bob, carol, id := ownersSetup(t)
	carol.Attest(t, id, registrytest.Object("img/0001.txt", []byte("curated")))
	carol.Redact(t, id, "img/0002.txt")
	// Redacted, the name is still alice's: bob cannot take it.
	o := registrytest.Object("img/0002.txt", []byte("bob"))
	mustRefuse(t, h, id, bob.Sign(t, id, &contract.Attestation{Type: contract.Contribution, Object: &o}),
		http.StatusForbidden, contract.CodeForbidden)
	alice.Attest(t, id, registrytest.Object("img/0002.txt", []byte("alice again")))
}

// A contract naming a curator that is not a contributor is refused.
func TestCuratorMustBeAContributor(t *testing.T) {
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := registrytest.NewContract("did:example:cur", "bucket", alice)
	c.Curators = []string{"did:example:nobody"}
	_, err := h.Client.CreateContract(context.Background(), h.AdminToken, c)
	if contract.StatusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "curators") {
		t.Fatalf("got %v, want 400 about curators", err)
	}
}

// An attestation signed inside its key's window but appended after the
// window closed is refused at append, as every follower would refuse it.
func TestAppendAfterKeyWindowRefused(t *testing.T) {
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := registrytest.NewContract("did:example:win", "bucket", alice)
	closed := time.Now().Add(-time.Hour).Truncate(time.Second)
	c.Contributors[0].KeyWindows = map[string]contract.KeyWindow{alice.Key.KeyID: {NotAfter: closed}}
	id := h.CreateContract(t, c).ContractID
	o := registrytest.Object("late.txt", []byte("late"))
	jws := alice.Sign(t, id, &contract.Attestation{Type: contract.Contribution, Object: &o,
		IssuedAt: closed.Add(-time.Minute).Unix()}) // backdated into the window
	mustRefuse(t, h, id, jws, http.StatusForbidden, contract.CodeInvalidAttestation)
	_, err := h.Client.AppendAttestation(context.Background(), id, jws)
	if !strings.Contains(err.Error(), "window") {
		t.Fatalf("error %q does not say the key's window closed", err)
	}
	// An iat outside the window is refused too.
	jws = alice.Sign(t, id, &contract.Attestation{Type: contract.Contribution, Object: &o,
		IssuedAt: time.Now().Unix()})
	mustRefuse(t, h, id, jws, http.StatusForbidden, contract.CodeInvalidAttestation)
}

// A database from before names had owners gets them from its log when it
// is opened: the first attester of each name owns it.
func TestOwnersBackfilledFromTheLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	atPath := registrytest.WithConfig(func(c *registry.Config) { c.DBPath = path })
	h1 := registrytest.Start(t, atPath)
	alice := h1.NewContributor(t, "did:example:alice")
	bob := h1.NewContributor(t, "did:example:bob")
	id := h1.CreateContract(t, registrytest.NewContract("did:example:old", "bucket", alice, bob)).ContractID
	alice.Attest(t, id, registrytest.Object("img/0001.txt", []byte("alice")))
	h1.Server.Close()
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`DROP TABLE owners`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	h2 := registrytest.Start(t, atPath)
	o := registrytest.Object("img/0001.txt", []byte("poisoned"))
	_, err = h2.Client.AppendAttestation(context.Background(), id, bob.Sign(t, id, &contract.Attestation{Type: contract.Contribution, Object: &o}))
	if contract.StatusOf(err) != http.StatusForbidden || !strings.Contains(err.Error(), alice.ID) {
		t.Fatalf("bob replacing alice's name after the upgrade: %v, want 403 naming alice", err)
	}
}
