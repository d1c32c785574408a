package contract

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"time"
)

// Metering event kinds.
const (
	EventAccess = "access"
	EventEpoch  = "epoch"
)

// MaxBatchEvents bounds a metering batch.
const MaxBatchEvents = 1000

// MeteringEvent is one metered fact. Its ID is minted when the sidecar
// writes the row, so that any number of retries count it once.
type MeteringEvent struct {
	ID       string    `json:"id"`
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	Name     string    `json:"name,omitempty"`
	Bytes    int64     `json:"bytes"`
	Samples  int64     `json:"samples"`
	Distinct int64     `json:"distinct,omitempty"` // epoch: distinct objects
	Units    int64     `json:"units"`
	// CostNanoUSD is units times the unit price, in billionths of a dollar.
	CostNanoUSD int64  `json:"cost_nano_usd"`
	Epoch       int64  `json:"epoch"`
	Job         string `json:"job,omitempty"`
	TokenID     string `json:"token_jti,omitempty"`
	// Lease is the quota lease of the token (CapabilityClaims.Lease).
	Lease      string `json:"lease,omitempty"`
	DecodedSHA string `json:"decoded_sha256,omitempty"`
	Outcome    string `json:"outcome,omitempty"`
	// TermsSeq is the log entry of the terms the event was priced under
	// (0: the terms in force when the registry counts it).
	TermsSeq uint64 `json:"terms_seq,omitempty"`
}

// MeteringBatch is the payload of the sidecar-signed JWS (header typ
// TypeMetering, kid = the sidecar's JWK thumbprint) posted to
// POST /provenance/{id}/metering.
type MeteringBatch struct {
	Contract string          `json:"contract_id"`
	BatchID  string          `json:"batch_id"`
	Sidecar  string          `json:"sidecar"` // JWK thumbprint
	IssuedAt int64           `json:"iat"`
	Events   []MeteringEvent `json:"events,omitempty"`
	// Aggregates and Rows make an aggregate batch (instead of Events): the
	// sums of the ledger rows Rows names, per key (see MeteringAggregate).
	Aggregates []MeteringAggregate `json:"aggregates,omitempty"`
	Rows       *RowCommitment      `json:"rows,omitempty"`
}

// Aggregated reports whether b is an aggregate batch.
func (b *MeteringBatch) Aggregated() bool { return b.Rows != nil || len(b.Aggregates) != 0 }

// Validate checks a batch's shape.
func (b *MeteringBatch) Validate() error {
	if b.Contract == "" || b.BatchID == "" || b.Sidecar == "" {
		return errors.New("metering batch: contract_id, batch_id and sidecar are required")
	}
	if b.Aggregated() {
		return b.validateAggregates()
	}
	if len(b.Events) == 0 || len(b.Events) > MaxBatchEvents {
		return fmt.Errorf("metering batch: 1 to %d events", MaxBatchEvents)
	}
	seen := make(map[string]bool, len(b.Events))
	for i, e := range b.Events {
		if e.ID == "" || len(e.ID) > 128 {
			return fmt.Errorf("metering batch: event %d: id must be 1 to 128 characters", i)
		}
		if seen[e.ID] {
			return fmt.Errorf("metering batch: event id %q appears twice", e.ID)
		}
		seen[e.ID] = true
		if e.Kind != EventAccess && e.Kind != EventEpoch {
			return fmt.Errorf("metering batch: event %q: unknown kind %q", e.ID, e.Kind)
		}
		if e.Bytes < 0 || e.Samples < 0 || e.Units < 0 || e.CostNanoUSD < 0 || e.Distinct < 0 {
			return fmt.Errorf("metering batch: event %q: negative amount", e.ID)
		}
	}
	return nil
}

// MeteringResponse answers a metering batch: exactly what the registry
// counted, so that the sender can check it against what it sent.
// Accepted+Duplicates is the number of events in the batch; the sums are
// over the accepted events only; DuplicateIDs lists the events this sender
// had already sent (the registry counts an event once per sender). An
// aggregate batch is counted whole or not at all: Accepted is rows.count
// and Counted the aggregates' sums, or Duplicates is rows.count when the
// sender's same rows (same range, same root) were counted before.
type MeteringResponse struct {
	Accepted   int    `json:"accepted"`
	Duplicates int    `json:"duplicates"`
	Seq        uint64 `json:"seq,omitempty"` // the log entry, when any event was new
	// Licensee the accepted events are attributed to (the sender's
	// enrolment).
	Licensee     string   `json:"licensee,omitempty"`
	DuplicateIDs []string `json:"duplicate_ids,omitempty"`
	Counted      Sums     `json:"counted"`
	// Receipt proves the log entry Seq is committed, when there is one.
	Receipt *MeteringReceipt `json:"receipt,omitempty"`
}

// Sums are the amounts of a set of metering events.
type Sums struct {
	Samples     int64 `json:"samples"`
	Bytes       int64 `json:"bytes"`
	Units       int64 `json:"units"`
	CostNanoUSD int64 `json:"cost_nano_usd"`
}

