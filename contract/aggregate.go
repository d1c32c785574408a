package contract

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"time"
)

// Bounds of an aggregate metering batch.
const (
	// MaxBatchAggregates bounds the aggregates of one batch.
	MaxBatchAggregates = 1000
	// MaxAggregateRows bounds the ledger rows one aggregate batch covers.
	MaxAggregateRows = 1 << 20
	// RowsRootSize is the size of a row tree's root (SHA-256).
	RowsRootSize = 32
)

// RowCommitment names the ledger rows an aggregate batch sums: the rows of
// the contract in the sender's ledger Ledger with AfterSeq < seq <=
// LastSeq, Count of them, and Root, the RFC 6962 Merkle root of their
// canonical leaves in seq order (provgate.meter.row/v1, see meter.RowLeaf).
// The registry counts a (contract, sender, ledger) seq range once: the
// same range with the same root again is a duplicate, any other range
// overlapping a counted one is refused (409).
type RowCommitment struct {
	Ledger   string `json:"ledger"`
	AfterSeq int64  `json:"after_seq"`
	LastSeq  int64  `json:"last_seq"`
	Count    int64  `json:"count"`
	Root     []byte `json:"root"`
}

// Same reports whether r and o name the same rows with the same root.
func (r *RowCommitment) Same(o *RowCommitment) bool {
	return r.Ledger == o.Ledger && r.AfterSeq == o.AfterSeq && r.LastSeq == o.LastSeq && r.Count == o.Count && string(r.Root) == string(o.Root)
}

// Overlaps reports whether r and o share a seq of one ledger.
func (r *RowCommitment) Overlaps(o *RowCommitment) bool {
	return r.Ledger == o.Ledger && r.AfterSeq < o.LastSeq && o.AfterSeq < r.LastSeq
}

// MeteringAggregate sums the rows of an aggregate batch that share a key:
// kind, outcome (accesses), job, epoch, lease and terms version. Events
// is the number of rows; FirstTime and LastTime bound their times (a
// terms version it names must not be superseded at LastTime, nor come
// into force after FirstTime, within the skew).
type MeteringAggregate struct {
	Kind     string `json:"kind"`
	Outcome  string `json:"outcome,omitempty"`
	Job      string `json:"job,omitempty"`
	Epoch    int64  `json:"epoch"`
	Lease    string `json:"lease,omitempty"`
	TermsSeq uint64 `json:"terms_seq,omitempty"`
	// Licensee, when given, must be the licensee that enrolled the sender.
	Licensee    string    `json:"licensee,omitempty"`
	Events      int64     `json:"events"`
	Samples     int64     `json:"samples"`
	Bytes       int64     `json:"bytes"`
	Units       int64     `json:"units"`
	CostNanoUSD int64     `json:"cost_nano_usd"`
	FirstTime   time.Time `json:"first_time"`
	LastTime    time.Time `json:"last_time"`
}

// Sums are the amounts the aggregate carries.
func (a *MeteringAggregate) Sums() Sums {
	return Sums{Samples: a.Samples, Bytes: a.Bytes, Units: a.Units, CostNanoUSD: a.CostNanoUSD}
}

// Key is what rows must share to be summed in one aggregate.
type AggregateKey struct {
	Kind, Outcome, Job, Lease, Licensee string
	Epoch                               int64
	TermsSeq                            uint64
}

// Key is the aggregate's key.
func (a *MeteringAggregate) Key() AggregateKey {
	return AggregateKey{Kind: a.Kind, Outcome: a.Outcome, Job: a.Job, Lease: a.Lease, Licensee: a.Licensee, Epoch: a.Epoch, TermsSeq: a.TermsSeq}
}

