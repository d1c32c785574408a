package meter

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"time"

	"github.com/provgate/provgate/contract"
)

// Access outcomes. OutcomeServed and OutcomePartial open a pass over an
// object and bill a sample (and their bytes); OutcomeRange, a range that
// continues a pass, bills its bytes only; OutcomeAborted bills what the
// response sent (its bytes, and the sample if it opened the pass); the
// others bill nothing.
const (
	OutcomeServed       = contract.OutcomeServed
	OutcomePartial      = contract.OutcomePartial
	OutcomeRange        = contract.OutcomeRange
	OutcomeAborted      = contract.OutcomeAborted // the client went away mid-body
	OutcomeRefused      = contract.OutcomeRefused
	OutcomeVerifyFailed = contract.OutcomeVerifyFailed
)

// Limits on what one event may carry.
const (
	MaxNameLen    = 1024
	MaxFieldLen   = 128 // job, token jti, outcome, decoded sha256
	maxContractID = contract.MaxIDLen
)

// Event is one access to a contract's object, as the data path reports it.
type Event struct {
	// Time of the access; zero means now.
	Time     time.Time
	Contract string
	Name     string
	// Bytes delivered to the client.
	Bytes int64
	// Samples delivered; zero means 1 for a billing outcome (served,
	// partial) and 0 otherwise.
	Samples int64
	// Tokens delivered, for contracts priced per token.
	Tokens        int64
	DecodedSHA256 string
	Epoch         int64
	Job           string
	TokenID       string
	// Lease is the quota lease the token draws on; usage and quotas are
	// counted per lease, or per token id when it has none.
	Lease string
	// Outcome is one of the Outcome constants (or another short word for a
	// refusal); empty means OutcomeServed.
	Outcome string
}

// billable reports whether an outcome bills: the rule the registry
// checks batches against (contract.BillableOutcome).
func billable(outcome string) bool {
	return contract.BillableOutcome(outcome)
}

// quotaKey is what an event's usage counts against: its lease, or its
// token when it has none.
func quotaKey(lease, tokenID string) string {
	if lease != "" {
		return "lease:" + lease
	}
	return tokenID
}

// normalize fills defaults and checks bounds.
func (e *Event) normalize(now time.Time) error {
	if e.Time.IsZero() {
		e.Time = now
	}
	if e.Outcome == "" {
		e.Outcome = OutcomeServed
	}
	if e.Samples == 0 && (e.Outcome == OutcomeServed || e.Outcome == OutcomePartial) {
		e.Samples = 1 // a range that continues an object bills its bytes, not another sample
	}
	switch {
	case e.Contract == "" || len(e.Contract) > maxContractID:
		return fmt.Errorf("%w: contract id must be 1 to %d bytes", ErrInvalidEvent, maxContractID)
	case len(e.Name) > MaxNameLen:
		return fmt.Errorf("%w: name longer than %d bytes", ErrInvalidEvent, MaxNameLen)
	case len(e.Job) > MaxFieldLen || len(e.TokenID) > MaxFieldLen || len(e.Lease) > MaxFieldLen || len(e.Outcome) > MaxFieldLen || len(e.DecodedSHA256) > MaxFieldLen:
		return fmt.Errorf("%w: job, token id, outcome and sha256 are at most %d bytes", ErrInvalidEvent, MaxFieldLen)
	case e.Bytes < 0 || e.Samples < 0 || e.Tokens < 0 || e.Epoch < 0:
		return fmt.Errorf("%w: negative bytes, samples, tokens or epoch", ErrInvalidEvent)
	case e.Bytes > contract.MaxEventBytes || e.Samples > contract.MaxEventSamples || e.Tokens > contract.MaxEventUnits || e.Epoch > contract.MaxEventEpoch:
		// The registry refuses such an event; in the outbox it would hold
		// back every row after it.
		return fmt.Errorf("%w: bytes, samples, tokens or epoch beyond one event's bounds", ErrInvalidEvent)
	}
	return nil
}

// price returns the units and cost of an event under p, or an error when
// the cost does not fit in int64.
func price(p contract.Pricing, nano int64, e *Event) (units, cost int64, err error) {
	if !billable(e.Outcome) {
		return 0, 0, nil
	}
	switch p.Unit {
	case contract.UnitSample:
		units = e.Samples
	case contract.UnitByte:
		units = e.Bytes
	case contract.UnitToken:
		units = e.Tokens
	case contract.UnitSubscription:
		return 0, 0, nil
	}
	hi, lo := bits.Mul64(uint64(units), uint64(nano))
	if hi != 0 || lo > 1<<63-1 {
		return 0, 0, fmt.Errorf("%w: cost of %d units at %d nano-USD overflows", ErrInvalidEvent, units, nano)
	}
	return units, int64(lo), nil
}

// Row kinds, as stored.
const (
	kindAccess byte = 1
	kindEpoch  byte = 2
)

// Row is one ledger row as stored: an access or an epoch summary.
type Row struct {
	Seq      int64
	ID       string
	Kind     string // contract.EventAccess or contract.EventEpoch
	Time     time.Time
	Contract string
	Name     string
	Bytes    int64
	Samples  int64
	Tokens   int64
	// Distinct objects, for an epoch row.
	Distinct    int64
	Units       int64
	CostNanoUSD int64
	Epoch       int64
	Job         string
	TokenID     string
	Lease       string
	// TermsSeq is the log entry of the terms the row was priced under
	// (0 for rows from before terms were logged).
	TermsSeq   uint64
	DecodedSHA string
	Outcome    string
	// Events is the number of access rows an epoch row summarises.
	Events int64
	// Hash is the row's chain hash.
	Hash []byte
}

