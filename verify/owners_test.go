package verify_test

import (
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/verify/verifytest"
)

// A registry that accepted a second contributor's replacement or
// redaction of a name the first one owns is caught on replay: the contract
// is quarantined with evidence naming the entry, the name, its owner and
// the intruder, and the owner's bytes are never replaced.
func TestFollowerQuarantinesForeignReplacement(t *testing.T) {
	for _, tc := range []struct {
		name   string
		attack func(t *testing.T, fx *fixture, bob *verifytest.Contributor) string
	}{
		{"contribution", func(t *testing.T, fx *fixture, bob *verifytest.Contributor) string {
			return bob.Contribution(t, cid, verifytest.Object("img/0001.txt", []byte("poisoned")))
		}},
		{"redaction", func(t *testing.T, fx *fixture, bob *verifytest.Contributor) string {
			return bob.Redaction(t, cid, "img/0002.txt", 0)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bob := verifytest.NewContributor(t, "did:example:bob", jose.EdDSA)
			fx := newFixture(t, bob.Info())
			fx.log.AppendAttestation(t, fx.alice.Contribution(t, cid, verifytest.Object("img/0001.txt", []byte("alice 1"))))
			fx.log.AppendAttestation(t, fx.alice.Contribution(t, cid, verifytest.Object("img/0002.txt", []byte("alice 2"))))
			srv := newReplayServer(t, fx.log)
			cfg := fx.config(srv.client(t))
			f := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
			mustSync(t, f)

			seq := fx.log.AppendAttestation(t, tc.attack(t, fx, bob))
			err := f.Sync(t.Context())
			if !errors.Is(err, verify.ErrQuarantined) {
				t.Fatalf("sync after a foreign %s: %v, want quarantine", tc.name, err)
			}
			var oe *verify.OwnershipError
			if !errors.As(err, &oe) || oe.Seq != seq || oe.Owner != fx.alice.ID || oe.Issuer != bob.ID {
				t.Fatalf("evidence %v (%+v), want an OwnershipError for entry %d", err, oe, seq)
			}
			if st := f.Status(); st.State != verify.StateQuarantined || !strings.Contains(st.Quarantine, "did:example:bob") {
				t.Fatalf("status %+v", st)
			}
			// The evidence survives a restart.
			g := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
			if err := g.Ready(); !errors.Is(err, verify.ErrQuarantined) || !strings.Contains(err.Error(), "owned by") {
				t.Fatalf("after restart: %v", err)
			}
		})
	}
}

// Ownership survives restarts and redactions, and a curator the contract
// names may replace and redact what others own.
func TestFollowerOwnershipAcrossRestartAndCurator(t *testing.T) {
	bob := verifytest.NewContributor(t, "did:example:bob", jose.EdDSA)
	carol := verifytest.NewContributor(t, "did:example:carol", jose.EdDSA)
	fx := newFixture(t, bob.Info(), carol.Info())
	fx.log.Contract.Curators = []string{carol.ID}
	fx.log.SetTerms(t, fx.log.Contract)
	fx.log.AppendAttestation(t, fx.alice.Contribution(t, cid, verifytest.Object("a.txt", []byte("a"))))
	fx.log.AppendAttestation(t, fx.alice.Redaction(t, cid, "a.txt", 0))
	f := mustFollower(t, fx.config(fx.log), verify.WithTrustOnFirstUse())
	mustSync(t, f)

	// A restart forgets nothing: the redacted name is still alice's.
	g := mustFollower(t, fx.config(fx.log), verify.WithTrustOnFirstUse())
	fx.log.AppendAttestation(t, carol.Contribution(t, cid, verifytest.Object("a.txt", []byte("curated"))))
	fx.log.AppendAttestation(t, fx.alice.Contribution(t, cid, verifytest.Object("b.txt", []byte("b"))))
	fx.log.AppendAttestation(t, carol.Redaction(t, cid, "b.txt", 0))
	mustSync(t, g)
	if e, err := g.Lookup("a.txt"); err != nil || e.Issuer != carol.ID {
		t.Fatalf("curated a.txt: %+v, %v", e, err)
	}
	fx.log.AppendAttestation(t, bob.Contribution(t, cid, verifytest.Object("a.txt", []byte("bob"))))
	h := mustFollower(t, fx.config(fx.log), verify.WithTrustOnFirstUse())
	var oe *verify.OwnershipError
	if err := h.Sync(t.Context()); !errors.As(err, &oe) || oe.Name != "a.txt" || oe.Owner != fx.alice.ID {
		t.Fatalf("bob taking a redacted name of alice's after a restart: %v", err)
	}
}