// validateAggregates checks an aggregate batch's shape: its rows named
// within bounds, aggregates with distinct keys whose events add up to the
// rows' count.
func (b *MeteringBatch) validateAggregates() error {
	r := b.Rows
	switch {
	case len(b.Events) != 0:
		return errors.New("metering batch: events and aggregates are exclusive")
	case r == nil:
		return errors.New("metering batch: aggregates need rows")
	case r.Ledger == "" || len(r.Ledger) > 128:
		return errors.New("metering batch: rows.ledger must be 1 to 128 characters")
	case r.AfterSeq < 0 || r.LastSeq <= r.AfterSeq:
		return fmt.Errorf("metering batch: rows (%d, %d] is no range", r.AfterSeq, r.LastSeq)
	case r.Count < 1 || r.Count > MaxAggregateRows || r.Count > r.LastSeq-r.AfterSeq:
		return fmt.Errorf("metering batch: rows.count %d: 1 to %d, and at most the range's %d seqs", r.Count, MaxAggregateRows, r.LastSeq-r.AfterSeq)
	case len(r.Root) != RowsRootSize:
		return fmt.Errorf("metering batch: rows.root must be %d bytes", RowsRootSize)
	case len(b.Aggregates) == 0 || len(b.Aggregates) > MaxBatchAggregates:
		return fmt.Errorf("metering batch: 1 to %d aggregates", MaxBatchAggregates)
	}
	seen := make(map[AggregateKey]bool, len(b.Aggregates))
	var events int64
	for i := range b.Aggregates {
		a := &b.Aggregates[i]
		if a.Kind != EventAccess && a.Kind != EventEpoch {
			return fmt.Errorf("metering batch: aggregate %d: unknown kind %q", i, a.Kind)
		}
		if a.Kind == EventEpoch && a.Outcome != "" {
			return fmt.Errorf("metering batch: aggregate %d: an epoch aggregate has no outcome", i)
		}
		if len(a.Job) > 128 || len(a.Lease) > 128 || len(a.Outcome) > 128 || len(a.Licensee) > 128 {
			return fmt.Errorf("metering batch: aggregate %d: job, lease, outcome and licensee are at most 128 bytes", i)
		}
		k := a.Key()
		if a.Kind == EventAccess && k.Outcome == "" {
			k.Outcome = OutcomeServed
		}
		if seen[k] {
			return fmt.Errorf("metering batch: aggregate %d repeats the key of another", i)
		}
		seen[k] = true
		if a.Events < 1 || a.Events > r.Count {
			return fmt.Errorf("metering batch: aggregate %d: %d events, want 1 to rows.count", i, a.Events)
		}
		events += a.Events // at most 1000 * 2^20
		if a.FirstTime.IsZero() || a.LastTime.Before(a.FirstTime) {
			return fmt.Errorf("metering batch: aggregate %d: first_time and last_time must bound its rows", i)
		}
	}
	if events != r.Count {
		return fmt.Errorf("metering batch: the aggregates sum %d events, rows.count is %d", events, r.Count)
	}
	return nil
}

// CheckAggregateAmounts checks one aggregate of a batch against the
// pricing of its terms version, as CheckEventAmounts checks one event:
// every amount within Events times one event's bounds, units what the
// pricing unit makes of the sums, and the cost exactly units times the
// unit price, without overflow. Since the cost of an event is linear in
// its units, the sums of events that each pass CheckEventAmounts pass it,
// and sums that pass it are the sums of such events. Epoch aggregates and
// unbilled outcomes carry no units and no cost.
func CheckAggregateAmounts(a *MeteringAggregate, p Pricing) error {
	what := fmt.Sprintf("aggregate %s/%s job %q epoch %d", a.Kind, a.Outcome, a.Job, a.Epoch)
	switch {
	case a.Bytes < 0 || a.Samples < 0 || a.Units < 0 || a.CostNanoUSD < 0 || a.Epoch < 0 || a.Events < 1:
		return fmt.Errorf("%s: negative amount", what)
	case !within(a.Bytes, MaxEventBytes, a.Events):
		return fmt.Errorf("%s: %d bytes, more than %d events may carry", what, a.Bytes, a.Events)
	case !within(a.Samples, MaxEventSamples, a.Events):
		return fmt.Errorf("%s: %d samples, more than %d events may carry", what, a.Samples, a.Events)
	case !within(a.Units, MaxEventUnits, a.Events):
		return fmt.Errorf("%s: %d units, more than %d events may carry", what, a.Units, a.Events)
	case a.Epoch > MaxEventEpoch:
		return fmt.Errorf("%s: epoch out of range", what)
	}
	outcome := a.Outcome
	if outcome == "" {
		outcome = OutcomeServed
	}
	if a.Kind == EventAccess && !knownOutcome(outcome) {
		return fmt.Errorf("%s: unknown outcome %q", what, a.Outcome)
	}
	if a.Kind == EventEpoch || !BillableOutcome(outcome) {
		if a.Units != 0 || a.CostNanoUSD != 0 {
			return fmt.Errorf("%s: not billed, yet carries %d units costing %d nano-USD", what, a.Units, a.CostNanoUSD)
		}
		return nil
	}
	return checkPriced(what, p, a.Samples, a.Bytes, a.Units, a.CostNanoUSD)
}

// within reports whether v <= per*n, where per*n may pass int64.
func within(v int64, per uint64, n int64) bool {
	hi, lo := bits.Mul64(per, uint64(n))
	if hi != 0 || lo > math.MaxInt64 {
		return true
	}
	return v <= int64(lo)
}
