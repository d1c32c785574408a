package meter_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
)

// TestReserveConcurrent: 30 goroutines reserve one sample each against a
// quota with 16 left; exactly 16 get it, and what they record is what the
// lease has used.
func TestReserveConcurrent(t *testing.T) {
	l := MustOpen(t, "", meter.Config{})
	ctx := context.Background()
	q := contract.Quota{MaxSamples: 20}
	for i := range 4 {
		if _, err := l.Record(ctx, meter.Event{Contract: testContract, Name: "a", Bytes: 1, TokenID: "tok-a", Lease: "L", Epoch: int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	var granted, refused atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 30 {
		wg.Go(func() {
			<-start
			res, err := l.Reserve(testContract, "L", "tok-b", q, contract.Usage{}, 1, 1)
			if err != nil {
				var qe *meter.QuotaError
				if !errors.As(err, &qe) || qe.Scope != "lease" || !errors.Is(err, meter.ErrQuotaSpent) {
					t.Errorf("refusal %v, want a lease QuotaError", err)
				}
				refused.Add(1)
				return
			}
			granted.Add(1)
			if _, err := res.Record(ctx, meter.Event{Contract: testContract, Name: "a", Bytes: 1, TokenID: "tok-b", Lease: "L", Epoch: int64(100 + i)}); err != nil {
				t.Error(err)
			}
			res.Release() // after the record, gives nothing back
		})
	}
	close(start)
	wg.Wait()
	if granted.Load() != 16 || refused.Load() != 14 {
		t.Errorf("granted %d, refused %d; want 16 and 14", granted.Load(), refused.Load())
	}
	if s, b := l.Usage(testContract, "lease:L"); s != 20 || b != 20 {
		t.Errorf("lease usage %d samples / %d bytes, want 20 / 20", s, b)
	}
	if s, b := l.Reserved(testContract, "L", ""); s != 0 || b != 0 {
		t.Errorf("%d samples / %d bytes still reserved after every release", s, b)
	}
}

// TestQuotaIsPerLease: two tokens of one lease share its quota; a token
// of another lease, or without one, has its own; a release gives back an
// unbilled reservation.
func TestQuotaIsPerLease(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.db")
	l := MustOpen(t, path, meter.Config{})
	ctx := context.Background()
	q := contract.Quota{MaxSamples: 2}
	for _, tok := range []string{"t1", "t2"} {
		if _, err := l.Record(ctx, meter.Event{Contract: testContract, Name: "a", TokenID: tok, Lease: "L1"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Reserve(testContract, "L1", "t3", q, contract.Usage{}, 1, 0); !errors.Is(err, meter.ErrQuotaSpent) {
		t.Errorf("a third token of the lease: %v, want the lease's quota spent", err)
	}
	for _, lease := range []string{"L2", ""} {
		res, err := l.Reserve(testContract, lease, "t1", q, contract.Usage{}, 2, 0)
		if err != nil {
			t.Errorf("lease %q: %v, want its own quota", lease, err)
			continue
		}
		if _, err := l.Reserve(testContract, lease, "t1", q, contract.Usage{}, 1, 0); !errors.Is(err, meter.ErrQuotaSpent) {
			t.Errorf("lease %q: a reservation past the quota went through: %v", lease, err)
		}
		res.Release()
		res.Release() // twice: gives back once
		if _, err := l.Reserve(testContract, lease, "t1", q, contract.Usage{}, 2, 0); err != nil {
			t.Errorf("lease %q after release: %v", lease, err)
		}
	}
	// The rows record the lease, and the usage survives a reopen.
	l.Close()
	l2 := MustOpen(t, path, meter.Config{})
	if s, _ := l2.Usage(testContract, "lease:L1"); s != 2 {
		t.Errorf("after reopen the lease has used %d samples, want 2", s)
	}
	var leases []string
	l2.Export(ctx, 0, func(r meter.ExportRow) error {
		leases = append(leases, r.Lease)
		return nil
	})
	if len(leases) != 2 || leases[0] != "L1" || leases[1] != "L1" {
		t.Errorf("exported rows name leases %q, want L1 twice", leases)
	}
}

// TestAbortedAccessBills: an aborted response bills the bytes it sent and
// the sample it says it opened.
func TestAbortedAccessBills(t *testing.T) {
	l := MustOpen(t, "", meter.Config{})
	r, err := l.Record(context.Background(), meter.Event{Contract: testContract, Name: "a", Bytes: 700, Samples: 1, Outcome: meter.OutcomeAborted})
	if err != nil {
		t.Fatal(err)
	}
	if r.Units != 1 || r.CostNanoUSD != 500_000 {
		t.Errorf("aborted access with its sample: %d units, %d nano-USD; want 1, 500000", r.Units, r.CostNanoUSD)
	}
	if s, b := l.Usage(testContract, ""); s != 1 || b != 700 {
		t.Errorf("usage %d / %d, want 1 / 700", s, b)
	}
}

// TestSubscriptionBillsNothingPerRead: a subscription is billed outside
// metering; its reads count against quotas but cost nothing.
func TestSubscriptionBillsNothingPerRead(t *testing.T) {
	l := MustOpen(t, "", meter.Config{})
	ctx := context.Background()
	if err := l.SetPricing(ctx, "did:example:sub", contract.Pricing{Unit: contract.UnitSubscription, PriceUSD: 100}); err != nil {
		t.Fatal(err)
	}
	r, err := l.Record(ctx, meter.Event{Contract: "did:example:sub", Name: "a", Bytes: 10, TokenID: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Units != 0 || r.CostNanoUSD != 0 {
		t.Errorf("a read under a subscription: %d units, %d nano-USD; want 0", r.Units, r.CostNanoUSD)
	}
	if _, err := l.Reserve("did:example:sub", "", "t", contract.Quota{MaxSamples: 1}, contract.Usage{}, 1, 0); !errors.Is(err, meter.ErrQuotaSpent) {
		t.Errorf("the read did not count against the quota: %v", err)
	}
}

// TestReservedSubmitWaitsForRoom: a full buffer refuses a plain event with
// ErrBusy, but a reserved access (whose bytes are already leaving) waits
// for room instead of being dropped.
func TestReservedSubmitWaitsForRoom(t *testing.T) {
	ctx := context.Background()
	l, err := meter.Open(ctx, filepath.Join(t.TempDir(), "ledger.db"), meter.Config{BufferSize: 1, FullWait: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.SetPricing(ctx, testContract, contract.Pricing{Unit: contract.UnitSample, PriceUSD: 0.0005}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Submit(ctx, meter.Event{Contract: testContract, Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Submit(ctx, meter.Event{Contract: testContract, Name: "b"}); !errors.Is(err, meter.ErrBusy) {
		t.Fatalf("plain submit into a full buffer: %v, want ErrBusy", err)
	}
	res, err := l.Reserve(testContract, "", "t", contract.Quota{}, contract.Usage{}, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := res.Record(ctx, meter.Event{Contract: testContract, Name: "c", Bytes: 1, TokenID: "t"})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("reserved submit into a full buffer returned at once: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	l.Start(ctx)
	if err := <-done; err != nil {
		t.Fatalf("reserved submit after the writer started: %v", err)
	}
	if s, _ := l.Usage(testContract, "t"); s != 1 {
		t.Errorf("usage %d, want 1", s)
	}
}
