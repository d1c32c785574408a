package verify_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/verify/verifytest"
)

func TestFollowerManifest(t *testing.T) {
	fx := newFixture(t)
	contribute(t, fx.log, fx.alice, "a", 3)
	fx.log.Append(t, contract.EntryMetering, "not.a.jws", "ev-1") // chain and Merkle only
	fx.log.AppendAttestation(t, fx.alice.Redaction(t, cid, "a-1", 0))
	fx.log.AppendAttestation(t, fx.alice.Redaction(t, cid, "never-there", 0))

	f := fx.follower(t, verify.WithTrustOnFirstUse())
	if err := f.Ready(); !errors.Is(err, verify.ErrNotVerified) {
		t.Fatalf("before sync: Ready() = %v, want ErrNotVerified", err)
	}
	if _, err := f.Lookup("a-0"); !errors.Is(err, verify.ErrNotVerified) {
		t.Fatalf("before sync: Lookup = %v, want ErrNotVerified", err)
	}
	mustSync(t, f)

	got, err := f.Lookup("a-0")
	if err != nil {
		t.Fatalf("Lookup(a-0): %v", err)
	}
	want := verifytest.Object("a-0", []byte("a-0"))
	if got.ObjectClaim != *want || got.Seq != 2 || got.Issuer != fx.alice.ID || got.KeyID != fx.alice.Key.KeyID {
		t.Fatalf("Lookup(a-0) = %+v, want %+v seq 2 (entry 1 holds the terms)", got, want)
	}
	for _, tc := range []struct {
		name string
		want error
	}{
		{"a-1", verify.ErrRedacted},
		{"never-there", verify.ErrRedacted},
		{"a-9", verify.ErrNotFound},
	} {
		if _, err := f.Lookup(tc.name); !errors.Is(err, tc.want) {
			t.Errorf("Lookup(%s) = %v, want %v", tc.name, err, tc.want)
		}
	}
	if got := fx.purged(); !slices.Equal(got, []string{"a-1"}) {
		t.Errorf("OnRedact got %v, want [a-1]", got)
	}
	var names []string
	for _, e := range f.Manifest().Entries() {
		names = append(names, e.Name)
	}
	if !slices.Equal(names, []string{"a-0", "a-2"}) {
		t.Errorf("manifest %v, want [a-0 a-2]", names)
	}
	st := f.Status()
	if st.State != verify.StateReady || st.Size != 7 || st.Objects != 2 || st.Redacted != 2 || st.Rejected != 0 {
		t.Errorf("status %+v", st)
	}
	if n := counter(t, fx, "provgate_log_entries_verified_total"); n != 7 {
		t.Errorf("entries verified metric %v, want 7", n)
	}

	// A name may come back after its redaction, as a new contribution.
	fx.log.AppendAttestation(t, fx.alice.Contribution(t, cid, verifytest.Object("a-1", []byte("v2"))))
	// A second contribution of a live name is its new version (as the
	// registry records it); the cache must drop the old bytes.
	v2 := verifytest.Object("a-0", []byte("other"))
	fx.log.AppendAttestation(t, fx.alice.Contribution(t, cid, v2))
	mustSync(t, f)
	if e, err := f.Lookup("a-1"); err != nil || e.Seq != 8 {
		t.Fatalf("re-added a-1: %+v, %v", e, err)
	}
	if e, _ := f.Lookup("a-0"); e.Seq != 9 || e.DecodedSHA256 != v2.DecodedSHA256 {
		t.Fatalf("new version of a-0: %+v", e)
	}
	if got := fx.purged(); !slices.Equal(got, []string{"a-1", "a-0"}) {
		t.Errorf("OnRedact got %v, want [a-1 a-0]", got)
	}
}