// A state database from before names had owners takes each live name's
// current issuer as its owner when it is opened.
func TestStateFromBeforeOwnersIsSeeded(t *testing.T) {
	bob := verifytest.NewContributor(t, "did:example:bob", jose.EdDSA)
	fx := newFixture(t, bob.Info())
	fx.log.AppendAttestation(t, fx.alice.Contribution(t, cid, verifytest.Object("a.txt", []byte("a"))))
	mustSync(t, fx.follower(t, verify.WithTrustOnFirstUse()))
	db, err := sql.Open("sqlite3", filepath.Join(fx.dir, verify.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`DROP TABLE owners`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	cfg := fx.config(fx.log)
	cfg.Store = mustStore(t, fx.dir)
	f := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	seq := fx.log.AppendAttestation(t, bob.Contribution(t, cid, verifytest.Object("a.txt", []byte("bob"))))
	var oe *verify.OwnershipError
	if err := f.Sync(t.Context()); !errors.As(err, &oe) || oe.Seq != seq || oe.Owner != fx.alice.ID {
		t.Fatalf("after the upgrade: %v, want an OwnershipError for entry %d", err, seq)
	}
}

// A state database from before a live name's owner was kept in its
// manifest row (every owner in the owners table, no owner columns) keeps
// its owners once opened: a replacement by the owner keeps the name hers,
// and another contributor's batch naming it is quarantined.
func TestStateFromBeforeOwnersInRowsKeepsOwners(t *testing.T) {
	bob := verifytest.NewContributor(t, "did:example:bob", jose.EdDSA)
	fx := newFixture(t, bob.Info())
	jws, manifest := fx.alice.Batch(t, cid, batchObjs("a", 2))
	first := fx.log.AppendBatch(t, jws, manifest)
	mustSync(t, fx.follower(t, verify.WithTrustOnFirstUse()))
	db, err := sql.Open("sqlite3", filepath.Join(fx.dir, verify.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT OR IGNORE INTO owners (contract, name, issuer, seq) SELECT contract, name, owner_issuer, owner_seq FROM manifest`,
		`ALTER TABLE manifest DROP COLUMN owner_issuer`,
		`ALTER TABLE manifest DROP COLUMN owner_seq`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()

	cfg := fx.config(fx.log)
	cfg.Store = mustStore(t, fx.dir)
	f := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	jws, manifest = fx.alice.Batch(t, cid, []contract.ObjectClaim{*verifytest.Object("a/0", []byte("v2"))})
	fx.log.AppendBatch(t, jws, manifest)
	mustSync(t, f)
	if st := f.Status(); st.Objects != 2 {
		t.Fatalf("status %+v, want 2 objects", st)
	}
	bj, bm := bob.Batch(t, cid, []contract.ObjectClaim{*verifytest.Object("a/0", []byte("poison"))})
	seq := fx.log.AppendBatch(t, bj, bm)
	var oe *verify.OwnershipError
	if err := f.Sync(t.Context()); !errors.As(err, &oe) || oe.Seq != seq || oe.Owner != fx.alice.ID || oe.OwnedSince != first {
		t.Fatalf("after the upgrade: %v (%+v), want an OwnershipError for entry %d, owner alice since %d", err, oe, seq, first)
	}
}
