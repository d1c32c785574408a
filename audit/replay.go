package audit

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// Facts are what a verified log says that compliance checks need.
type Facts struct {
	Contract string
	// Terms are the verified terms versions, in log order.
	Terms []Terms
	// Names are the attestations and redactions of names, in log order.
	Names []NameEvent
}

// Terms is a verified version of the contract's terms, the entry that
// holds it and when it was logged.
type Terms struct {
	Seq    uint64
	Logged time.Time
	contract.TermsVersion
}

// NameEvent is an entry that attests a name (Redacted false) or redacts
// it, and the entry's time.
type NameEvent struct {
	Name     string
	Seq      uint64
	Time     time.Time
	Redacted bool
}

// RedactedAt returns the redaction in force for name at t: the last entry
// about the name logged by t, when it is a redaction; nil otherwise.
func (f *Facts) RedactedAt(name string, t time.Time) *NameEvent {
	var last *NameEvent
	for i := range f.Names {
		n := &f.Names[i]
		if n.Name == name && !n.Time.After(t) {
			last = n
		}
	}
	if last != nil && last.Redacted {
		return last
	}
	return nil
}

// TermsAt is the version with entry seq, or nil.
func (f *Facts) TermsAt(seq uint64) *Terms {
	for i := range f.Terms {
		if f.Terms[i].Seq == seq {
			return &f.Terms[i]
		}
	}
	return nil
}

// SupersededAt is the version after t when it came into force more than
// TermsSkew before at (t no longer prices what happened at at), or nil.
func (f *Facts) SupersededAt(t *Terms, at time.Time) *Terms {
	for i := range f.Terms {
		if n := &f.Terms[i]; n.Seq > t.Seq {
			if at.After(n.EffectiveFrom.Add(TermsSkew)) {
				return n
			}
			return nil
		}
	}
	return nil
}

// InForce is the version in force at t: the latest logged by t whose
// effective_from is not after t, or the first version when none is.
func (f *Facts) InForce(t time.Time) *Terms {
	var out *Terms
	for i := range f.Terms {
		v := &f.Terms[i]
		if out == nil || (!v.Logged.After(t) && !v.EffectiveFrom.After(t)) {
			out = v
		}
	}
	return out
}

// replay checks a log's entries in order, as a sidecar does, with the
// keys from the bundle: terms versions, attestations (keys in force,
// revocations, who may rewrite a name), metering batches (the sidecar's
// signature, what the entry counts, each event once per sender).
type replay struct {
	b       *Bundle
	cpv     *verify.CheckpointVerifier
	facts   *Facts
	revoked map[string]uint64 // issuer/kid -> revocation seq
	live    map[string]uint64
	owners  map[string]string
	counted map[string]uint64     // sidecar + " " + event id -> seq
	ranges  map[string][]*metered // sidecar + " " + ledger id -> aggregate entries
	single  map[string][]int64    // sidecar + " " + ledger id -> rows counted one by one
	meter   []*metered            // in log order
	bySeq   map[uint64]*metered

	attestations, metering, redactions, revocations int
}

// metered is a verified metering entry.
type metered struct {
	seq      uint64
	entry    *contract.Entry
	batch    *contract.MeteringBatch
	accepted map[string]bool
}

func newReplay(b *Bundle, cpv *verify.CheckpointVerifier) *replay {
	return &replay{b: b, cpv: cpv, facts: &Facts{Contract: b.Contract}, revoked: map[string]uint64{}, live: map[string]uint64{},
		owners: map[string]string{}, counted: map[string]uint64{}, ranges: map[string][]*metered{}, single: map[string][]int64{}, bySeq: map[uint64]*metered{}}
}

func (r *replay) meteringAt(seq uint64) *metered { return r.bySeq[seq] }

// termsAt is the version that governs entry seq made at t: the latest
// before seq in force at t, or the first.
func (r *replay) termsAt(seq uint64, t time.Time) *Terms {
	var out *Terms
	for i := range r.facts.Terms {
		v := &r.facts.Terms[i]
		if v.Seq >= seq {
			break
		}
		if out == nil || !v.EffectiveFrom.After(t) {
			out = v
		}
	}
	return out
}

