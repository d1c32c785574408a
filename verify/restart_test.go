package verify_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/verify/verifytest"
)

// counting records the page reads a follower makes.
type counting struct {
	verify.LogSource
	mu     sync.Mutex
	since  []uint64
	checks int
}

func (c *counting) Events(ctx context.Context, id string, since uint64, limit int) (*contract.EventsPage, error) {
	c.mu.Lock()
	c.since = append(c.since, since)
	c.mu.Unlock()
	return c.LogSource.Events(ctx, id, since, limit)
}

func (c *counting) Checkpoint(ctx context.Context, id string) ([]byte, error) {
	c.mu.Lock()
	c.checks++
	c.mu.Unlock()
	return c.LogSource.Checkpoint(ctx, id)
}

func (c *counting) pages() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]uint64(nil), c.since...)
}

// buildLog appends n contributions signed in parallel (signing dominates).
func buildLog(tb testing.TB, l *verifytest.Log, c *verifytest.Contributor, prefix string, n int) {
	tb.Helper()
	jws := make([]string, n)
	var wg sync.WaitGroup
	workers := 4
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				name := fmt.Sprintf("%s/%06d", prefix, i)
				a := &contract.Attestation{Issuer: c.ID, Subject: l.Contract.ContractID, IssuedAt: time.Now().Unix(), ID: name,
					Type: contract.Contribution, Object: verifytest.Object(name, []byte(name))}
				s, err := verify.SignAttestation(c.Key, a)
				if err != nil {
					tb.Error(err)
					return
				}
				jws[i] = s
			}
		})
	}
	wg.Wait()
	for _, s := range jws {
		l.AppendAttestation(tb, s)
	}
}

// TestFollowerRestart follows a 10k-entry log, stops, and restarts on the
// same state file: the restarted follower is ready before any network
// round trip (nothing is re-verified), reads only the new entries, and
// catches a registry that rewrote history while it was down.
func TestFollowerRestart(t *testing.T) {
	const n = 10000
	alice := verifytest.NewContributor(t, "did:example:alice", jose.EdDSA)
	log := verifytest.NewLog(t, cid, alice.Info())
	buildLog(t, log, alice, "obj", n)
	dir := t.TempDir()
	path := filepath.Join(dir, verify.StateFile)

	store, err := verify.OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg := verify.FollowerConfig{Contract: log.Contract, Source: log, Store: store, PollInterval: time.Hour}
	f := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	start := time.Now()
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for f.Ready() != nil {
		if time.Since(start) > 2*time.Minute {
			t.Fatalf("not ready: %+v", f.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
	first := time.Since(start)
	f.Stop()
	if st := f.Status(); st.Size != n+1 || st.Objects != n {
		t.Fatalf("status %+v", st)
	}
	store.Close()

	// Restart: a new store handle and follower on the same file.
	store2 := mustStore(t, dir)
	src := &counting{LogSource: log}
	cfg.Store, cfg.Source = store2, src
	start = time.Now()
	g := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	err = g.Ready()
	resume := time.Since(start)
	if err != nil {
		t.Fatalf("restarted follower not ready from persisted state: %v", err)
	}
	if e, err := g.Lookup("obj/004242"); err != nil || e.Seq != 4244 {
		t.Fatalf("lookup after restart: %+v %v", e, err)
	}
	if src.checks != 0 || len(src.pages()) != 0 {
		t.Fatalf("restart touched the registry before being ready: %d checkpoints, pages %v", src.checks, src.pages())
	}
	t.Logf("first verification of %d entries: %v; resume from persisted state: %v", n, first, resume)
	if resume > 5*time.Second {
		t.Errorf("resume took %v", resume)
	}

	// Same log: nothing to read. Five new entries: one page from 10000.
	mustSync(t, g)
	contribute(t, log, alice, "new", 5)
	mustSync(t, g)
	if got := src.pages(); len(got) != 1 || got[0] != n+1 {
		t.Fatalf("pages read after restart: %v, want [%d]", got, n+1)
	}
	if st := g.Status(); st.Size != n+6 {
		t.Fatalf("size %d", st.Size)
	}

	// Down again; meanwhile the registry rewrites history from entry 9000.
	rewritten := log.Fork(9000)
	buildLog(t, rewritten, alice, "evil", 1100)
	cfg.Source = rewritten
	h := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	if err := h.Ready(); err != nil {
		t.Fatalf("before sync: %v", err)
	}
	err = h.Sync(context.Background())
	var ie *verify.InconsistentError
	if !errors.Is(err, verify.ErrQuarantined) || !errors.As(err, &ie) || ie.Old.Size != n+6 || ie.New.Size != 10100 {
		t.Fatalf("rewritten history: Sync = %v, want quarantine with the checkpoints as evidence", err)
	}
	if _, err := h.Lookup("obj/000001"); !errors.Is(err, verify.ErrQuarantined) {
		t.Fatalf("served after quarantine: %v", err)
	}
}

// TestFollowerCorruptState: a state file that does not match its own
// signed checkpoint is refused with ErrState, not trusted.
func TestFollowerCorruptState(t *testing.T) {
	fx := newFixture(t)
	contribute(t, fx.log, fx.alice, "a", 3)
	mustSync(t, fx.follower(t, verify.WithTrustOnFirstUse()))

	db, err := sql.Open("sqlite3", filepath.Join(fx.dir, verify.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var state []byte
	if err := db.QueryRow("SELECT state FROM logs WHERE contract = ?", cid).Scan(&state); err != nil {
		t.Fatal(err)
	}
	var st verify.LogState
	if err := json.Unmarshal(state, &st); err != nil {
		t.Fatal(err)
	}
	st.Range[0][0] ^= 1
	bad, _ := json.Marshal(st)
	if _, err := db.Exec("UPDATE logs SET state = ? WHERE contract = ?", bad, cid); err != nil {
		t.Fatal(err)
	}
	if _, err := verify.NewFollower(context.Background(), fx.config(fx.log), verify.WithTrustOnFirstUse()); !errors.Is(err, verify.ErrState) {
		t.Fatalf("NewFollower on a tampered state = %v, want ErrState", err)
	}
	if _, err := db.Exec("UPDATE logs SET state = ?, checkpoint = ? WHERE contract = ?", state, []byte("not a note"), cid); err != nil {
		t.Fatal(err)
	}
	if _, err := verify.NewFollower(context.Background(), fx.config(fx.log), verify.WithTrustOnFirstUse()); !errors.Is(err, verify.ErrState) {
		t.Fatalf("NewFollower on a bad checkpoint = %v, want ErrState", err)
	}
}
