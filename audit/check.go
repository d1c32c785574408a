package audit

import (
	"fmt"
	"sort"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
)

// Kinds of compliance findings.
const (
	// FindingRedacted: a billed read of a name after the log redacted it.
	FindingRedacted = "redacted"
	// FindingRetention: a copy cached longer than the terms'
	// retention_days, or a read served from such a copy.
	FindingRetention = "retention"
	// FindingPurpose: reads for a purpose the terms in force do not allow
	// (the contract's purposes, and the licensee's when it lists some).
	FindingPurpose = "purpose"
	// FindingQuota: billed use beyond the licensee's max_samples or
	// max_bytes (or the contract's usage limits).
	FindingQuota = "quota"
	// FindingNotInForce: a read priced under terms whose effective_from
	// is after it, or that a later version superseded more than
	// TermsSkew before it, or under an entry that holds no terms.
	FindingNotInForce = "not_in_force"
	// FindingExpired: a billed read after the licensee's terms expired.
	FindingExpired = "expired"
)

// Finding is one breach of the contract's terms that a ledger and the log
// show.
type Finding struct {
	Kind string `json:"kind"`
	// Seq is the ledger row (0 when the finding is about no one row).
	Seq    int64     `json:"seq,omitempty"`
	Name   string    `json:"name,omitempty"`
	Time   time.Time `json:"time"`
	Detail string    `json:"detail"`
}

// CachedObject is a copy a sidecar's cache holds (cache.ReadJournal).
type CachedObject struct {
	Name       string
	DecodedSHA string
	Committed  time.Time
}

// CheckInput is what a compliance check reads.
type CheckInput struct {
	// Facts are the verified log's (Report.Facts).
	Facts *Facts
	// Rows are the ledger's rows of the contract, in seq order.
	Rows []meter.Row
	// Purpose is the purpose the sidecar's tokens were asked for (its
	// --purpose); empty skips the purpose check.
	Purpose string
	// Licensee is whose terms apply; empty: the contract's only licensee,
	// if it has exactly one.
	Licensee string
	// Cached are the copies the sidecar's cache holds of the contract's
	// objects; nil skips the cache side of the retention check.
	Cached []CachedObject
	// Now is when the cache was read (time.Now when zero).
	Now time.Time
	// RedactionGrace is how long after a redaction is logged a read of the
	// name is not yet a finding (the time a sidecar takes to see it: its
	// log poll interval, when it has no live feed). Zero: none.
	RedactionGrace time.Duration
}

// Check reports every finding, in time order. Only billed access rows
// count as reads (a refused read is the sidecar doing its job).
func Check(in CheckInput) []Finding {
	if in.Now.IsZero() {
		in.Now = time.Now()
	}
	c := &checker{in: in, out: []Finding{}}
	c.rows()
	c.cached()
	sort.SliceStable(c.out, func(i, j int) bool { return c.out[i].Time.Before(c.out[j].Time) })
	return c.out
}

// limit is one quota: what is counted, how much was used, the most
// allowed and whose limit it is.
type limit struct {
	what      string
	used, max int64
	whose     string
}

type checker struct {
	in  CheckInput
	out []Finding
}

func (c *checker) add(kind string, r *meter.Row, format string, args ...any) {
	f := Finding{Kind: kind, Detail: fmt.Sprintf(format, args...)}
	if r != nil {
		f.Seq, f.Name, f.Time = r.Seq, r.Name, r.Time.UTC()
	}
	c.out = append(c.out, f)
}

// licensee is the licensee whose terms apply under t.
func (c *checker) licensee(t *contract.Contract) *contract.Licensee {
	if c.in.Licensee != "" {
		return t.Licensee(c.in.Licensee)
	}
	if len(t.Licensees) == 1 {
		return &t.Licensees[0]
	}
	return nil
}

// termsOf is the terms a row was read under: the version it names, else
// the one in force at its time.
func (c *checker) termsOf(r *meter.Row) *Terms {
	if r.TermsSeq != 0 {
		if t := c.in.Facts.TermsAt(r.TermsSeq); t != nil {
			return t
		}
	}
	return c.in.Facts.InForce(r.Time)
}