// Add adds o to s, or reports false (leaving s alone) when a sum would
// not fit in int64.
func (s *Sums) Add(o Sums) bool {
	var r Sums
	var ok1, ok2, ok3, ok4 bool
	r.Samples, ok1 = addInt64(s.Samples, o.Samples)
	r.Bytes, ok2 = addInt64(s.Bytes, o.Bytes)
	r.Units, ok3 = addInt64(s.Units, o.Units)
	r.CostNanoUSD, ok4 = addInt64(s.CostNanoUSD, o.CostNanoUSD)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return false
	}
	*s = r
	return true
}

// Sums are the amounts the event carries.
func (e *MeteringEvent) Sums() Sums {
	return Sums{Samples: e.Samples, Bytes: e.Bytes, Units: e.Units, CostNanoUSD: e.CostNanoUSD}
}

// addInt64 adds two non-negative amounts, reporting false on overflow.
func addInt64(a, b int64) (int64, bool) {
	if a < 0 || b < 0 || a > math.MaxInt64-b {
		return 0, false
	}
	return a + b, true
}

// Access outcomes, as the sidecar reports them (the billing rule is in
// the README): served and partial open a pass over an object and bill a
// sample and their bytes; range continues a pass and bills its bytes;
// aborted bills what the response sent (its bytes, and the sample if it
// opened the pass); refused and verification_failed bill nothing. No other
// outcome is accepted.
const (
	OutcomeServed       = "served"
	OutcomePartial      = "partial"
	OutcomeRange        = "range"
	OutcomeAborted      = "aborted"
	OutcomeRefused      = "refused"
	OutcomeVerifyFailed = "verification_failed"
)

// BillableOutcome reports whether an access with this outcome is billed.
// The registry recomputes the bill with it and the sidecar prices with it.
func BillableOutcome(outcome string) bool {
	return outcome == OutcomeServed || outcome == OutcomePartial || outcome == OutcomeRange || outcome == OutcomeAborted
}

// Bounds on what one metering event may carry. An event is one read of
// one object, or one epoch summary of a job; these are far beyond any real
// one (a petabyte, a trillion samples), and small enough that a full batch
// of them sums without overflow. The registry refuses anything beyond them
// with 400.
const (
	MaxEventBytes   = 1 << 50 // 1 PiB
	MaxEventSamples = 1 << 40
	MaxEventUnits   = 1 << 50 // bytes, samples or tokens
	MaxEventEpoch   = 1 << 40
)

// CheckEventAmounts checks one event of a batch against the contract's
// pricing: amounts within bounds, units what the pricing unit makes of the
// event, and the cost exactly units times the unit price (nano-USD),
// computed without overflow. Epoch summaries and unbilled outcomes carry
// no units and no cost.
func CheckEventAmounts(e *MeteringEvent, p Pricing) error {
	switch {
	case e.Bytes < 0 || e.Samples < 0 || e.Units < 0 || e.CostNanoUSD < 0 || e.Distinct < 0 || e.Epoch < 0:
		return fmt.Errorf("event %q: negative amount", e.ID)
	case e.Bytes > MaxEventBytes:
		return fmt.Errorf("event %q: %d bytes, more than one event may carry (%d)", e.ID, e.Bytes, int64(MaxEventBytes))
	case e.Samples > MaxEventSamples || e.Distinct > MaxEventSamples:
		return fmt.Errorf("event %q: %d samples (%d distinct), more than one event may carry (%d)", e.ID, e.Samples, e.Distinct, int64(MaxEventSamples))
	case e.Units > MaxEventUnits:
		return fmt.Errorf("event %q: %d units, more than one event may carry (%d)", e.ID, e.Units, int64(MaxEventUnits))
	case e.Epoch > MaxEventEpoch:
		return fmt.Errorf("event %q: epoch %d out of range", e.ID, e.Epoch)
	}
	if e.Kind == EventAccess && !knownOutcome(outcomeOf(e)) {
		return fmt.Errorf("event %q: unknown outcome %q", e.ID, e.Outcome)
	}
	if e.Kind == EventEpoch || !BillableOutcome(outcomeOf(e)) {
		if e.Units != 0 || e.CostNanoUSD != 0 {
			what := "an epoch summary"
			if e.Kind != EventEpoch {
				what = fmt.Sprintf("outcome %q", outcomeOf(e))
			}
			return fmt.Errorf("event %q: %s is not billed, yet carries %d units costing %d nano-USD", e.ID, what, e.Units, e.CostNanoUSD)
		}
		return nil
	}
	return checkPriced(fmt.Sprintf("event %q", e.ID), p, e.Samples, e.Bytes, e.Units, e.CostNanoUSD)
}

