package verify_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/verify/verifytest"
)

// replayServer serves an in-process log over the registry's wire paths on
// loopback, so that the real contract.Client talks to it; a test swaps the
// log to serve faults a real registry won't produce (a rollback, a fork).
type replayServer struct {
	*httptest.Server
	mu       sync.Mutex
	log      *verifytest.Log
	noStream bool
	jwks     atomic.Pointer[jose.JSONWebKeySet]
	jwksHits atomic.Int64
}

func newReplayServer(t *testing.T, l *verifytest.Log) *replayServer {
	s := &replayServer{log: l}
	mux := http.NewServeMux()
	id := l.Contract.ContractID
	mux.HandleFunc("GET /provenance/{id}/checkpoint", func(w http.ResponseWriter, r *http.Request) {
		note, _ := s.current().Checkpoint(r.Context(), id)
		w.Write(note)
	})
	mux.HandleFunc("GET /provenance/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		since, _ := strconv.ParseUint(r.URL.Query().Get("since"), 10, 64)
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		p, _ := s.current().Events(r.Context(), id, since, limit)
		json.NewEncoder(w).Encode(p)
	})
	mux.HandleFunc("GET /provenance/{id}/proof/consistency", func(w http.ResponseWriter, r *http.Request) {
		from, _ := strconv.ParseUint(r.URL.Query().Get("from"), 10, 64)
		to, _ := strconv.ParseUint(r.URL.Query().Get("to"), 10, 64)
		p, err := s.current().ConsistencyProof(r.Context(), id, from, to)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		json.NewEncoder(w).Encode(p)
	})
	mux.HandleFunc("GET /provenance/{id}/events/stream", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		off := s.noStream
		s.mu.Unlock()
		if off {
			http.NotFound(w, r)
			return
		}
		since, _ := strconv.ParseUint(r.URL.Query().Get("since"), 10, 64)
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for {
			p, _ := s.current().Events(r.Context(), id, since, 100)
			for _, e := range p.Entries {
				b, _ := json.Marshal(e)
				fmt.Fprintf(w, "event: entry\ndata: %s\n\n", b)
				since = e.Seq
			}
			rc.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
	mux.HandleFunc("GET /jwks.json", func(w http.ResponseWriter, r *http.Request) {
		s.jwksHits.Add(1)
		set := s.jwks.Load()
		if set == nil {
			http.Error(w, `{"error":{"code":"not_found","message":"no keys"}}`, http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(set)
	})
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func (s *replayServer) current() *verifytest.Log {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log
}

func (s *replayServer) serve(l *verifytest.Log) {
	s.mu.Lock()
	s.log = l
	s.mu.Unlock()
}

func (s *replayServer) client(t *testing.T) *contract.Client {
	c, err := contract.NewClient(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	c.BaseDelay, c.MaxDelay, c.MaxAttempts = time.Millisecond, 5*time.Millisecond, 2
	return c
}

// syncUntil syncs until a round succeeds (keys may be rate-limited).
func syncUntil(t *testing.T, f *verify.Follower) {
	t.Helper()
	var err error
	waitFor(t, "a successful sync", func() bool {
		err = f.Sync(context.Background())
		if err != nil && !errors.Is(err, verify.ErrKeysUnavailable) {
			t.Fatalf("sync: %v", err)
		}
		return err == nil
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFollowerLiveFeed: with polling practically off, the SSE feed alone
// brings new entries in; a rollback served later quarantines the contract
// in the background.
func TestFollowerLiveFeed(t *testing.T) {
	fx := newFixture(t)
	contribute(t, fx.log, fx.alice, "a", 3)
	srv := newReplayServer(t, fx.log)
	client := srv.client(t)
	cfg := fx.config(client)
	cfg.Stream = client
	cfg.PollInterval = time.Hour
	f := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	waitFor(t, "first sync", func() bool { return f.Ready() == nil })

	fx.log.AppendAttestation(t, fx.alice.Redaction(t, cid, "a-1", 0))
	contribute(t, fx.log, fx.alice, "b", 1)
	waitFor(t, "the live feed", func() bool { _, err := f.Lookup("b-0"); return err == nil })
	if _, err := f.Lookup("a-1"); !errors.Is(err, verify.ErrRedacted) {
		t.Fatalf("a-1 after redaction: %v", err)
	}
	// The purge callback runs right after the manifest changes.
	waitFor(t, "the purge", func() bool { return len(fx.purged()) > 0 })
	if got := fx.purged(); len(got) != 1 || got[0] != "a-1" {
		t.Fatalf("purged %v", got)
	}

	// The registry rolls back to 3 entries and goes on from there; the
	// next sync (here: on demand, beside the background loop) quarantines.
	rolled := fx.log.Fork(3)
	srv.serve(rolled)
	contribute(t, rolled, fx.alice, "evil", 1)
	if err := f.Sync(context.Background()); !errors.Is(err, verify.ErrRollback) {
		t.Fatalf("Sync after rollback = %v", err)
	}
	if st := f.Status(); st.State != verify.StateQuarantined {
		t.Fatalf("state %s", st.State)
	}
	if _, err := f.Lookup("a-0"); !errors.Is(err, verify.ErrQuarantined) {
		t.Fatalf("Lookup = %v", err)
	}
}

// TestFollowerPollingFallback: a registry without a live feed is polled.
func TestFollowerPollingFallback(t *testing.T) {
	fx := newFixture(t)
	contribute(t, fx.log, fx.alice, "a", 1)
	srv := newReplayServer(t, fx.log)
	srv.noStream = true
	client := srv.client(t)
	cfg := fx.config(client)
	cfg.Stream = client
	cfg.PollInterval = 20 * time.Millisecond
	f := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	waitFor(t, "first sync", func() bool { return f.Ready() == nil })
	contribute(t, fx.log, fx.alice, "b", 1)
	waitFor(t, "a poll", func() bool { _, err := f.Lookup("b-0"); return err == nil })
}

// TestFollowerJWKSURI: a contributor given by jwks_uri; a rotated-in key is
// found by a refresh on its unknown kid; refreshes are rate-limited; while
// the key set cannot be fetched at all, entries wait instead of being
// refused.
func TestFollowerJWKSURI(t *testing.T) {
	k1 := verifytest.NewContributor(t, "did:example:carol", jose.EdDSA)
	k2 := verifytest.NewContributor(t, "did:example:carol", jose.ES256)
	fx := newFixture(t)
	srv := newReplayServer(t, fx.log)
	fx.log.Contract.Contributors = append(fx.log.Contract.Contributors, contract.Contributor{ID: k1.ID, JWKSURI: srv.URL + "/jwks.json"})
	fx.log.SetTerms(t, fx.log.Contract)

	client := srv.client(t)
	cfg := fx.config(fx.log)
	cfg.Fetcher = client
	cfg.JWKSMinRefresh = 300 * time.Millisecond
	f := mustFollower(t, cfg, verify.WithTrustOnFirstUse())

	contribute(t, fx.log, k1, "k1", 1)
	err := f.Sync(context.Background())
	if !errors.Is(err, verify.ErrKeysUnavailable) {
		t.Fatalf("Sync without a key set = %v, want ErrKeysUnavailable", err)
	}
	if st := f.Status(); st.Size != 0 || st.Rejected != 0 {
		t.Fatalf("entries were refused or committed while keys were unavailable: %+v", st)
	}

	srv.jwks.Store(verify.PublicJWKS(k1.Key))
	mustSync(t, f)
	if _, err := f.Lookup("k1-0"); err != nil {
		t.Fatal(err)
	}
	hits := srv.jwksHits.Load()

	// Rotation: k2 appears in the published set; its first entry triggers
	// one refresh.
	// The refresh that would find it is rate-limited (the set was fetched
	// just now): the entries wait, they are not refused.
	srv.jwks.Store(verify.PublicJWKS(k1.Key, k2.Key))
	contribute(t, fx.log, k2, "k2", 3)
	if err := f.Sync(context.Background()); !errors.Is(err, verify.ErrKeysUnavailable) {
		t.Fatalf("Sync with a rate-limited refresh = %v, want ErrKeysUnavailable", err)
	}
	syncUntil(t, f)
	if _, err := f.Lookup("k2-2"); err != nil {
		t.Fatalf("rotated key: %v", err)
	}
	if got := srv.jwksHits.Load() - hits; got != 1 {
		t.Fatalf("refreshes for a new kid: %d, want 1", got)
	}

	// An unknown kid, many times: one refresh per MinRefresh, not one per
	// entry; refused for good once a set fetched after the entries lacks it.
	hits = srv.jwksHits.Load()
	stranger := verifytest.NewContributor(t, k1.ID, jose.EdDSA)
	contribute(t, fx.log, stranger, "s", 5)
	syncUntil(t, f)
	contribute(t, fx.log, stranger, "t", 5)
	syncUntil(t, f)
	if got := srv.jwksHits.Load() - hits; got > 2 {
		t.Fatalf("refreshes for 10 entries of an unknown kid: %d, want at most 2 (rate-limited)", got)
	}
	if st := f.Status(); st.Rejected != 10 {
		t.Fatalf("rejected %d, want 10", st.Rejected)
	}
	if n := counter(t, fx, "provgate_log_entries_rejected_total", "reason", "unknown_key"); n != 10 {
		t.Fatalf("unknown_key rejections %v", n)
	}
}