func (c *checker) rows() {
	f := c.in.Facts
	var samples, bytes int64
	quotaHit := map[string]bool{}
	purposeHit := map[uint64]bool{}
	expiredHit := false
	copies := map[string][]CachedObject{}
	for _, o := range c.in.Cached {
		copies[o.Name] = append(copies[o.Name], o)
	}
	for i := range c.in.Rows {
		r := &c.in.Rows[i]
		if r.Kind != contract.EventAccess || !contract.BillableOutcome(r.Outcome) {
			continue
		}
		if r.TermsSeq != 0 {
			switch t := f.TermsAt(r.TermsSeq); {
			case t == nil:
				c.add(FindingNotInForce, r, "priced under entry %d, which holds no terms", r.TermsSeq)
			case t.EffectiveFrom.After(r.Time):
				c.add(FindingNotInForce, r, "read at %s under the terms of entry %d, in force only from %s",
					r.Time.UTC().Format(time.RFC3339), t.Seq, t.EffectiveFrom.UTC().Format(time.RFC3339))
			default:
				n := f.SupersededAt(t, r.Time)
				if n == nil {
					break
				}
				c.add(FindingNotInForce, r, "read at %s under the terms of entry %d, superseded by entry %d from %s",
					r.Time.UTC().Format(time.RFC3339), t.Seq, n.Seq, n.EffectiveFrom.UTC().Format(time.RFC3339))
			}
		}
		if red := f.RedactedAt(r.Name, r.Time.Add(-c.in.RedactionGrace)); red != nil {
			c.add(FindingRedacted, r, "read %s after its redaction (entry %d, %s)", r.Time.Sub(red.Time).Round(time.Millisecond), red.Seq, red.Time.UTC().Format(time.RFC3339))
		}
		t := c.termsOf(r)
		if t == nil {
			continue
		}
		lic := c.licensee(&t.Terms)
		if p := c.in.Purpose; p != "" && !purposeHit[t.Seq] {
			switch {
			case !t.Terms.Usage.AllowsPurpose(p):
				purposeHit[t.Seq] = true
				c.add(FindingPurpose, r, "purpose %q is not one the terms of entry %d allow (%v)", p, t.Seq, t.Terms.Usage.Purposes)
			case lic != nil && !lic.Terms.AllowsPurpose(&t.Terms, p):
				purposeHit[t.Seq] = true
				c.add(FindingPurpose, r, "purpose %q is not one licensee %q may use under the terms of entry %d (%v)", p, lic.ID, t.Seq, lic.Terms.Purposes)
			}
		}
		samples += r.Samples
		bytes += r.Bytes
		limits := []limit{
			{"samples", samples, t.Terms.Usage.MaxSamples, "the contract's usage"},
			{"bytes", bytes, t.Terms.Usage.MaxBytes, "the contract's usage"},
		}
		if lic != nil {
			whose := fmt.Sprintf("licensee %q", lic.ID)
			limits = append(limits, limit{"samples", samples, lic.Terms.MaxSamples, whose}, limit{"bytes", bytes, lic.Terms.MaxBytes, whose})
			if lic.Terms.Expired(r.Time) && !expiredHit {
				expiredHit = true
				c.add(FindingExpired, r, "read after licensee %q's terms expired at %s", lic.ID, lic.Terms.ExpiresAt.UTC().Format(time.RFC3339))
			}
		}
		for _, l := range limits {
			if key := l.whose + " " + l.what; l.max > 0 && l.used > l.max && !quotaHit[key] {
				quotaHit[key] = true
				c.add(FindingQuota, r, "%d %s read, more than the %d %s allows (terms of entry %d)", l.used, l.what, l.max, l.whose, t.Seq)
			}
		}
		if ret := t.Terms.Usage.Retention(); ret > 0 {
			for _, o := range copies[r.Name] {
				if o.DecodedSHA == r.DecodedSHA && r.Time.Sub(o.Committed) > ret {
					c.add(FindingRetention, r, "served from a copy cached at %s, %s before, past retention_days %d",
						o.Committed.UTC().Format(time.RFC3339), r.Time.Sub(o.Committed).Round(time.Second), t.Terms.Usage.RetentionDays)
					break
				}
			}
		}
	}
}

// cached reports copies the cache holds longer than the retention of
// the terms in force now.
func (c *checker) cached() {
	t := c.in.Facts.InForce(c.in.Now)
	if t == nil {
		return
	}
	ret := t.Terms.Usage.Retention()
	if ret <= 0 {
		return
	}
	for _, o := range c.in.Cached {
		if age := c.in.Now.Sub(o.Committed); age > ret {
			c.out = append(c.out, Finding{Kind: FindingRetention, Name: o.Name, Time: o.Committed.Add(ret).UTC(),
				Detail: fmt.Sprintf("cached since %s (%s), past retention_days %d", o.Committed.UTC().Format(time.RFC3339), age.Round(time.Second), t.Terms.Usage.RetentionDays)})
		}
	}
}
