package cache

import (
	"container/list"
	"hash/maphash"
)

// Policy is an eviction policy.
type Policy int

const (
	// PolicyTinyLFU (the default) is W-TinyLFU: new entries enter a small
	// LRU window; an entry leaving the window replaces main-region entries
	// only if the frequency sketch counts it as used more often than them.
	// A cyclic read of a dataset larger than the cache keeps a stable
	// subset cached.
	PolicyTinyLFU Policy = iota
	// PolicyLRU is plain least-recently-used: every new entry is admitted.
	// It gets no hits on a cyclic read larger than the cache.
	PolicyLRU
)

// String names the policy.
func (p Policy) String() string {
	if p == PolicyLRU {
		return "lru"
	}
	return "tinylfu"
}

// regions of an entry.
const (
	regionWindow = iota
	regionMain
)

// sketch is a count-min sketch of access frequencies with 4-bit-like
// saturation at 15 and periodic halving (TinyLFU aging), over keys seen
// whether cached or not.
type sketch struct {
	seed    maphash.Seed
	rows    [4][]uint8
	mask    uint64
	adds    int
	resetAt int
}

func newSketch(width int) *sketch {
	w := 1
	for w < width {
		w <<= 1
	}
	s := &sketch{seed: maphash.MakeSeed(), mask: uint64(w - 1), resetAt: 10 * w}
	for i := range s.rows {
		s.rows[i] = make([]uint8, w)
	}
	return s
}

func (s *sketch) idx(key string) [4]uint64 {
	h := maphash.String(s.seed, key)
	h1, h2 := h, h>>32|h<<32
	var out [4]uint64
	for i := range out {
		out[i] = (h1 + uint64(i)*h2) & s.mask
	}
	return out
}

func (s *sketch) add(key string) {
	ix := s.idx(key)
	for i, j := range ix {
		if s.rows[i][j] < 15 {
			s.rows[i][j]++
		}
	}
	s.adds++
	if s.adds >= s.resetAt {
		for i := range s.rows {
			for j := range s.rows[i] {
				s.rows[i][j] >>= 1
			}
		}
		s.adds /= 2
	}
}

func (s *sketch) estimate(key string) uint8 {
	ix := s.idx(key)
	m := uint8(255)
	for i, j := range ix {
		m = min(m, s.rows[i][j])
	}
	return m
}

// lru is a list of entries, most recently used at the front.
type lru struct {
	l     list.List
	bytes int64
}

func (l *lru) pushFront(e *entry) { e.elem = l.l.PushFront(e); l.bytes += e.size }
func (l *lru) pushBack(e *entry)  { e.elem = l.l.PushBack(e); l.bytes += e.size }
func (l *lru) remove(e *entry)    { l.l.Remove(e.elem); e.elem = nil; l.bytes -= e.size }
func (l *lru) touch(e *entry)     { l.l.MoveToFront(e.elem) }

// victims returns unpinned entries from the back (least recent first)
// whose sizes add up to at least need bytes, or ok false.
func (l *lru) victims(need int64, skip *entry) (out []*entry, ok bool) {
	var got int64
	for el := l.l.Back(); el != nil && got < need; el = el.Prev() {
		e := el.Value.(*entry)
		if e.pins > 0 || e == skip {
			continue
		}
		out = append(out, e)
		got += e.size
	}
	return out, got >= need
}

// oldestUnpinned is the least recent unpinned entry, or nil.
func (l *lru) oldestUnpinned() *entry {
	for el := l.l.Back(); el != nil; el = el.Prev() {
		if e := el.Value.(*entry); e.pins == 0 {
			return e
		}
	}
	return nil
}