// entry checks entry seq, reporting problems with fail.
func (r *replay) entry(seq uint64, e *contract.Entry, fail func(string, error)) {
	where := fmt.Sprintf("entry %d", seq)
	switch e.Kind {
	case contract.EntryContract:
		tv, err := r.cpv.OpenTerms(e.Note)
		if err != nil {
			fail("terms at "+where, err)
			return
		}
		if tv.Contract != r.b.Contract {
			fail("terms at "+where, fmt.Errorf("%w: terms of contract %q", verify.ErrTerms, tv.Contract))
			return
		}
		if len(r.facts.Terms) == 0 && seq != 1 {
			fail("terms at "+where, fmt.Errorf("%w: the first terms must be entry 1", verify.ErrTerms))
		}
		r.facts.Terms = append(r.facts.Terms, Terms{Seq: seq, Logged: e.Time, TermsVersion: *tv})
		return
	}
	tv := r.termsAt(seq, e.Time)
	if tv == nil {
		fail(where, fmt.Errorf("%w: it comes before any terms (entry 1 must hold them)", verify.ErrTerms))
		return
	}
	switch e.Kind {
	case contract.EntryAttestation:
		r.attestations++
		r.attestation(seq, e, tv, fail)
	case contract.EntryMetering:
		r.metering++
		if err := r.meteringEntry(seq, e, tv); err != nil {
			fail(where, err)
		}
	}
}

// attestationWhere names an attestation by what it is about.
func attestationWhere(seq uint64, jws string) string {
	a, err := verify.AttestationUnverified(jws)
	switch {
	case err != nil:
		return fmt.Sprintf("attestation at entry %d", seq)
	case a.Object != nil:
		return fmt.Sprintf("attestation for name %s (entry %d)", a.Object.Name, seq)
	case a.Redaction != nil:
		return fmt.Sprintf("redaction of name %s (entry %d)", a.Redaction.Name, seq)
	case a.Revocation != nil:
		return fmt.Sprintf("revocation of key %s of %s (entry %d)", a.Revocation.KeyID, a.Issuer, seq)
	}
	return fmt.Sprintf("attestation at entry %d", seq)
}

func (r *replay) attestation(seq uint64, e *contract.Entry, tv *Terms, fail func(string, error)) {
	where := attestationWhere(seq, e.JWS)
	peek, err := verify.PeekAttestation(e.JWS)
	if err != nil {
		fail(where, err)
		return
	}
	keys, err := r.contributorKeys(&tv.Terms, peek.Issuer)
	if err != nil {
		fail(where, err)
		return
	}
	at, kid, err := verify.VerifyAttestation(e.JWS, &tv.Terms, keys)
	if err != nil {
		fail(where, fmt.Errorf("signature of %q: %w", peek.Issuer, err))
		return
	}
	if rs, ok := r.revoked[at.Issuer+"/"+kid]; ok {
		fail(where, fmt.Errorf("%w: key %q of %q was revoked by entry %d", verify.ErrRevokedKey, kid, at.Issuer, rs))
		return
	}
	owned := func(name string) error {
		if o, ok := r.owners[name]; ok && !tv.Terms.MayRewrite(at.Issuer, o) {
			return fmt.Errorf("%q may not rewrite %q, owned by %q", at.Issuer, name, o)
		}
		return nil
	}
	switch at.Type {
	case contract.Contribution, contract.Transformation:
		if err := owned(at.Object.Name); err != nil {
			fail(where, err)
			return
		}
		if _, ok := r.owners[at.Object.Name]; !ok {
			r.owners[at.Object.Name] = at.Issuer
		}
		r.live[at.Object.Name] = seq
		r.facts.Names = append(r.facts.Names, NameEvent{Name: at.Object.Name, Seq: seq, Time: e.Time})
	case contract.Redaction:
		r.redactions++
		if err := owned(at.Redaction.Name); err != nil {
			fail(where, err)
			return
		}
		if _, ok := r.live[at.Redaction.Name]; !ok {
			fail(where, fmt.Errorf("redaction of %q, which is not a live object", at.Redaction.Name))
			return
		}
		delete(r.live, at.Redaction.Name)
		r.facts.Names = append(r.facts.Names, NameEvent{Name: at.Redaction.Name, Seq: seq, Time: e.Time, Redacted: true})
	case contract.Revocation:
		r.revocations++
		r.revoked[at.Issuer+"/"+at.Revocation.KeyID] = seq
	}
}