// MeteringEvent is the row as sent to the registry. An epoch row is sent
// with units and cost zero: the bill is the sum of access rows.
func (r *Row) MeteringEvent() contract.MeteringEvent {
	ev := contract.MeteringEvent{
		ID: r.ID, Time: r.Time, Kind: r.Kind, Name: r.Name, Bytes: r.Bytes, Samples: r.Samples,
		Distinct: r.Distinct, Units: r.Units, CostNanoUSD: r.CostNanoUSD, Epoch: r.Epoch,
		Job: r.Job, TokenID: r.TokenID, Lease: r.Lease, DecodedSHA: r.DecodedSHA, Outcome: r.Outcome,
		TermsSeq: r.TermsSeq,
	}
	if r.Kind == contract.EventEpoch {
		ev.Units, ev.CostNanoUSD = 0, 0
	}
	return ev
}

// eventID mints the id of row seq of ledger id.
func eventID(ledgerID string, seq int64) string { return contract.EventID(ledgerID, seq) }

// recordVersion is the first byte of every encoded record: 1 for a row
// without a lease, 2 for one with a lease (its string follows the others),
// 3 for one with a terms seq (the lease string, maybe empty, then the seq
// as a uvarint), so that every row has one encoding and old rows keep
// their hashes.
const (
	recordVersion      = 1
	recordVersionLease = 2
	recordVersionTerms = 3
)

// appendRecord encodes the row's content (everything but seq, id and
// hash) in the stable binary form that is stored and hashed.
func appendRecord(b []byte, r *Row) []byte {
	kind := kindAccess
	if r.Kind == contract.EventEpoch {
		kind = kindEpoch
	}
	version := byte(recordVersion)
	switch {
	case r.TermsSeq != 0:
		version = recordVersionTerms
	case r.Lease != "":
		version = recordVersionLease
	}
	b = append(b, version, kind)
	b = binary.AppendVarint(b, r.Time.UnixNano())
	for _, s := range [...]string{r.Contract, r.Name, r.Job, r.TokenID, r.DecodedSHA, r.Outcome} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	if version != recordVersion {
		b = binary.AppendUvarint(b, uint64(len(r.Lease)))
		b = append(b, r.Lease...)
	}
	if version == recordVersionTerms {
		b = binary.AppendUvarint(b, r.TermsSeq)
	}
	for _, n := range [...]int64{r.Bytes, r.Samples, r.Tokens, r.Distinct, r.Units, r.CostNanoUSD, r.Epoch, r.Events} {
		b = binary.AppendVarint(b, n)
	}
	return b
}

var errRecord = errors.New("malformed record")

// decodeRecord fills r from an encoded record.
func decodeRecord(b []byte, r *Row) error {
	orig := b
	if len(b) < 2 || (b[0] != recordVersion && b[0] != recordVersionLease && b[0] != recordVersionTerms) {
		return errRecord
	}
	version := b[0]
	strs := []*string{&r.Contract, &r.Name, &r.Job, &r.TokenID, &r.DecodedSHA, &r.Outcome}
	r.Lease, r.TermsSeq = "", 0
	if version != recordVersion {
		strs = append(strs, &r.Lease)
	}
	switch b[1] {
	case kindAccess:
		r.Kind = contract.EventAccess
	case kindEpoch:
		r.Kind = contract.EventEpoch
	default:
		return errRecord
	}
	b = b[2:]
	t, n := binary.Varint(b)
	if n <= 0 {
		return errRecord
	}
	r.Time = time.Unix(0, t).UTC()
	b = b[n:]
	for _, s := range strs {
		l, n := binary.Uvarint(b)
		if n <= 0 || l > uint64(len(b)-n) {
			return errRecord
		}
		*s = string(b[n : n+int(l)])
		b = b[n+int(l):]
	}
	if version == recordVersionTerms {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return errRecord
		}
		r.TermsSeq = v
		b = b[n:]
	}
	for _, p := range [...]*int64{&r.Bytes, &r.Samples, &r.Tokens, &r.Distinct, &r.Units, &r.CostNanoUSD, &r.Epoch, &r.Events} {
		v, n := binary.Varint(b)
		if n <= 0 {
			return errRecord
		}
		*p = v
		b = b[n:]
	}
	if len(b) != 0 {
		return errRecord
	}
	// One encoding per row: a longer-than-needed varint would decode to
	// the same row under a different hash.
	if again := appendRecord(make([]byte, 0, len(orig)), r); !bytes.Equal(again, orig) {
		return errRecord
	}
	return nil
}

// genesis is the chain's starting hash for a ledger id.
func genesis(ledgerID string) []byte {
	h := sha256.Sum256([]byte("provgate-meter-v1" + ledgerID))
	return h[:]
}

// chainHash is SHA-256(prev || seq || record).
type chainHasher struct {
	buf []byte
}

func (c *chainHasher) sum(prev []byte, seq int64, rec []byte) [32]byte {
	c.buf = append(c.buf[:0], prev...)
	c.buf = binary.BigEndian.AppendUint64(c.buf, uint64(seq))
	c.buf = append(c.buf, rec...)
	return sha256.Sum256(c.buf)
}
