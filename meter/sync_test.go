package meter_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// newContract is a contract priced per sample at $0.0005 over a bucket,
// with one contributor; only metering is exercised.
func newContract(tb testing.TB, id string) *contract.Contract {
	tb.Helper()
	k, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		tb.Fatal(err)
	}
	return &contract.Contract{
		ContractID: id, Version: "2026-01-15", License: "cc-by-4.0",
		Pricing:      contract.Pricing{Unit: contract.UnitSample, PriceUSD: 0.0005},
		Usage:        contract.Usage{Purposes: []string{"training"}, MaxSamples: 10_000_000},
		Contributors: []contract.Contributor{{ID: "did:example:alice", JWKS: verify.PublicJWKS(k)}},
		Licensees:    []contract.Licensee{registrytest.DefaultLicensee().Entry()},
		Origin:       contract.Origin{Bucket: "datasets"},
	}
}

// enrolment is the default licensee's enrolment of key under a contract.
func enrolment(key *jose.JSONWebKey, contractID string) (string, error) {
	jkt, err := verify.Thumbprint(key)
	if err != nil {
		return "", err
	}
	now := time.Now()
	return verify.SignEnrolment(registrytest.DefaultLicensee().Key, &contract.EnrolmentClaims{Issuer: registrytest.DefaultLicenseeID,
		Subject: jkt, Contract: contractID, IssuedAt: now.Unix(), Expiry: now.Add(time.Hour).Unix(), ID: verify.NewID()})
}

// sidecar is the sidecar's side of a registry: its key, a client that
// signs proofs with it, and a token source.
type sidecar struct {
	key    *jose.JSONWebKey
	client *contract.Client
	tokens *meter.RequestedTokens
}

func newSidecar(tb testing.TB, url string, key *jose.JSONWebKey) *sidecar {
	tb.Helper()
	if key == nil {
		var err error
		if key, err = verify.GenerateKey(jose.EdDSA); err != nil {
			tb.Fatal(err)
		}
	}
	c, err := contract.NewClient(url)
	if err != nil {
		tb.Fatal(err)
	}
	c.Proof = verify.ProofFunc(key)
	c.BaseDelay, c.MaxDelay, c.MaxAttempts = 10*time.Millisecond, 50*time.Millisecond, 2
	c.HTTP.Timeout = 10 * time.Second
	return &sidecar{key: key, client: c, tokens: &meter.RequestedTokens{Client: c, Key: key, Purpose: "training",
		Enrolment: func(id string) (string, error) { return enrolment(key, id) }}}
}

