package meter

import (
	"context"
	"fmt"
	"time"

	"github.com/provgate/provgate/contract"
)

// Quotas are counted per lease (the slice of a licensee's quota that a
// capability token carries, the same for every refresh of it), or per
// token id for a token without a lease, and per contract. A response
// reserves what it may bill when its quota is checked, under the same lock
// as the check, so that concurrent requests cannot pass a quota together:
// usage + reserved + asked must fit. The reservation is released once the
// access is submitted (from then on it is usage) or the response ended
// without billing.

// QuotaError says which quota is spent.
type QuotaError struct {
	Scope string // "lease", "token" or "contract"
	What  string // "samples" or "bytes"
	Used  int64  // used and reserved
	Limit int64
}

func (e *QuotaError) Error() string {
	return fmt.Sprintf("meter: %s quota spent: %d of %d %s used or reserved", e.Scope, e.Used, e.Limit, e.What)
}

func (e *QuotaError) Unwrap() error { return ErrQuotaSpent }

// Reservation is quota held by a response in flight.
type Reservation struct {
	l              *Ledger
	k              usageKey
	samples, bytes int64
	done           bool // l.mu
}

// Reserve is CheckQuota that also reserves samples and bytes, until the
// reservation's Submit turns it into usage (in one step, so that the
// quota never counts it twice nor not at all) or Release gives it back.
func (l *Ledger) Reserve(contractID, lease, tokenID string, q contract.Quota, u contract.Usage, samples, bytes int64) (*Reservation, error) {
	if samples < 0 || bytes < 0 {
		return nil, fmt.Errorf("%w: negative reservation", ErrInvalidEvent)
	}
	scope := "token"
	if lease != "" {
		scope = "lease"
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var cid int64 = -1
	if c := l.contracts[contractID]; c != nil {
		cid = c.id
	}
	k := usageKey{cid, quotaKey(lease, tokenID)}
	ts, tb := sum(l.usage[k], l.reserved[k])
	cs, cb := sum(l.cusage[cid], l.creserved[cid])
	switch {
	case q.MaxSamples > 0 && ts+samples > q.MaxSamples:
		return nil, &QuotaError{scope, "samples", ts, q.MaxSamples}
	case q.MaxBytes > 0 && tb+bytes > q.MaxBytes:
		return nil, &QuotaError{scope, "bytes", tb, q.MaxBytes}
	case u.MaxSamples > 0 && cs+samples > u.MaxSamples:
		return nil, &QuotaError{"contract", "samples", cs, u.MaxSamples}
	case u.MaxBytes > 0 && cb+bytes > u.MaxBytes:
		return nil, &QuotaError{"contract", "bytes", cb, u.MaxBytes}
	}
	reserve(l.reserved, k, samples, bytes)
	reserve(l.creserved, cid, samples, bytes)
	return &Reservation{l: l, k: k, samples: samples, bytes: bytes}, nil
}

// Release gives the reservation back; after Submit, or a first Release,
// it does nothing.
func (r *Reservation) Release() {
	r.l.mu.Lock()
	defer r.l.mu.Unlock()
	r.releaseLocked()
}

func (r *Reservation) releaseLocked() {
	if r.done {
		return
	}
	r.done = true
	reserve(r.l.reserved, r.k, -r.samples, -r.bytes)
	reserve(r.l.creserved, r.k.contract, -r.samples, -r.bytes)
}

// Submit is Ledger.Submit for the access the reservation was made for:
// the event's usage replaces the reservation atomically. It bills bytes
// already on their way, so a full buffer makes it wait (until ctx ends),
// never fail with ErrBusy. If it fails, the reservation is still held:
// Release it.
func (r *Reservation) Submit(ctx context.Context, e Event) (Pending, error) {
	if err := e.normalize(time.Now().UTC()); err != nil {
		return Pending{}, err
	}
	return r.l.enqueue(ctx, item{kind: kindAccess, ev: e, res: r})
}

// Record is Submit and Wait.
func (r *Reservation) Record(ctx context.Context, e Event) (Receipt, error) {
	p, err := r.Submit(ctx, e)
	if err != nil {
		return Receipt{}, err
	}
	return p.Wait(ctx)
}

// Reserved is what responses in flight hold of a lease's (or token's)
// quota now.
func (l *Ledger) Reserved(contractID, lease, tokenID string) (samples, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.contracts[contractID]
	if c == nil {
		return 0, 0
	}
	if r := l.reserved[usageKey{c.id, quotaKey(lease, tokenID)}]; r != nil {
		return r.samples, r.bytes
	}
	return 0, 0
}

func sum(a, b *usageTotals) (samples, bytes int64) {
	for _, u := range [...]*usageTotals{a, b} {
		if u != nil {
			samples += u.samples
			bytes += u.bytes
		}
	}
	return samples, bytes
}

// reserve adds to a reservation map, deleting entries that drop to zero so
// that the maps stay as small as the responses in flight; l.mu is held.
func reserve[K comparable](m map[K]*usageTotals, k K, samples, bytes int64) {
	u := m[k]
	if u == nil {
		u = &usageTotals{}
		m[k] = u
	}
	u.samples += samples
	u.bytes += bytes
	if u.samples == 0 && u.bytes == 0 {
		delete(m, k)
	}
}