func TestFollowerFirstContact(t *testing.T) {
	fx := newFixture(t)
	contribute(t, fx.log, fx.alice, "a", 4)
	pin := fx.log.SignCheckpoint(t, 2)

	t.Run("no trust anchor", func(t *testing.T) {
		f := mustFollower(t, verify.FollowerConfig{Contract: fx.log.Contract, Source: fx.log, Store: mustStore(t, t.TempDir())})
		if err := f.Sync(context.Background()); !errors.Is(err, verify.ErrNoTrustAnchor) {
			t.Fatalf("Sync = %v, want ErrNoTrustAnchor", err)
		}
		if err := f.Ready(); !errors.Is(err, verify.ErrNotVerified) {
			t.Fatalf("Ready = %v", err)
		}
	})
	t.Run("pinned", func(t *testing.T) {
		f := mustFollower(t, verify.FollowerConfig{Contract: fx.log.Contract, Source: fx.log, Store: mustStore(t, t.TempDir())},
			verify.WithPinnedCheckpoint(pin))
		mustSync(t, f)
		if st := f.Status(); st.State != verify.StateReady || st.Size != 5 {
			t.Fatalf("status %+v", st)
		}
	})
	t.Run("pinned, log forked below the pin", func(t *testing.T) {
		forked := fx.log.Fork(1)
		contribute(t, forked, fx.alice, "evil", 3)
		f := mustFollower(t, verify.FollowerConfig{Contract: fx.log.Contract, Source: forked, Store: mustStore(t, t.TempDir())},
			verify.WithPinnedCheckpoint(pin))
		err := f.Sync(context.Background())
		var ie *verify.InconsistentError
		if !errors.Is(err, verify.ErrQuarantined) || !errors.As(err, &ie) || ie.Old.Size != 2 || ie.New.Size != 4 {
			t.Fatalf("Sync = %v, want quarantine with the inconsistent checkpoints as evidence", err)
		}
	})
	t.Run("pin of another log", func(t *testing.T) {
		other := verifytest.NewLog(t, cid, fx.alice.Info())
		_, err := verify.NewFollower(context.Background(), verify.FollowerConfig{Contract: fx.log.Contract, Source: fx.log, Store: mustStore(t, t.TempDir())},
			verify.WithPinnedCheckpoint(other.SignCheckpoint(t, 0)))
		if !errors.Is(err, verify.ErrCheckpoint) {
			t.Fatalf("NewFollower = %v, want ErrCheckpoint", err)
		}
	})
}

// tamper serves a log but lets a test change pages or checkpoints.
type tamper struct {
	verify.LogSource
	page       func(*contract.EventsPage)
	checkpoint func() []byte
}

func (s *tamper) Events(ctx context.Context, id string, since uint64, limit int) (*contract.EventsPage, error) {
	p, err := s.LogSource.Events(ctx, id, since, limit)
	if err == nil && s.page != nil {
		s.page(p)
	}
	return p, err
}

func (s *tamper) Checkpoint(ctx context.Context, id string) ([]byte, error) {
	if s.checkpoint != nil {
		return s.checkpoint(), nil
	}
	return s.LogSource.Checkpoint(ctx, id)
}