func (s *sidecar) syncer(tb testing.TB, l *meter.Ledger) *meter.Syncer {
	tb.Helper()
	sy, err := meter.NewSyncer(l, meter.SyncConfig{
		Client: s.client, Key: s.key, Tokens: s.tokens,
		Interval: 20 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return sy
}

// openLedger opens a ledger at path priced for contractID and starts it.
func openLedger(tb testing.TB, path, contractID string) *meter.Ledger {
	tb.Helper()
	l, err := meter.Open(context.Background(), path, meter.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	if err := l.SetPricing(context.Background(), contractID, contract.Pricing{Unit: contract.UnitSample, PriceUSD: 0.0005}); err != nil {
		tb.Fatal(err)
	}
	l.Start(context.Background())
	tb.Cleanup(func() { l.Close() })
	return l
}

// write submits n access events for contractID from 4 goroutines,
// retrying refusals, and waits for all of them.
func write(tb testing.TB, l *meter.Ledger, contractID string, from, n int) {
	tb.Helper()
	var wg sync.WaitGroup
	const workers = 4
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last meter.Pending
			for i := from + w; i < from+n; i += workers {
				ev := meter.Event{Contract: contractID, Name: fmt.Sprintf("s/%d", i%5000), Bytes: int64(i%4096 + 1),
					Epoch: int64(i % 5), Job: []string{"a", "b"}[i%2], TokenID: "t"}
				p, err := l.Submit(context.Background(), ev)
				for errors.Is(err, meter.ErrBusy) {
					p, err = l.Submit(context.Background(), ev)
				}
				if err != nil {
					tb.Error(err)
					return
				}
				last = p
			}
			if _, err := last.Wait(context.Background()); err != nil {
				tb.Error(err)
			}
		}()
	}
	wg.Wait()
}

// assertTotalsEqual checks the registry's totals against the ledger's.
func assertTotalsEqual(tb testing.TB, reg *contract.Client, l *meter.Ledger, contractID string, wantEvents int64) {
	tb.Helper()
	ctx := context.Background()
	got, err := reg.MeteringTotals(ctx, contractID, "", -1)
	if err != nil {
		tb.Fatal(err)
	}
	want, err := l.Totals(ctx, contractID, false)
	if err != nil {
		tb.Fatal(err)
	}
	if *got != want {
		tb.Errorf("registry totals\n got %+v\nwant %+v (the ledger's)", *got, want)
	}
	if want.Events != wantEvents {
		tb.Errorf("ledger has %d events, want %d", want.Events, wantEvents)
	}
	if d := l.OutboxDepth(contractID); d != 0 {
		tb.Errorf("outbox depth %d after sync, want 0", d)
	}
}

func TestSync100kEventsTotalsExact(t *testing.T) {
	h := registrytest.Start(t)
	c := h.CreateContract(t, newContract(t, "did:example:metered-100k"))
	sc := newSidecar(t, h.URL, nil)
	l := openLedger(t, filepath.Join(t.TempDir(), "ledger.db"), c.ContractID)
	const n = 100_000
	start := time.Now()
	write(t, l, c.ContractID, 0, n)
	for _, job := range []string{"a", "b"} {
		for e := range 5 {
			if _, err := l.EndEpoch(context.Background(), c.ContractID, job, int64(e)); err != nil {
				t.Fatal(err)
			}
		}
	}
	wrote := time.Since(start)
	sy := sc.syncer(t, l)
	start = time.Now()
	sent, err := sy.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d events in %v, synced in %v", n, wrote, time.Since(start))
	if sent != n+10 {
		t.Errorf("synced %d rows, want %d", sent, n+10)
	}
	assertTotalsEqual(t, h.Client, l, c.ContractID, n+10)
	got, err := h.Client.MeteringTotals(context.Background(), c.ContractID, "a", 3)
	if err != nil {
		t.Fatal(err)
	}
	// Job a, epoch 3: i even and i%5 == 3, i.e. i%10 == 8: 10,000 events.
	if got.AccessEvents != n/10 || got.EpochEvents != 1 || got.EpochSamples != n/10 || got.Units != n/10 {
		t.Errorf("registry totals for job a epoch 3: %+v, want %d access events and one summary of as many samples", got, n/10)
	}
}

// regServer is a real registry on a fixed address and database, that a
// test stops and starts again.
type regServer struct {
	addr, db string
	srv      *registry.Server
	hs       *http.Server
	done     chan struct{}
}

func (r *regServer) start(tb testing.TB) {
	tb.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port may linger for a moment after stop
		if ln, err = net.Listen("tcp", r.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		tb.Fatal(err)
	}
	r.srv, err = registry.New(context.Background(), registry.Config{
		DBPath: r.db, AdminToken: registrytest.AdminToken, Name: "metertest", PublicURL: "http://" + r.addr,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		ln.Close()
		tb.Fatal(err)
	}
	r.hs = &http.Server{Handler: r.srv.Handler()}
	r.done = make(chan struct{})
	go func() {
		defer close(r.done)
		r.hs.Serve(ln)
	}()
}

func (r *regServer) stop() {
	if r.hs == nil {
		return
	}
	r.srv.Close()
	r.hs.Close()
	<-r.done
	r.hs = nil
}

func TestRegistryDownForFirstHalf(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &regServer{addr: ln.Addr().String(), db: filepath.Join(t.TempDir(), "registry.db")}
	ln.Close()
	url := "http://" + r.addr
	ctx := context.Background()

	// Set up the contract and the sidecar's token, then take the registry down.
	r.start(t)
	admin, err := contract.NewClient(url)
	if err != nil {
		t.Fatal(err)
	}
	c, err := admin.CreateContract(ctx, registrytest.AdminToken, newContract(t, "did:example:metered-outage"))
	if err != nil {
		t.Fatal(err)
	}
	sc := newSidecar(t, url, nil)
	if _, err := sc.tokens.Token(ctx, c.ContractID); err != nil {
		t.Fatal(err)
	}
	r.stop()
	defer r.stop()

	l := openLedger(t, filepath.Join(t.TempDir(), "ledger.db"), c.ContractID)
	sy := sc.syncer(t, l)
	sy.Start(ctx)
	defer sy.Stop()
	const half = 5000
	write(t, l, c.ContractID, 0, half)
	if _, err := l.EndEpoch(ctx, c.ContractID, "a", 0); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for l.Stats().SyncErrors < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	st := l.Stats()
	if st.SyncErrors < 3 || st.Synced != 0 || st.Outbox != half+1 {
		t.Fatalf("registry down: stats %+v, want failed attempts, nothing synced, the outbox holding all %d rows", st, half+1)
	}
	// The first batch was signed and recorded before the first attempt;
	// every retry (and a restart) sends that same batch.
	cur, err := l.Cursors(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pending := cur[c.ContractID]
	if pending.PendingBatch == "" || pending.AckedSeq != 0 {
		t.Fatalf("cursor while down: %+v, want a pending batch and nothing acknowledged", pending)
	}
	sy.Stop()
	if cur, _ = l.Cursors(ctx); cur[c.ContractID].PendingBatch != pending.PendingBatch {
		t.Fatalf("pending batch changed across retries: %q, then %q", pending.PendingBatch, cur[c.ContractID].PendingBatch)
	}
	sy = sc.syncer(t, l)
	sy.Start(ctx)
	defer sy.Stop()

	r.start(t)
	write(t, l, c.ContractID, half, half)
	if _, err := l.EndEpoch(ctx, c.ContractID, "b", 1); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(60 * time.Second)
	for l.OutboxDepth(c.ContractID) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	assertTotalsEqual(t, admin, l, c.ContractID, 2*half+2)

	// Sending everything again (replay --all) counts nothing twice.
	res, err := sy.Resend(ctx, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	if res.Events != 2*half+2 || res.Accepted != 0 || res.Duplicates != 2*half+2 {
		t.Errorf("resend: %+v, want every event a duplicate", res)
	}
	assertTotalsEqual(t, admin, l, c.ContractID, 2*half+2)
}

func TestPruneKeepsUnsyncedRowsAndTheChain(t *testing.T) {
	h := registrytest.Start(t)
	c := h.CreateContract(t, newContract(t, "did:example:metered-prune"))
	sc := newSidecar(t, h.URL, nil)
	path := filepath.Join(t.TempDir(), "ledger.db")
	l := openLedger(t, path, c.ContractID)
	ctx := context.Background()
	old := time.Now().Add(-10 * 24 * time.Hour)
	record := func(from, n int, at time.Time) {
		for i := from; i < from+n; i++ {
			if _, err := l.Submit(ctx, meter.Event{Time: at, Contract: c.ContractID, Name: fmt.Sprintf("o%d", i), Bytes: 10, TokenID: "t"}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := l.Record(ctx, meter.Event{Time: at, Contract: c.ContractID, Name: "last", Bytes: 10, TokenID: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	record(0, 299, old)         // rows 1-300: old
	record(300, 99, time.Now()) // rows 301-400: recent
	sy := sc.syncer(t, l)
	if _, err := sy.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	record(400, 49, old) // rows 401-450: old but not synced
	n, err := l.Prune(ctx, time.Now().Add(-7*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if n != 300 {
		t.Errorf("pruned %d rows, want the 300 old synced ones", n)
	}
	res, err := l.Verify(ctx)
	if err != nil {
		t.Fatalf("chain after pruning: %v", err)
	}
	if res.Rows != 150 || res.FirstSeq != 301 || res.HeadSeq != 450 {
		t.Errorf("after pruning: %+v, want rows 301 to 450", res)
	}
	if s, _ := l.Usage(c.ContractID, "t"); s != 450 {
		t.Errorf("usage after pruning = %d samples, want 450: quotas outlive the rows", s)
	}
	if _, err := sy.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := h.Client.MeteringTotals(ctx, c.ContractID, "", -1)
	if err != nil {
		t.Fatal(err)
	}
	if got.AccessEvents != 450 {
		t.Errorf("registry has %d events, want all 450", got.AccessEvents)
	}
	// An edit after the anchor is still named.
	l.Close()
	editRow(t, path, "UPDATE events SET hash = zeroblob(32) WHERE seq = 302")
	ro, err := meter.OpenReadOnly(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	var te *meter.TamperError
	if _, err := ro.Verify(ctx); !errors.As(err, &te) || te.Seq != 302 {
		t.Errorf("verify after editing row 302 of a pruned ledger: %v", err)
	}
}

// TestConflictingBatchIDIsReminted: another process already used the
// batch's Idempotency-Key with another body (409). The syncer drops that
// batch and sends the rows again under a fresh id; nothing is counted
// twice and the outbox does not stick.
func TestConflictingBatchIDIsReminted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &regServer{addr: ln.Addr().String(), db: filepath.Join(t.TempDir(), "registry.db")}
	ln.Close()
	ctx := context.Background()
	r.start(t)
	defer r.stop()
	admin, err := contract.NewClient("http://" + r.addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := admin.CreateContract(ctx, registrytest.AdminToken, newContract(t, "did:example:metered-conflict"))
	if err != nil {
		t.Fatal(err)
	}
	sc := newSidecar(t, "http://"+r.addr, nil)
	token, err := sc.tokens.Token(ctx, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	l := openLedger(t, filepath.Join(t.TempDir(), "ledger.db"), c.ContractID)
	write(t, l, c.ContractID, 0, 50)
	sy := sc.syncer(t, l)

	// A failed attempt leaves the signed batch pending.
	r.stop()
	if _, err := sy.Sync(ctx); err == nil {
		t.Fatal("sync with the registry down succeeded")
	}
	cur, err := l.Cursors(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := cur[c.ContractID].PendingBatch
	if id == "" {
		t.Fatal("no pending batch after a failed attempt")
	}
	// Someone else posts another body under that key.
	r.start(t)
	var first contract.MeteringEvent
	if err := l.Rows(ctx, 0, func(r *meter.Row) error {
		if first.ID == "" {
			first = r.MeteringEvent()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	tp, _ := verify.Thumbprint(sc.key)
	jws, err := verify.SignMeteringBatch(sc.key, &contract.MeteringBatch{Contract: c.ContractID, BatchID: id, Sidecar: tp,
		IssuedAt: time.Now().Unix(), Events: []contract.MeteringEvent{first}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.client.PostMetering(ctx, c.ContractID, token, id, jws); err != nil {
		t.Fatal(err)
	}

	_, err = sy.Sync(ctx)
	if contract.StatusOf(err) != http.StatusConflict {
		t.Fatalf("sync of the pending batch: %v, want 409", err)
	}
	if _, err := sy.Sync(ctx); err != nil {
		t.Fatalf("sync after the conflict: %v", err)
	}
	if cur, _ := l.Cursors(ctx); cur[c.ContractID].PendingBatch != "" {
		t.Errorf("a batch is still pending: %+v", cur[c.ContractID])
	}
	assertTotalsEqual(t, admin, l, c.ContractID, 50)
}

// Under load rows keep coming while a pass posts. A pass ships the rows
// there were when it started and stops once less than a full batch is
// left: it does not chase the new rows in a stream of small batches (each
// an entry in the contract's log that every sidecar's follower replays).
func TestSyncPassDoesNotChaseNewRows(t *testing.T) {
	h := registrytest.Start(t)
	c := h.CreateContract(t, newContract(t, "did:example:metered-steady"))
	l := openLedger(t, filepath.Join(t.TempDir(), "ledger.db"), c.ContractID)
	sc := newSidecar(t, h.URL, nil)
	// While each metering batch is in flight, 50 more rows are written
	// (for the first 20 batches: the old loop ends too).
	var posts atomic.Int64
	var inject atomic.Bool
	inject.Store(true)
	sc.client.HTTP.Transport = roundTrip(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/metering") {
			if n := posts.Add(1); n <= 20 && inject.Load() {
				write(t, l, c.ContractID, 1000*int(n), 50)
			}
		}
		return http.DefaultTransport.RoundTrip(r)
	})
	write(t, l, c.ContractID, 0, 300)
	sy := sc.syncer(t, l)
	sent, err := sy.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if sent != 300 || posts.Load() != 1 {
		t.Errorf("one pass shipped %d rows in %d batches, want the 300 there were in 1", sent, posts.Load())
	}
	if got := l.OutboxDepth(c.ContractID); got != 50 {
		t.Errorf("outbox after the pass: %d rows, want the 50 written during it", got)
	}
	inject.Store(false)
	// The next pass ships them (a quiet ledger empties).
	if sent, err := sy.Sync(context.Background()); err != nil || sent != 50 {
		t.Fatalf("second pass: %d rows, %v; want 50", sent, err)
	}
	assertTotalsEqual(t, h.Client, l, c.ContractID, 350)
}

type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