// contributorKeys is the contributor's key set under terms: inline, or
// the bundle's copy of its jwks_uri.
func (r *replay) contributorKeys(terms *contract.Contract, id string) (*jose.JSONWebKeySet, error) {
	ct := terms.Contributor(id)
	if ct == nil {
		return nil, fmt.Errorf("%w: %q", verify.ErrNotContributor, id)
	}
	if ct.JWKS != nil && len(ct.JWKS.Keys) > 0 {
		return ct.JWKS, nil
	}
	for i := range r.b.Keys.Fetched {
		if f := &r.b.Keys.Fetched[i]; f.URI == ct.JWKSURI {
			return &f.JWKS, nil
		}
	}
	return nil, fmt.Errorf("%w: the keys of %q (%s) are not in the bundle", verify.ErrUnknownKey, id, ct.JWKSURI)
}

// sidecarKey is a sidecar's key from the bundle; it must hash to jkt.
func (r *replay) sidecarKey(jkt string) (*jose.JSONWebKey, error) {
	k, ok := r.b.Keys.Sidecars[jkt]
	if !ok {
		return nil, fmt.Errorf("%w: the key of sidecar %s is not in the bundle", verify.ErrUnknownKey, jkt)
	}
	if tp, err := verify.Thumbprint(&k); err != nil || tp != jkt {
		return nil, fmt.Errorf("%w: the bundle's key for sidecar %s has thumbprint %s", verify.ErrKeyMismatch, jkt, tp)
	}
	return &k, nil
}

func (r *replay) meteringEntry(seq uint64, e *contract.Entry, tv *Terms) error {
	kid, err := verify.PeekKeyID(e.JWS, contract.TypeMetering)
	if err != nil {
		return err
	}
	key, err := r.sidecarKey(kid)
	if err != nil {
		return err
	}
	b, err := verify.VerifyMeteringBatch(e.JWS, key)
	if err != nil {
		return fmt.Errorf("metering batch of sidecar %s: %w", kid, err)
	}
	if b.Sidecar != kid {
		return fmt.Errorf("%w: batch %s names sidecar %q, signed by %q", verify.ErrWrongKey, b.BatchID, b.Sidecar, kid)
	}
	if b.Contract != r.b.Contract {
		return fmt.Errorf("%w: batch %s is for %q", verify.ErrWrongContract, b.BatchID, b.Contract)
	}
	m := &metered{seq: seq, entry: e, batch: b, accepted: make(map[string]bool, len(e.Accepted))}
	if b.Aggregated() {
		if err := r.aggregateEntry(kid, m, tv); err != nil {
			return err
		}
		r.meter = append(r.meter, m)
		r.bySeq[seq] = m
		return nil
	}
	if len(e.Accepted) == 0 {
		return fmt.Errorf("batch %s: the entry accepts no event", b.BatchID)
	}
	in := make(map[string]*contract.MeteringEvent, len(b.Events))
	for i := range b.Events {
		in[b.Events[i].ID] = &b.Events[i]
	}
	for _, id := range e.Accepted {
		ev := in[id]
		if ev == nil {
			return fmt.Errorf("batch %s: accepted event %q is not in the batch", b.BatchID, id)
		}
		if m.accepted[id] {
			return fmt.Errorf("batch %s: event %q accepted twice", b.BatchID, id)
		}
		pricing, err := r.pricing(seq, ev.TermsSeq, tv, ev.Time, ev.Time)
		if err != nil {
			return fmt.Errorf("batch %s: event %q: %w", b.BatchID, id, err)
		}
		if err := contract.CheckEventAmounts(ev, pricing); err != nil {
			return fmt.Errorf("batch %s: accepted %w", b.BatchID, err)
		}
		key := kid + " " + id
		if prev, ok := r.counted[key]; ok {
			return fmt.Errorf("%w: batch %s: event %q of sidecar %s was already counted by entry %d", verify.ErrDuplicate, b.BatchID, id, kid, prev)
		}
		if ledger, n, ok := contract.SplitEventID(id); ok {
			for _, prev := range r.ranges[kid+" "+ledger] {
				if rs := prev.batch.Rows; n > rs.AfterSeq && n <= rs.LastSeq {
					return fmt.Errorf("%w: batch %s: event %q of sidecar %s is row %d of ledger %s, which entry %d counted in rows (%d, %d]",
						verify.ErrDuplicate, b.BatchID, id, kid, n, ledger, prev.seq, rs.AfterSeq, rs.LastSeq)
				}
			}
			r.single[kid+" "+ledger] = append(r.single[kid+" "+ledger], n)
		}
		r.counted[key] = seq
		m.accepted[id] = true
	}
	r.meter = append(r.meter, m)
	r.bySeq[seq] = m
	return nil
}