// TestFollowerQuarantine: every way a registry can serve a log that is not
// the one it signed, or that rewrites what was trusted, quarantines the
// contract: refused, with evidence, a loud metric, and it survives restart.
func TestFollowerQuarantine(t *testing.T) {
	for _, tc := range []struct {
		name string
		// serve returns what the registry serves after 6 trusted entries.
		serve  func(t *testing.T, l *verifytest.Log, c *verifytest.Contributor) verify.LogSource
		reason string
		check  func(t *testing.T, err error)
	}{
		{"rollback", func(t *testing.T, l *verifytest.Log, c *verifytest.Contributor) verify.LogSource {
			return l.Fork(4)
		}, "rollback", func(t *testing.T, err error) {
			var ie *verify.InconsistentError
			if !errors.As(err, &ie) || ie.Old.Size != 6 || ie.New.Size != 4 || !errors.Is(err, verify.ErrRollback) {
				t.Fatalf("evidence: %v", err)
			}
		}},
		{"fork, same size", func(t *testing.T, l *verifytest.Log, c *verifytest.Contributor) verify.LogSource {
			f := l.Fork(5)
			contribute(t, f, c, "evil", 1)
			return f
		}, "fork", func(t *testing.T, err error) {
			var ie *verify.InconsistentError
			if !errors.As(err, &ie) || ie.Old.Size != 6 || ie.New.Size != 6 || bytes.Equal(ie.Old.Hash, ie.New.Hash) {
				t.Fatalf("evidence: %v", err)
			}
		}},
		{"fork, grown", func(t *testing.T, l *verifytest.Log, c *verifytest.Contributor) verify.LogSource {
			f := l.Fork(3)
			contribute(t, f, c, "evil", 7)
			return f
		}, "fork", func(t *testing.T, err error) {
			var ie *verify.InconsistentError
			if !errors.As(err, &ie) || ie.Old.Size != 6 || ie.New.Size != 10 {
				t.Fatalf("evidence: %v", err)
			}
		}},
		{"entries differ from the signed tree", func(t *testing.T, l *verifytest.Log, c *verifytest.Contributor) verify.LogSource {
			contribute(t, l, c, "b", 2)
			evil := l.Fork(6)
			contribute(t, evil, c, "evil", 2)
			// Honest checkpoint and proofs, forged entries.
			return &tamper{LogSource: l, page: func(p *contract.EventsPage) {
				for i, we := range p.Entries {
					if we.Seq > 6 {
						p.Entries[i].Entry = evil.Entry(we.Seq)
					}
				}
			}}
		}, "root_mismatch", func(t *testing.T, err error) {
			var rm *verify.RootMismatchError
			if !errors.As(err, &rm) || rm.Size != 8 {
				t.Fatalf("evidence: %v", err)
			}
		}},
		{"entry with a broken chain", func(t *testing.T, l *verifytest.Log, c *verifytest.Contributor) verify.LogSource {
			contribute(t, l, c, "b", 2)
			return &tamper{LogSource: l, page: func(p *contract.EventsPage) {
				for i := range p.Entries {
					e, err := contract.DecodeEntry(p.Entries[i].Entry)
					if err != nil {
						t.Error(err)
						return
					}
					e.PrevHash = strings.Repeat("ab", 32)
					p.Entries[i].Entry, _ = contract.EncodeEntry(e)
				}
			}}
		}, "chain", func(t *testing.T, err error) {
			var ee *verify.EntryError
			if !errors.As(err, &ee) || ee.Seq != 7 {
				t.Fatalf("evidence: %v", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFixture(t)
			contribute(t, fx.log, fx.alice, "a", 5) // and the terms: 6 entries
			f := fx.follower(t, verify.WithTrustOnFirstUse())
			mustSync(t, f)

			src := tc.serve(t, fx.log, fx.alice)
			g := mustFollower(t, fx.config(src), verify.WithTrustOnFirstUse())
			err := g.Sync(context.Background())
			if !errors.Is(err, verify.ErrQuarantined) || verify.Reason(errors.Unwrap(errors.Unwrap(err))) == "" {
				t.Fatalf("Sync = %v, want quarantine", err)
			}
			var q *verify.QuarantineError
			if !errors.As(err, &q) || verify.Reason(q.Err) != tc.reason {
				t.Fatalf("quarantine reason %q (%v), want %q", verify.Reason(q.Err), err, tc.reason)
			}
			tc.check(t, err)
			if _, err := g.Lookup("a-0"); !errors.Is(err, verify.ErrQuarantined) {
				t.Fatalf("Lookup after quarantine = %v", err)
			}
			if st := g.Status(); st.State != verify.StateQuarantined || st.Quarantine == "" {
				t.Fatalf("status %+v", st)
			}
			if n := counter(t, fx, "provgate_log_quarantines_total", "contract", cid); n != 1 {
				t.Fatalf("quarantine metric %v", n)
			}
			// The honest log again, after a restart: still quarantined.
			h := mustFollower(t, fx.config(fx.log), verify.WithTrustOnFirstUse())
			if err := h.Sync(context.Background()); !errors.Is(err, verify.ErrQuarantined) {
				t.Fatalf("after restart: Sync = %v, want still quarantined", err)
			}
			// Reset is the way out.
			if err := fx.store.Reset(context.Background(), cid); err != nil {
				t.Fatal(err)
			}
			r := mustFollower(t, fx.config(fx.log), verify.WithTrustOnFirstUse())
			mustSync(t, r)
		})
	}
}

func TestFollowerFreshness(t *testing.T) {
	fx := newFixture(t)
	contribute(t, fx.log, fx.alice, "a", 2)

	cfg := fx.config(fx.log)
	cfg.MaxCheckpointAge = time.Hour
	cfg.Now = later(2 * time.Hour) // every checkpoint the log signs now looks 2h old
	f := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	if err := f.Sync(context.Background()); !errors.Is(err, verify.ErrStale) {
		t.Fatalf("Sync of a frozen log = %v, want ErrStale", err)
	}
	if err := f.Ready(); err == nil {
		t.Fatal("a frozen log is ready")
	}
	if n := counter(t, fx, "provgate_log_refusals_total", "reason", "stale_checkpoint"); n != 1 {
		t.Fatalf("stale refusals %v", n)
	}

	// Verified while fresh, then the registry stops signing: stale.
	var now time.Time
	cfg.Now = func() time.Time { return now }
	now = time.Now()
	g := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	mustSync(t, g)
	if err := g.Ready(); err != nil {
		t.Fatalf("fresh: %v", err)
	}
	now = now.Add(61 * time.Minute)
	if _, err := g.Lookup("a-0"); !errors.Is(err, verify.ErrStale) {
		t.Fatalf("Lookup with an old trusted checkpoint = %v, want ErrStale", err)
	}
	if st := g.Status(); st.State != verify.StateStale {
		t.Fatalf("state %s, want stale", st.State)
	}

	// The loud opt-out.
	cfg.Now = later(2 * time.Hour)
	cfg.Store = mustStore(t, t.TempDir())
	u := mustFollower(t, cfg, verify.WithTrustOnFirstUse(), verify.WithoutFreshnessCheckUnsafe())
	mustSync(t, u)
	if _, err := u.Lookup("a-0"); err != nil {
		t.Fatalf("without freshness: %v", err)
	}
}

func TestFollowerBadCheckpoint(t *testing.T) {
	fx := newFixture(t)
	contribute(t, fx.log, fx.alice, "a", 2)
	other := verifytest.NewLog(t, cid, fx.alice.Info()) // another key
	contribute(t, other, fx.alice, "a", 2)
	good, _ := fx.log.Checkpoint(context.Background(), cid)
	for _, tc := range []struct {
		name string
		note []byte
	}{
		{"signed by another key", other.SignCheckpoint(t, 2)},
		{"tampered size", bytes.Replace(good, []byte("\n3\n"), []byte("\n4\n"), 1)},
		{"garbage", []byte("not a checkpoint")},
		{"empty", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := mustFollower(t, fx.config(&tamper{LogSource: fx.log, checkpoint: func() []byte { return tc.note }}), verify.WithTrustOnFirstUse())
			if err := f.Sync(context.Background()); !errors.Is(err, verify.ErrCheckpoint) {
				t.Fatalf("Sync = %v, want ErrCheckpoint", err)
			}
			if err := f.Ready(); !errors.Is(err, verify.ErrNotVerified) {
				t.Fatalf("Ready = %v", err)
			}
		})
	}
}

// TestFollowerRevocation: a revocation in the log refuses what the key
// signs after it; a retroactive one (or the configuration) also drops what
// it signed before, and the cache is told.
func TestFollowerRevocation(t *testing.T) {
	k1 := verifytest.NewContributor(t, "did:example:bob", jose.EdDSA)
	k2 := verifytest.NewContributor(t, "did:example:bob", jose.ES256)
	bob := contract.Contributor{ID: k1.ID, JWKS: verify.PublicJWKS(k1.Key, k2.Key)}
	for _, tc := range []struct {
		name        string
		retroactive bool
		opts        []verify.Option
		wantOld     error
	}{
		{"from its seq on", false, nil, nil},
		{"retroactive claim", true, nil, verify.ErrNotFound},
		{"retroactive by configuration", false, []verify.Option{verify.WithRetroactiveRevocations()}, verify.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFixture(t, bob)
			contribute(t, fx.log, k1, "old", 2)
			fx.log.AppendAttestation(t, k2.Revocation(t, cid, k1.Key.KeyID, tc.retroactive))
			contribute(t, fx.log, k1, "new", 1)
			contribute(t, fx.log, k2, "k2", 1)
			f := fx.follower(t, append(tc.opts, verify.WithTrustOnFirstUse())...)
			mustSync(t, f)

			_, err := f.Lookup("new-0")
			var re *verify.RevokedKeyError
			if !errors.Is(err, verify.ErrNotFound) {
				t.Fatalf("signed after revocation: Lookup = %v, want ErrNotFound", err)
			}
			if n := counter(t, fx, "provgate_log_entries_rejected_total", "reason", "revoked_key"); n != 1 {
				t.Fatalf("revoked_key rejections %v, want 1", n)
			}
			_ = re
			if _, err := f.Lookup("old-0"); !errors.Is(err, tc.wantOld) {
				t.Fatalf("signed before revocation: Lookup = %v, want %v", err, tc.wantOld)
			}
			if _, err := f.Lookup("k2-0"); err != nil {
				t.Fatalf("other key: %v", err)
			}
			if tc.wantOld != nil && !slices.Equal(fx.purged(), []string{"old-0", "old-1"}) && !slices.Equal(fx.purged(), []string{"old-1", "old-0"}) {
				t.Fatalf("purged %v, want old-0 and old-1", fx.purged())
			}
			// Revocations survive a restart.
			contribute(t, fx.log, k1, "after-restart", 1)
			g := fx.follower(t, verify.WithTrustOnFirstUse())
			mustSync(t, g)
			if _, err := g.Lookup("after-restart-0"); !errors.Is(err, verify.ErrNotFound) {
				t.Fatalf("after restart, revoked key accepted: %v", err)
			}
		})
	}
}

