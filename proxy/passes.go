package proxy

import (
	"container/list"
	"sync"
)

// The billing rule (README "Billing"): a sample is one pass over an object
// within a (job, epoch). The first byte of the object delivered in a (job,
// epoch) opens a pass and bills one sample (and the object's tokens); bytes
// not yet delivered in that pass bill bytes only; delivering any byte again
// opens a new pass. An aborted response bills what it sent. HEAD and 304
// send no object bytes and bill nothing.
//
// passes holds the open passes that do not cover their object yet, in
// memory and bounded. A pass that covers its object is dropped at once (any
// later byte opens a new pass anyway); a pass that is evicted, or lost with
// a restart, only makes the next read open a new pass: it overbills, never
// underbills.

// Defaults for the pass tracker.
const (
	// DefaultMaxPasses bounds the partial passes kept in memory.
	DefaultMaxPasses = 1 << 14
	// maxPassSpans bounds the disjoint delivered spans one pass keeps; a
	// read that would need more opens a new pass.
	maxPassSpans = 64
)

// passKey names a pass: the object (by name and decoded digest, so that
// an object re-attested under its name is another object) in a (job,
// epoch) of a contract.
type passKey struct {
	contract, job, name, sha string
	epoch                    int64
}

// span is the half-open byte interval [from, to).
type span struct{ from, to int64 }

type pass struct {
	key   passKey
	gen   uint64 // changes each time a new pass replaces this one
	size  int64
	spans []span // sorted, disjoint, not adjacent
	elem  *list.Element
}

// passTracker decides, per read, whether it opens a pass.
type passTracker struct {
	mu    sync.Mutex
	max   int
	gen   uint64
	m     map[passKey]*pass
	lru   *list.List // front: most recently used
	evict uint64
}

func newPassTracker(max int) *passTracker {
	if max <= 0 {
		max = DefaultMaxPasses
	}
	return &passTracker{max: max, m: map[passKey]*pass{}, lru: list.New()}
}

// passClaim is one read's place in a pass, settled when the read ends.
type passClaim struct {
	t      *passTracker
	key    passKey
	gen    uint64
	size   int64
	start  int64
	length int64
	stored bool // the pass is remembered (it does not cover the object)
	// Opens reports whether the read opened the pass (it bills the sample).
	Opens bool
}

// claim records that [start, start+length) of an object of size bytes is
// about to be delivered in (contract, job, epoch) and says whether the read
// opens a pass. A whole read of an empty object always opens one.
func (t *passTracker) claim(k passKey, size, start, length int64) *passClaim {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gen++
	c := &passClaim{t: t, key: k, gen: t.gen, size: size, start: start, length: length}
	s := span{start, start + length}
	p := t.m[k]
	if p != nil && p.size == size && length > 0 {
		if merged, ok := addSpan(p.spans, s); ok {
			p.spans = merged
			c.gen = p.gen
			t.lru.MoveToFront(p.elem)
			if covers(p.spans, size) {
				t.drop(p)
			}
			return c
		}
	}
	// A new pass.
	c.Opens = true
	if p != nil {
		t.drop(p)
	}
	if length == 0 || (start == 0 && length == size) {
		return c // covers the object: nothing to remember
	}
	c.stored = true
	t.remember(k, c.gen, size, s)
	return c
}

// remember starts the pass k with one span; t.mu is held.
func (t *passTracker) remember(k passKey, gen uint64, size int64, s span) {
	p := &pass{key: k, gen: gen, size: size, spans: []span{s}}
	p.elem = t.lru.PushFront(p)
	t.m[k] = p
	for t.lru.Len() > t.max {
		t.drop(t.lru.Back().Value.(*pass))
		t.evict++
	}
}

func (t *passTracker) drop(p *pass) {
	t.lru.Remove(p.elem)
	delete(t.m, p.key)
}

// settle ends a read that delivered sent of its length bytes. The bytes it
// did not send go back to its pass, so that a later read of them does not
// open a new pass. It returns whether the read bills the pass's sample: it
// does if it opened the pass, unless it sent nothing and no other read has
// joined the pass (then the pass is closed unbilled, as if never opened).
func (c *passClaim) settle(sent int64) (billSample bool) {
	if sent >= c.length {
		return c.Opens
	}
	t := c.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if !c.stored && c.Opens {
		// A whole read cut short: nobody can have joined its pass, which
		// now holds what it sent (unless a newer pass replaced it).
		if sent > 0 && t.m[c.key] == nil && t.gen == c.gen {
			t.remember(c.key, c.gen, c.size, span{c.start, c.start + sent})
		}
		return sent > 0
	}
	p := t.m[c.key]
	if p == nil || p.gen != c.gen {
		// The pass was completed, replaced or evicted meanwhile: others
		// may have read in it, so its sample stays with its opener.
		return c.Opens
	}
	p.spans = removeSpan(p.spans, span{c.start + sent, c.start + c.length})
	if len(p.spans) == 0 {
		t.drop(p)
		return c.Opens && sent > 0
	}
	return c.Opens
}

// addSpan merges s into spans unless it overlaps one of them (a byte
// delivered again) or the pass would need more than maxPassSpans spans.
func addSpan(spans []span, s span) ([]span, bool) {
	out := make([]span, 0, len(spans)+1)
	placed := false
	for _, x := range spans {
		if s.from < x.to && x.from < s.to {
			return nil, false
		}
		switch {
		case x.to < s.from || placed:
			out = append(out, x)
		case s.to < x.from:
			out = append(out, s, x)
			placed = true
		default: // adjacent: merge
			s = span{min(s.from, x.from), max(s.to, x.to)}
		}
	}
	if !placed {
		out = append(out, s)
	}
	if len(out) > maxPassSpans {
		return nil, false
	}
	return out, true
}

// removeSpan takes s out of spans.
func removeSpan(spans []span, s span) []span {
	out := spans[:0:0]
	for _, x := range spans {
		if x.to <= s.from || s.to <= x.from {
			out = append(out, x)
			continue
		}
		if x.from < s.from {
			out = append(out, span{x.from, s.from})
		}
		if s.to < x.to {
			out = append(out, span{s.to, x.to})
		}
	}
	return out
}

func covers(spans []span, size int64) bool {
	return len(spans) == 1 && spans[0].from == 0 && spans[0].to == size
}
