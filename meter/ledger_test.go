package meter_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
)

const testContract = "did:example:dataset-1"

// MustOpen opens a ledger in a temp dir with the contract priced per
// sample at $0.0005, and starts it; it is closed at the end of the test.
func MustOpen(tb testing.TB, path string, cfg meter.Config) *meter.Ledger {
	tb.Helper()
	if path == "" {
		path = filepath.Join(tb.TempDir(), "ledger.db")
	}
	l, err := meter.Open(context.Background(), path, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := l.SetPricing(context.Background(), testContract, contract.Pricing{Unit: contract.UnitSample, PriceUSD: 0.0005}); err != nil {
		tb.Fatal(err)
	}
	l.Start(context.Background())
	tb.Cleanup(func() { l.Close() })
	return l
}

func access(i int) meter.Event {
	return meter.Event{
		Contract: testContract, Name: fmt.Sprintf("shard-%05d.tar", i), Bytes: int64(1000 + i),
		DecodedSHA256: fmt.Sprintf("%064x", i), Epoch: int64(i % 3), Job: "job-a", TokenID: "tok-1",
	}
}

func TestRecordConcurrentlyAndReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.db")
	l := MustOpen(t, path, meter.Config{})
	const n = 2000
	var wg sync.WaitGroup
	ids := make([]string, n)
	var wantBytes int64
	for i := range n {
		wantBytes += int64(1000 + i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc, err := l.Record(context.Background(), access(i))
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = rc.ID
			if rc.Units != 1 || rc.CostNanoUSD != 500_000 {
				t.Errorf("receipt units %d cost %d, want 1 and 500000", rc.Units, rc.CostNanoUSD)
			}
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, id := range ids {
		if id == "" || seen[id] {
			t.Fatalf("event id %q empty or repeated", id)
		}
		seen[id] = true
	}
	st := l.Stats()
	if st.Written != n || st.Commits >= n || st.Outbox != n {
		t.Errorf("stats %+v: want %d written in fewer commits (group commit), outbox %d", st, n, n)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l2, err := meter.Open(context.Background(), path, meter.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if l2.ID() != l.ID() {
		t.Errorf("ledger id changed on reopen: %q -> %q", l.ID(), l2.ID())
	}
	tot, err := l2.Totals(context.Background(), testContract, false)
	if err != nil {
		t.Fatal(err)
	}
	want := contract.MeteringTotals{Contract: testContract, Events: n, AccessEvents: n, AccessBytes: wantBytes, Units: n, CostNanoUSD: n * 500_000,
		BilledEvents: n, BilledSamples: n, BilledBytes: wantBytes, BilledUnits: n, BilledCostNanoUSD: n * 500_000}
	if tot != want {
		t.Errorf("totals after reopen\n got %+v\nwant %+v", tot, want)
	}
	if s, b := l2.Usage(testContract, "tok-1"); s != n || b != wantBytes {
		t.Errorf("usage after reopen = %d samples %d bytes, want %d and %d", s, b, n, wantBytes)
	}
	if l2.OutboxDepth(testContract) != n {
		t.Errorf("outbox after reopen = %d, want %d", l2.OutboxDepth(testContract), n)
	}
	// New rows continue the chain.
	l2.Start(context.Background())
	rc, err := l2.Record(context.Background(), access(n))
	if err != nil {
		t.Fatal(err)
	}
	if rc.Seq != n+1 {
		t.Errorf("first seq after reopen = %d, want %d", rc.Seq, n+1)
	}
	res, err := l2.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Rows != n+1 || res.HeadSeq != n+1 {
		t.Errorf("verify = %+v, want %d rows", res, n+1)
	}
}

func TestPricing(t *testing.T) {
	tests := []struct {
		unit      string
		price     float64
		ev        meter.Event
		wantUnits int64
		wantCost  int64
	}{
		{contract.UnitSample, 0.0005, meter.Event{Bytes: 4096}, 1, 500_000},
		{contract.UnitSample, 0.0005, meter.Event{Bytes: 4096, Samples: 32}, 32, 16_000_000},
		{contract.UnitByte, 0.000000002, meter.Event{Bytes: 4096}, 4096, 8192},
		{contract.UnitToken, 0.00001, meter.Event{Bytes: 4096, Tokens: 700}, 700, 7_000_000},
		{contract.UnitSubscription, 100, meter.Event{Bytes: 4096}, 0, 0},
		{contract.UnitSample, 0.0005, meter.Event{Bytes: 10, Outcome: meter.OutcomePartial}, 1, 500_000},
		{contract.UnitSample, 0.0005, meter.Event{Outcome: meter.OutcomeRefused}, 0, 0},
		{contract.UnitByte, 1, meter.Event{Bytes: 4096, Outcome: meter.OutcomeVerifyFailed}, 0, 0},
	}
	l := MustOpen(t, "", meter.Config{})
	for i, tc := range tests {
		t.Run(fmt.Sprintf("%s/%s", tc.unit, tc.ev.Outcome), func(t *testing.T) {
			id := fmt.Sprintf("did:example:priced-%d", i)
			if err := l.SetPricing(context.Background(), id, contract.Pricing{Unit: tc.unit, PriceUSD: tc.price}); err != nil {
				t.Fatal(err)
			}
			tc.ev.Contract = id
			rc, err := l.Record(context.Background(), tc.ev)
			if err != nil {
				t.Fatal(err)
			}
			if rc.Units != tc.wantUnits || rc.CostNanoUSD != tc.wantCost {
				t.Errorf("units %d cost %d, want %d and %d", rc.Units, rc.CostNanoUSD, tc.wantUnits, tc.wantCost)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	l := MustOpen(t, "", meter.Config{})
	ctx := context.Background()
	for name, ev := range map[string]meter.Event{
		"unknown contract": {Contract: "did:example:other", Name: "a"},
		"negative bytes":   {Contract: testContract, Name: "a", Bytes: -1},
		"huge name":        {Contract: testContract, Name: string(bytes.Repeat([]byte("a"), 2000))},
		"overflowing cost": {Contract: testContract, Name: "a", Samples: 1 << 62},
		// Beyond what the registry takes in one event: such a row would
		// block the outbox for good.
		"absurd epoch":   {Contract: testContract, Name: "a", Epoch: contract.MaxEventEpoch + 1},
		"absurd bytes":   {Contract: testContract, Name: "a", Bytes: contract.MaxEventBytes + 1},
		"absurd samples": {Contract: testContract, Name: "a", Samples: contract.MaxEventSamples + 1, Outcome: meter.OutcomeRefused},
		"absurd tokens":  {Contract: testContract, Name: "a", Tokens: contract.MaxEventUnits + 1},
	} {
		if _, err := l.Record(ctx, ev); err == nil {
			t.Errorf("%s: recorded, want an error", name)
		}
	}
	if err := l.SetPricing(ctx, testContract, contract.Pricing{Unit: "furlong", PriceUSD: 1}); err == nil {
		t.Error("SetPricing accepted an unknown unit")
	}
	if st := l.Stats(); st.Written != 0 {
		t.Errorf("%d rows written from bad input", st.Written)
	}
}

func TestFullBufferRefusesThenLosesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.db")
	l, err := meter.Open(context.Background(), path, meter.Config{BufferSize: 8, FullWait: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.SetPricing(context.Background(), testContract, contract.Pricing{Unit: contract.UnitSample, PriceUSD: 0.0005}); err != nil {
		t.Fatal(err)
	}
	// The writer is not running: the buffer fills.
	var pending []meter.Pending
	for i := range 8 {
		p, err := l.Submit(context.Background(), access(i))
		if err != nil {
			t.Fatal(err)
		}
		pending = append(pending, p)
	}
	start := time.Now()
	_, err = l.Submit(context.Background(), access(8))
	if !errors.Is(err, meter.ErrBusy) {
		t.Fatalf("submit to a full buffer: %v, want ErrBusy", err)
	}
	if d := time.Since(start); d < 20*time.Millisecond || d > time.Second {
		t.Errorf("refused after %v, want about FullWait", d)
	}
	if st := l.Stats(); st.Refused != 1 || st.Queued != 8 {
		t.Errorf("stats %+v, want 1 refused, 8 queued", st)
	}
	l.Start(context.Background())
	for _, p := range pending {
		if _, err := p.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// A Submit blocked on a full buffer goes through once there is room.
	if _, err := l.Record(context.Background(), access(9)); err != nil {
		t.Fatal(err)
	}
	tot, err := l.Totals(context.Background(), testContract, false)
	if err != nil {
		t.Fatal(err)
	}
	if tot.AccessEvents != 9 {
		t.Errorf("%d events in the ledger, want the 9 accepted", tot.AccessEvents)
	}
	l.Stop()
	if _, err := l.Record(context.Background(), access(10)); !errors.Is(err, meter.ErrClosed) {
		t.Errorf("record after Stop: %v, want ErrClosed", err)
	}
}

func TestEndEpoch(t *testing.T) {
	l := MustOpen(t, "", meter.Config{})
	ctx := context.Background()
	evs := []meter.Event{
		{Name: "a", Bytes: 100, Epoch: 1, Job: "j"},
		{Name: "a", Bytes: 100, Epoch: 1, Job: "j"},
		{Name: "b", Bytes: 50, Epoch: 1, Job: "j", Outcome: meter.OutcomePartial},
		{Name: "c", Bytes: 0, Epoch: 1, Job: "j", Outcome: meter.OutcomeRefused},
		{Name: "d", Bytes: 999, Epoch: 2, Job: "j"},
		{Name: "e", Bytes: 999, Epoch: 1, Job: "other"},
	}
	for _, e := range evs {
		e.Contract = testContract
		if _, err := l.Submit(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	// Queued before the call, so in the summary without waiting.
	s, err := l.EndEpoch(ctx, testContract, "j", 1)
	if err != nil {
		t.Fatal(err)
	}
	if s.Events != 4 || s.Samples != 3 || s.Bytes != 250 || s.Distinct != 2 || s.Units != 3 || s.CostNanoUSD != 1_500_000 {
		t.Errorf("summary %+v: want 4 events, 3 samples, 250 bytes, 2 distinct, 3 units, 1500000 nano-USD", s)
	}
	again, err := l.EndEpoch(ctx, testContract, "j", 1)
	if err != nil {
		t.Fatal(err)
	}
	if again.Seq != s.Seq || again.Samples != s.Samples || again.ID != s.ID {
		t.Errorf("closing again gave %+v, want the same summary %+v", again, s)
	}
	empty, err := l.EndEpoch(ctx, testContract, "j", 7)
	if err != nil {
		t.Fatal(err)
	}
	if empty.Events != 0 || empty.Samples != 0 {
		t.Errorf("empty epoch summary %+v", empty)
	}
	// Epoch rows bill nothing at the registry.
	tot, err := l.Totals(ctx, testContract, false)
	if err != nil {
		t.Fatal(err)
	}
	if tot.EpochEvents != 2 || tot.EpochSamples != 3 || tot.EpochBytes != 250 || tot.Units != 5 || tot.CostNanoUSD != 2_500_000 {
		t.Errorf("totals %+v: want 2 epoch rows (3 samples, 250 bytes) and the 5 served units billed once", tot)
	}
	if _, err := json.Marshal(s); err != nil {
		t.Fatal(err)
	}
}

func TestQuota(t *testing.T) {
	l := MustOpen(t, "", meter.Config{})
	ctx := context.Background()
	for i := range 3 {
		if _, err := l.Record(ctx, meter.Event{Contract: testContract, Name: "a", Bytes: 100, TokenID: "t1", Epoch: int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Record(ctx, meter.Event{Contract: testContract, Name: "a", Bytes: 100, TokenID: "t2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Record(ctx, meter.Event{Contract: testContract, Name: "a", TokenID: "t1", Outcome: meter.OutcomeRefused}); err != nil {
		t.Fatal(err)
	}
	if s, b := l.Usage(testContract, "t1"); s != 3 || b != 300 {
		t.Errorf("t1 usage %d/%d, want 3 samples 300 bytes (refusals do not count)", s, b)
	}
	if s, b := l.ContractUsage(testContract); s != 4 || b != 400 {
		t.Errorf("contract usage %d/%d, want 4/400", s, b)
	}
	tests := []struct {
		name string
		q    contract.Quota
		u    contract.Usage
		size int64
		want string
	}{
		{"no limits", contract.Quota{}, contract.Usage{}, 100, ""},
		{"token samples left", contract.Quota{MaxSamples: 4}, contract.Usage{}, 100, ""},
		{"token samples spent", contract.Quota{MaxSamples: 3}, contract.Usage{}, 100, "token"},
		{"token bytes spent", contract.Quota{MaxBytes: 350}, contract.Usage{}, 100, "token"},
		{"contract samples spent", contract.Quota{}, contract.Usage{MaxSamples: 4}, 100, "contract"},
		{"contract bytes left", contract.Quota{}, contract.Usage{MaxBytes: 500}, 100, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := l.Reserve(testContract, "", "t1", tc.q, tc.u, 1, tc.size)
			if err == nil {
				r.Release()
			}
			var qe *meter.QuotaError
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (!errors.As(err, &qe) || qe.Scope != tc.want || !errors.Is(err, meter.ErrQuotaSpent)):
				t.Errorf("got %v, want a %s quota error", err, tc.want)
			}
		})
	}
}

// editRow rewrites one stored row with SQL, as someone with the file would.
func editRow(t *testing.T, path, stmt string, args ...any) {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	res, err := db.Exec(stmt, args...)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("%s changed %d rows", stmt, n)
	}
}

func TestVerifyNamesTheTamperedRow(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func(t *testing.T, path string)
		wantSeq int64
	}{
		{"edited name", func(t *testing.T, path string) {
			db, _ := sql.Open("sqlite3", "file:"+path)
			defer db.Close()
			var rec []byte
			if err := db.QueryRow("SELECT rec FROM events WHERE seq = 42").Scan(&rec); err != nil {
				t.Fatal(err)
			}
			edited := bytes.Replace(rec, []byte("shard-00041"), []byte("shard-00040"), 1)
			if bytes.Equal(edited, rec) {
				t.Fatal("name not found in the record")
			}
			editRow(t, path, "UPDATE events SET rec = ? WHERE seq = 42", edited)
		}, 42},
		{"edited hash", func(t *testing.T, path string) {
			editRow(t, path, "UPDATE events SET hash = zeroblob(32) WHERE seq = 7")
		}, 7},
		{"deleted row", func(t *testing.T, path string) {
			editRow(t, path, "DELETE FROM events WHERE seq = 13")
		}, 13},
		{"deleted last row", func(t *testing.T, path string) {
			editRow(t, path, "DELETE FROM events WHERE seq = 100")
		}, 100},
		{"moved to another contract", func(t *testing.T, path string) {
			editRow(t, path, "INSERT INTO contracts (contract_id) VALUES ('did:example:x')")
			editRow(t, path, "UPDATE events SET contract = (SELECT id FROM contracts WHERE contract_id = 'did:example:x') WHERE seq = 55")
		}, 55},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ledger.db")
			l := MustOpen(t, path, meter.Config{})
			for i := range 100 {
				if _, err := l.Submit(context.Background(), access(i)); err != nil {
					t.Fatal(err)
				}
			}
			l.Close()
			ro, err := meter.OpenReadOnly(context.Background(), path)
			if err != nil {
				t.Fatal(err)
			}
			defer ro.Close()
			if _, err := ro.Verify(context.Background()); err != nil {
				t.Fatalf("untouched ledger: %v", err)
			}
			tc.tamper(t, path)
			_, err = ro.Verify(context.Background())
			var te *meter.TamperError
			if !errors.As(err, &te) || !errors.Is(err, meter.ErrTampered) {
				t.Fatalf("verify after tampering: %v, want a TamperError", err)
			}
			if te.Seq != tc.wantSeq || te.ID != fmt.Sprintf("%s-%d", ro.ID(), tc.wantSeq) {
				t.Errorf("verify named row %d (%s), want %d: %v", te.Seq, te.ID, tc.wantSeq, err)
			}
		})
	}
}

func TestExportAndReport(t *testing.T) {
	l := MustOpen(t, "", meter.Config{})
	ctx := context.Background()
	for i := range 30 {
		if _, err := l.Submit(ctx, access(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Record(ctx, meter.Event{Contract: testContract, Name: "x", Epoch: 0, Job: "job-a", Outcome: meter.OutcomeRefused}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.EndEpoch(ctx, testContract, "job-a", 0); err != nil {
		t.Fatal(err)
	}
	var rows []meter.ExportRow
	if err := l.Export(ctx, 0, func(r meter.ExportRow) error { rows = append(rows, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 32 || rows[0].Seq != 1 || rows[31].Kind != contract.EventEpoch || rows[0].ID != l.ID()+"-1" || rows[0].Synced {
		t.Fatalf("export: %d rows, first %+v, last %+v", len(rows), rows[0], rows[len(rows)-1])
	}
	lines, err := l.Report(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 3 {
		t.Fatalf("report has %d lines, want 3 (epochs 0, 1, 2): %+v", len(lines), lines)
	}
	e0 := lines[0]
	if e0.Epoch != 0 || e0.Events != 11 || e0.Served != 10 || e0.Refused != 1 || e0.Units != 10 || e0.CostNanoUSD != 5_000_000 || !e0.Closed || e0.Unsynced != 12 {
		t.Errorf("epoch 0 line %+v", e0)
	}
	if got := meter.FormatUSD(5_000_000); got != "$0.005000000" {
		t.Errorf("FormatUSD = %q", got)
	}
}

func TestStopWithoutStartFailsQueuedEvents(t *testing.T) {
	l, err := meter.Open(context.Background(), filepath.Join(t.TempDir(), "ledger.db"), meter.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.SetPricing(context.Background(), testContract, contract.Pricing{Unit: contract.UnitSample, PriceUSD: 1}); err != nil {
		t.Fatal(err)
	}
	p, err := l.Submit(context.Background(), access(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.Wait(ctx); !errors.Is(err, meter.ErrClosed) {
		t.Errorf("wait on an event of a ledger closed before Start: %v, want ErrClosed", err)
	}
}

func TestSchemaVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.db")
	l := MustOpen(t, path, meter.Config{})
	l.Close()
	db, err := sql.Open("sqlite3", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	var v int
	if err := db.QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != meter.SchemaVersion {
		t.Fatalf("user_version = %d (%v), want %d", v, err, meter.SchemaVersion)
	}
	if _, err := db.Exec(fmt.Sprintf("PRAGMA user_version = %d", meter.SchemaVersion+1)); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := meter.Open(context.Background(), path, meter.Config{}); err == nil {
		t.Error("opened a ledger written by a newer schema")
	}
	if _, err := meter.OpenReadOnly(context.Background(), path); err == nil {
		t.Error("opened (read-only) a ledger written by a newer schema")
	}
	if _, err := meter.OpenReadOnly(context.Background(), filepath.Join(t.TempDir(), "missing.db")); err == nil {
		t.Error("OpenReadOnly created a missing ledger")
	}
}