// down is a registry that no longer answers.
type down struct{ verify.LogSource }

func (down) Checkpoint(context.Context, string) ([]byte, error) {
	return nil, errors.New("dial tcp 127.0.0.1:1: connect: connection refused")
}

// TestFollowerRegistryDown: with the registry unreachable, the verified
// state keeps serving (within the freshness window) and the error is
// visible; a restart in the outage is ready from the state file alone.
func TestFollowerRegistryDown(t *testing.T) {
	fx := newFixture(t)
	contribute(t, fx.log, fx.alice, "a", 2)
	mustSync(t, fx.follower(t, verify.WithTrustOnFirstUse()))

	f := mustFollower(t, fx.config(down{fx.log}), verify.WithTrustOnFirstUse())
	if err := f.Sync(context.Background()); err == nil {
		t.Fatal("sync against a dead registry succeeded")
	}
	if _, err := f.Lookup("a-1"); err != nil {
		t.Fatalf("verified state not served during the outage: %v", err)
	}
	if st := f.Status(); st.State != verify.StateReady || st.LastError == "" || st.Size != 3 {
		t.Fatalf("status %+v", st)
	}
}

// A busy sidecar ships a metering batch every few seconds, each an entry
// in the contract's log: syncing those must not send every next lookup
// to the state database, while an attestation still must (a new version
// or a redaction is never answered from the cache).
func TestLookupCacheOutlivesMeteringEntries(t *testing.T) {
	fx := newFixture(t)
	contribute(t, fx.log, fx.alice, "a", 3)
	f := fx.follower(t, verify.WithTrustOnFirstUse())
	mustSync(t, f)
	lookups := func() (cache, state float64) {
		return counter(t, fx, "provgate_manifest_lookups_total", "from", "cache"),
			counter(t, fx, "provgate_manifest_lookups_total", "from", "state")
	}
	lookup := func(name string) verify.ManifestEntry {
		t.Helper()
		e, err := f.Lookup(name)
		if err != nil {
			t.Fatalf("Lookup(%s): %v", name, err)
		}
		return e
	}
	lookup("a-0")
	lookup("a-1")
	if c, s := lookups(); c != 0 || s != 2 {
		t.Fatalf("first lookups: %v from cache, %v from state; want 0 and 2", c, s)
	}
	for i := range 3 {
		fx.log.Append(t, contract.EntryMetering, "not.a.jws", fmt.Sprintf("ev-%d", i))
		mustSync(t, f)
		lookup("a-0")
		lookup("a-1")
	}
	if st := f.Status(); st.Size != 7 {
		t.Fatalf("log size %d after the metering entries, want 7", st.Size)
	}
	if c, s := lookups(); c != 6 || s != 2 {
		t.Fatalf("after metering entries: %v from cache, %v from state; want 6 and 2", c, s)
	}

	v2 := verifytest.Object("a-0", []byte("other"))
	fx.log.AppendAttestation(t, fx.alice.Contribution(t, cid, v2))
	fx.log.AppendAttestation(t, fx.alice.Redaction(t, cid, "a-1", 0))
	mustSync(t, f)
	if e := lookup("a-0"); e.DecodedSHA256 != v2.DecodedSHA256 {
		t.Fatalf("after a new version: Lookup(a-0) answered the old one (%s)", e.DecodedSHA256)
	}
	if _, err := f.Lookup("a-1"); !errors.Is(err, verify.ErrRedacted) {
		t.Fatalf("after a redaction: Lookup(a-1) = %v, want ErrRedacted", err)
	}
}
