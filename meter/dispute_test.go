package meter_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
)

// lyingRegistry is a loopback proxy in front of a real registry that
// rewrites its answers to metering batches with rewrite (nil: honest).
type lyingRegistry struct {
	url     string
	mu      sync.Mutex
	rewrite func(*contract.MeteringResponse)
	// conflicts answers this many counted batches with 409 instead.
	conflicts int
}

func startLyingRegistry(t *testing.T) (*lyingRegistry, *registrytest.Harness) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lr := &lyingRegistry{url: "http://" + ln.Addr().String()}
	// The registry checks DPoP proofs against its public URL: the proxy's.
	h := registrytest.Start(t, registrytest.WithConfig(func(c *registry.Config) { c.PublicURL = lr.url }))
	target, _ := url.Parse(h.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(r *http.Response) error {
		if r.Request.Method != http.MethodPost || !strings.HasSuffix(r.Request.URL.Path, "/metering") || r.StatusCode != http.StatusOK {
			return nil
		}
		lr.mu.Lock()
		rewrite, conflict := lr.rewrite, lr.conflicts > 0
		if conflict {
			lr.conflicts--
		}
		lr.mu.Unlock()
		if conflict {
			b := []byte(`{"error":{"code":"conflict","message":"Idempotency-Key was used with another batch"}}`)
			r.Body.Close()
			r.StatusCode, r.Status = http.StatusConflict, "409 Conflict"
			r.Body = io.NopCloser(bytes.NewReader(b))
			r.ContentLength = int64(len(b))
			r.Header.Set("Content-Length", strconv.Itoa(len(b)))
			return nil
		}
		if rewrite == nil {
			return nil
		}
		var resp contract.MeteringResponse
		if err := json.NewDecoder(r.Body).Decode(&resp); err != nil {
			return err
		}
		r.Body.Close()
		rewrite(&resp)
		b, _ := json.Marshal(resp)
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.ContentLength = int64(len(b))
		r.Header.Set("Content-Length", strconv.Itoa(len(b)))
		return nil
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return lr, h
}

func (lr *lyingRegistry) set(f func(*contract.MeteringResponse)) {
	lr.mu.Lock()
	lr.rewrite = f
	lr.mu.Unlock()
}

// syncedLog is a concurrency-safe log buffer.
type syncedLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncedLog) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncedLog) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// A registry that acknowledges a batch but counts less than was sent (it
// calls an event never sent before a duplicate, or its sums differ) is an
// alarm: an error log, the Disputed counter, the contract's dispute
// status; the rows stay in the ledger, kept from pruning.
func TestSyncAlarmsWhenRegistryCountsLess(t *testing.T) {
	ctx := context.Background()
	lr, h := startLyingRegistry(t)
	c := h.CreateContract(t, newContract(t, "did:example:lied-to"))
	sc := newSidecar(t, lr.url, nil)
	l := openLedger(t, filepath.Join(t.TempDir(), "ledger.db"), c.ContractID)
	var logs syncedLog
	// Event by event: the answer names duplicate events (aggregate batches:
	// TestSyncAlarmsWhenRegistryCountsAggregateLess).
	sy, err := meter.NewSyncer(l, meter.SyncConfig{Client: sc.client, Key: sc.key, Tokens: sc.tokens, PerEvent: true,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	syncRound := func(n int) {
		t.Helper()
		write(t, l, c.ContractID, 0, n)
		if _, err := sy.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// Honest: no alarm.
	syncRound(10)
	if d := l.DisputeStatus(c.ContractID); d.Batches != 0 || l.Stats().Disputed != 0 {
		t.Fatalf("honest registry: %+v", d)
	}

	// The first event of a first send (row 11) called a duplicate, as a
	// registry that let another sender pre-claim the id would answer.
	lr.set(func(r *contract.MeteringResponse) {
		r.Accepted--
		r.Duplicates++
		r.DuplicateIDs = append(r.DuplicateIDs, l.ID()+"-11")
		r.Counted.Samples--
		r.Counted.Units--
		r.Counted.CostNanoUSD -= 500_000
	})
	syncRound(10)
	d := l.DisputeStatus(c.ContractID)
	n, detail := d.Batches, d.Detail
	if n != 1 || l.Stats().Disputed != 1 || !strings.Contains(detail, "never sent it before") {
		t.Errorf("after a batch answered with a duplicate never sent: %d disputes (%q), counter %d; want 1", n, detail, l.Stats().Disputed)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "registry did not count a metering batch as sent") {
		t.Errorf("no error logged:\n%s", logs.String())
	}

	// Right counts, smaller sums.
	lr.set(func(r *contract.MeteringResponse) { r.Counted.CostNanoUSD-- })
	syncRound(10)
	if d := l.DisputeStatus(c.ContractID); d.Batches != 2 || !strings.Contains(d.Detail, "counted") {
		t.Errorf("after a batch counted with smaller sums: %+v, want 2 disputes", d)
	}

	// The disputed rows are not pruned, even when old enough.
	if _, err := l.Prune(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	tot, err := l.Totals(ctx, c.ContractID, false)
	if err != nil {
		t.Fatal(err)
	}
	if tot.AccessEvents < 20 {
		t.Errorf("ledger keeps %d rows after prune, want the 20 of the disputed batches", tot.AccessEvents)
	}
	// The disputes survive a restart.
	l.Close()
	l2 := openLedger(t, filepath.Join(filepath.Dir(l.Path()), "ledger.db"), c.ContractID)
	if d := l2.DisputeStatus(c.ContractID); d.Batches != 2 {
		t.Errorf("after reopening: %+v, want 2 disputes", d)
	}
}

// Duplicates the sidecar may have caused itself are no alarm: a batch the
// registry counted but answered with 409 is dropped and its rows sent
// again in a new batch, which the registry rightly calls duplicates.
func TestSyncNoAlarmForItsOwnResentRows(t *testing.T) {
	ctx := context.Background()
	lr, h := startLyingRegistry(t)
	c := h.CreateContract(t, newContract(t, "did:example:resent"))
	sc := newSidecar(t, lr.url, nil)
	l := openLedger(t, filepath.Join(t.TempDir(), "ledger.db"), c.ContractID)
	sy := sc.syncer(t, l)
	write(t, l, c.ContractID, 0, 10)
	lr.mu.Lock()
	lr.conflicts = 1
	lr.mu.Unlock()
	if _, err := sy.Sync(ctx); err == nil {
		t.Fatal("first sync: want the 409")
	}
	if _, err := sy.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if d := l.DisputeStatus(c.ContractID); d.Batches != 0 || l.Stats().Disputed != 0 {
		t.Errorf("the sidecar's own resent rows raised %+v", d)
	}
	if d := l.OutboxDepth(c.ContractID); d != 0 {
		t.Errorf("outbox depth %d, want 0", d)
	}
	tot, err := h.Client.MeteringTotals(ctx, c.ContractID, "", -1)
	if err != nil || tot.AccessEvents != 10 {
		t.Errorf("registry totals %+v, %v; want the 10 events once", tot, err)
	}
}
