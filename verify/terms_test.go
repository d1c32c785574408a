package verify_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/verify/verifytest"
)

// TestFollowerTermsInForceAtEachSeq: a key added by a later version of the
// terms verifies the entries after that version, never the ones before;
// the follower persists the versions and exposes the one in force.
func TestFollowerTermsInForceAtEachSeq(t *testing.T) {
	fx := newFixture(t)
	late := &verifytest.Contributor{ID: fx.alice.ID}
	k, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	late.Key = k
	fx.log.AppendAttestation(t, late.Contribution(t, cid, verifytest.Object("early", []byte("e")))) // seq 2: key unknown yet
	v2 := newTerms(t, fx, func(c *contract.Contract) {
		c.Version = "2"
		c.Contributors[0].JWKS.Keys = append(c.Contributors[0].JWKS.Keys, verify.PublicJWKS(k).Keys...)
	})
	fx.log.AppendAttestation(t, late.Contribution(t, cid, verifytest.Object("later", []byte("l")))) // seq 4
	f := fx.follower(t, verify.WithTrustOnFirstUse())
	mustSync(t, f)
	if _, err := f.Lookup("early"); !errors.Is(err, verify.ErrNotFound) {
		t.Fatalf("an entry signed before its key was in the terms: Lookup = %v, want not found", err)
	}
	if e, err := f.Lookup("later"); err != nil || e.Seq != 4 {
		t.Fatalf("Lookup(later) = %+v, %v", e, err)
	}
	if n := counter(t, fx, "provgate_log_entries_rejected_total", "reason", "unknown_key"); n != 1 {
		t.Fatalf("unknown_key rejections: %v, want 1", n)
	}
	if tv := f.Terms(); tv == nil || tv.Seq != v2 || tv.Terms.Version != "2" {
		t.Fatalf("terms in force: %+v, want the version at entry %d", tv, v2)
	}
	if h := f.TermsHistory(); h.Len() != 2 || h.At(1) == nil || h.At(v2) == nil {
		t.Fatalf("history: %+v", h.Versions())
	}

	// A restart has the versions from the state file, before any sync.
	g := mustFollower(t, fx.config(fx.log), verify.WithTrustOnFirstUse())
	if tv := g.Terms(); tv == nil || tv.Seq != v2 {
		t.Fatalf("terms after restart: %+v", tv)
	}
}

// TestFollowerRefusesTermsNotInTheLog: a served contract that differs from
// the logged version it names quarantines the contract with both as
// evidence; a log whose first entry holds no terms is never trusted.
func TestFollowerRefusesTermsNotInTheLog(t *testing.T) {
	fx := newFixture(t)
	contribute(t, fx.log, fx.alice, "a", 1)
	served := *fx.log.Contract
	served.Pricing.PriceUSD = 0 // the registry serves free reads
	cfg := fx.config(fx.log)
	cfg.Contract = &served
	f := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	err := f.Sync(context.Background())
	var te *verify.TermsError
	if !errors.Is(err, verify.ErrQuarantined) || !errors.As(err, &te) || te.Seq != 1 || !strings.Contains(err.Error(), `"price_usd":0.001`) {
		t.Fatalf("Sync = %v, want quarantine with the logged terms as evidence", err)
	}

	legacy := verifytest.NewLog(t, cid, fx.alice.Info())
	legacy.ReplaceFirst(t, contract.EntryAttestation, fx.alice.Contribution(t, cid, verifytest.Object("x", []byte("x"))))
	cfg = verify.FollowerConfig{Contract: legacy.Contract, Source: legacy, Store: mustStore(t, t.TempDir())}
	g := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	if err := g.Sync(context.Background()); err == nil || !strings.Contains(err.Error(), "holds no contract terms") {
		t.Fatalf("Sync of a log without terms = %v", err)
	}
	if g.Ready() == nil {
		t.Fatal("a log without terms is ready")
	}
}