// EventID is the id a sidecar gives row seq of its ledger ledgerID:
// "<ledger id>-<seq>", the seq in canonical decimal. The registry dedupes
// aggregate ranges and per-event batches by it.
func EventID(ledgerID string, seq int64) string {
	return ledgerID + "-" + strconv.FormatInt(seq, 10)
}

// SplitEventID splits an EventID. The ledger id is base64url and may hold
// "-": the seq is the canonical positive decimal after the last one; any
// other id is not a ledger row's (ok false).
func SplitEventID(id string) (ledgerID string, seq int64, ok bool) {
	i := strings.LastIndexByte(id, '-')
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.ParseInt(id[i+1:], 10, 64)
	if err != nil || n <= 0 || strconv.FormatInt(n, 10) != id[i+1:] {
		return "", 0, false
	}
	return id[:i], n, true
}

// checkPriced checks that billed amounts are priced as p says: units are
// the samples or bytes the pricing unit counts (none for a subscription),
// and the cost is units times the unit price, without overflow. what
// names the event or aggregate in errors.
func checkPriced(what string, p Pricing, samples, bytes, units, cost int64) error {
	want := units
	switch p.Unit {
	case UnitSample:
		want = samples
	case UnitByte:
		want = bytes
	case UnitSubscription:
		want = 0
	}
	if units != want {
		return fmt.Errorf("%s: %d units, but %d samples and %d bytes make %d %s units", what, units, samples, bytes, want, p.Unit)
	}
	nano := p.NanoUSD()
	if p.Unit == UnitSubscription {
		nano = 0
	}
	hi, lo := bits.Mul64(uint64(units), uint64(nano))
	if hi != 0 || lo > math.MaxInt64 {
		return fmt.Errorf("%s: %d units at %d nano-USD overflows", what, units, nano)
	}
	if cost != int64(lo) {
		return fmt.Errorf("%s: cost %d nano-USD, but %d units at %d nano-USD per %s cost %d", what, cost, units, nano, p.Unit, int64(lo))
	}
	return nil
}

// knownOutcome reports whether o is one of the access outcomes above: an
// unknown word must not pass for an unbilled read.
func knownOutcome(o string) bool {
	switch o {
	case OutcomeServed, OutcomePartial, OutcomeRange, OutcomeAborted, OutcomeRefused, OutcomeVerifyFailed:
		return true
	}
	return false
}

// outcomeOf is an access event's outcome; empty means served.
func outcomeOf(e *MeteringEvent) string {
	if e.Outcome == "" {
		return OutcomeServed
	}
	return e.Outcome
}

// MeteringTotals answers GET /provenance/{id}/metering/totals: sums over
// the events the registry counted, optionally filtered by job, epoch and
// licensee. The bill is the billed_* fields: accesses with a billing
// outcome. unbilled_* are accesses refused or failing verification, not
// billed (refused, verification_failed). presigned_* are objects the
// registry presigned for direct fetches (marketplace mode), which no
// sidecar meters.
//
// events, access_events and access_bytes count every row, billed or not;
// units and cost_nano_usd equal billed_units and billed_cost_nano_usd.
// They are kept for older readers.
type MeteringTotals struct {
	Contract string `json:"contract_id"`
	Licensee string `json:"licensee,omitempty"` // the filter, when given

	BilledEvents      int64 `json:"billed_events"`
	BilledSamples     int64 `json:"billed_samples"`
	BilledBytes       int64 `json:"billed_bytes"`
	BilledUnits       int64 `json:"billed_units"`
	BilledCostNanoUSD int64 `json:"billed_cost_nano_usd"`
	UnbilledEvents    int64 `json:"unbilled_events"`
	UnbilledBytes     int64 `json:"unbilled_bytes"`

	PresignedObjects int64 `json:"presigned_objects"`
	PresignedBytes   int64 `json:"presigned_bytes"`

	Events       int64 `json:"events"`
	AccessEvents int64 `json:"access_events"`
	AccessBytes  int64 `json:"access_bytes"`
	EpochEvents  int64 `json:"epoch_events"`
	EpochSamples int64 `json:"epoch_samples"`
	EpochBytes   int64 `json:"epoch_bytes"`
	Units        int64 `json:"units"`
	CostNanoUSD  int64 `json:"cost_nano_usd"`
}

// OutcomeTotals are the accesses of one outcome.
type OutcomeTotals struct {
	Events int64 `json:"events"`
	Billed bool  `json:"billed"`
	Sums
}

// MeteringReport is the full answer of GET
// /provenance/{id}/metering/totals: the totals, then the same accesses by
// outcome and, unless filtered to one licensee, the totals of each
// licensee (key "" for events of senders no licensee enrolled).
type MeteringReport struct {
	MeteringTotals
	Outcomes  map[string]OutcomeTotals  `json:"outcomes"`
	Licensees map[string]MeteringTotals `json:"licensees,omitempty"`
}

// TotalsFilter selects the events of a metering report: an empty Job or
// Licensee and a negative Epoch select all.
type TotalsFilter struct {
	Job      string
	Epoch    int64
	Licensee string
}