// TermsSkew is how far past the end of a terms version (the next
// version's effective_from) an event or an aggregate's last row may be
// priced under it, as the registry allows.
const TermsSkew = 5 * time.Minute

// pricing is the pricing of the terms of entry termsSeq (an event or
// aggregate names the terms it was priced under), or of the terms in
// force at the entry when it names none. Terms superseded (by a version
// logged before the entry) more than TermsSkew before at, the time of the
// event or of the aggregate's last row, price nothing: a sender may not
// pick older, cheaper terms.
func (r *replay) pricing(seq, termsSeq uint64, tv *Terms, first, last time.Time) (contract.Pricing, error) {
	if last.IsZero() {
		// Undated: the registry prices it as of when it counts it, under
		// the terms current at the batch's entry.
		if termsSeq != 0 && termsSeq != tv.Seq {
			return contract.Pricing{}, fmt.Errorf("undated, priced under the terms of entry %d, not those current (entry %d)", termsSeq, tv.Seq)
		}
		return tv.Terms.Pricing, nil
	}
	if first.IsZero() || first.After(last) {
		first = last
	}
	var t *Terms
	if termsSeq == 0 {
		// What names no version is priced under the version in force at
		// its time, as the registry does.
		for i := range r.facts.Terms {
			v := &r.facts.Terms[i]
			if v.Seq < seq && (t == nil || !last.Before(v.EffectiveFrom)) {
				t = v
			}
		}
		if t == nil {
			return tv.Terms.Pricing, nil
		}
	} else if t = r.facts.TermsAt(termsSeq); t == nil || t.Seq >= seq {
		return contract.Pricing{}, fmt.Errorf("priced under entry %d, which holds no earlier terms", termsSeq)
	}
	if n := r.facts.SupersededAt(t, last); n != nil && n.Seq < seq {
		return contract.Pricing{}, fmt.Errorf("at %s priced under the terms of entry %d, superseded by entry %d from %s",
			last.UTC().Format(time.RFC3339), t.Seq, n.Seq, n.EffectiveFrom.UTC().Format(time.RFC3339))
	}
	// Nor newer terms for what happened before them (as the registry
	// refuses): a price cut would reprice rows read under dearer terms.
	if len(r.facts.Terms) > 0 && t.Seq != r.facts.Terms[0].Seq && first.Add(TermsSkew).Before(t.EffectiveFrom) {
		return contract.Pricing{}, fmt.Errorf("from %s priced under the terms of entry %d, in force only from %s",
			first.UTC().Format(time.RFC3339), t.Seq, t.EffectiveFrom.UTC().Format(time.RFC3339))
	}
	return t.Terms.Pricing, nil
}

// aggregateEntry checks an aggregate metering entry: it lists no events,
// every aggregate is priced as its terms say, and its rows overlap no rows
// of the same sender's ledger counted before.
func (r *replay) aggregateEntry(kid string, m *metered, tv *Terms) error {
	b := m.batch
	if len(m.entry.Accepted) != 0 {
		return fmt.Errorf("batch %s: an aggregate entry lists events", b.BatchID)
	}
	for i := range b.Aggregates {
		a := &b.Aggregates[i]
		pricing, err := r.pricing(m.seq, a.TermsSeq, tv, a.FirstTime, a.LastTime)
		if err != nil {
			return fmt.Errorf("batch %s: aggregate %d: %w", b.BatchID, i, err)
		}
		if err := contract.CheckAggregateAmounts(a, pricing); err != nil {
			return fmt.Errorf("batch %s: accepted %w", b.BatchID, err)
		}
	}
	key := kid + " " + b.Rows.Ledger
	for _, prev := range r.ranges[key] {
		if prev.batch.Rows.Overlaps(b.Rows) {
			return fmt.Errorf("%w: batch %s: rows (%d, %d] of ledger %s of sidecar %s overlap rows entry %d counted", verify.ErrDuplicate,
				b.BatchID, b.Rows.AfterSeq, b.Rows.LastSeq, b.Rows.Ledger, kid, prev.seq)
		}
	}
	for _, n := range r.single[key] {
		if n > b.Rows.AfterSeq && n <= b.Rows.LastSeq {
			return fmt.Errorf("%w: batch %s: rows (%d, %d] of ledger %s include row %d, counted one by one before", verify.ErrDuplicate,
				b.BatchID, b.Rows.AfterSeq, b.Rows.LastSeq, b.Rows.Ledger, n)
		}
	}
	r.ranges[key] = append(r.ranges[key], m)
	return nil
}

// counted are the events of the entry that it accepted and that are in
// scope.
func (m *metered) counted(s *LedgerScope) (Totals, error) {
	var t Totals
	if m.batch.Aggregated() {
		if m.batch.Rows == nil || m.batch.Rows.Ledger != s.ID {
			return t, nil
		}
		for i := range m.batch.Aggregates {
			a := &m.batch.Aggregates[i]
			if (s.Job == "" || a.Job == s.Job) && s.Epochs.Contains(a.Epoch) {
				if !t.Sums.Add(a.Sums()) {
					return t, fmt.Errorf("batch %s: sums overflow", m.batch.BatchID)
				}
				t.Events += a.Events
			}
		}
		return t, nil
	}
	for i := range m.batch.Events {
		ev := &m.batch.Events[i]
		if m.accepted[ev.ID] && s.In(ev) {
			if !t.add(ev) {
				return t, fmt.Errorf("batch %s: sums overflow", m.batch.BatchID)
			}
		}
	}
	return t, nil
}

// event is the batch's event with id, or nil.
func (m *metered) event(id string) *contract.MeteringEvent {
	for i := range m.batch.Events {
		if m.batch.Events[i].ID == id {
			return &m.batch.Events[i]
		}
	}
	return nil
}

// sums are what the batch commits to over all its rows.
func (m *metered) sums() Totals {
	var t Totals
	for i := range m.batch.Aggregates {
		t.Sums.Add(m.batch.Aggregates[i].Sums())
		t.Events += m.batch.Aggregates[i].Events
	}
	for i := range m.batch.Events {
		t.add(&m.batch.Events[i])
	}
	return t
}

func decodeStrictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the object")
	}
	return nil
}

// peekBatch reads a metering batch's payload without checking its
// signature: to find what to export (Verify checks the signature).
func peekBatch(jws string) (*contract.MeteringBatch, error) {
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: not a compact JWS", verify.ErrMalformed)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", verify.ErrMalformed, err)
	}
	var b contract.MeteringBatch
	if err := json.Unmarshal(payload, &b); err != nil {
		return nil, fmt.Errorf("%w: %v", verify.ErrMalformed, err)
	}
	return &b, nil
}
