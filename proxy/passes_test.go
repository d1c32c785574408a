package proxy

import (
	"sync"
	"sync/atomic"
	"testing"
)

func TestPassTracker(t *testing.T) {
	k := passKey{contract: "c", job: "j", name: "n", sha: "s", epoch: 1}
	const size = 100
	type step struct {
		start, length int64
		sent          int64 // -1: all of it
		wantSample    bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"every whole read is a pass", []step{{0, size, -1, true}, {0, size, -1, true}}},
		{"a range from offset 1 opens the pass", []step{{1, 99, -1, true}, {0, 1, -1, false}}},
		{"ranges that continue a pass bill bytes only", []step{{0, 40, -1, true}, {40, 40, -1, false}, {80, 20, -1, false}}},
		{"a byte again opens a new pass", []step{{10, 10, -1, true}, {15, 1, -1, true}, {10, 5, -1, false}}},
		{"a completed pass is closed", []step{{50, 50, -1, true}, {0, 50, -1, false}, {0, 1, -1, true}}},
		{"a whole read after a range is a new pass", []step{{0, 10, -1, true}, {0, size, -1, true}}},
		{"a range after a whole read is a new pass", []step{{0, size, -1, true}, {99, 1, -1, true}}},
		{"an aborted opener bills its sample; the unsent rest continues the pass", []step{{0, size, 60, true}, {60, 40, -1, false}}},
		{"an aborted range gives back what it did not send", []step{{20, 50, 10, true}, {30, 40, -1, false}}},
		{"an opener that sent nothing bills nothing", []step{{0, size, 0, false}, {5, 5, -1, true}}},
		{"a range that sent nothing bills nothing", []step{{5, 5, 0, false}, {5, 5, -1, true}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pt := newPassTracker(0)
			for i, s := range tc.steps {
				c := pt.claim(k, size, s.start, s.length)
				sent := s.sent
				if sent < 0 {
					sent = s.length
				}
				if got := c.settle(sent); got != s.wantSample {
					t.Errorf("step %d [%d, +%d) sent %d: bills a sample %v, want %v", i, s.start, s.length, sent, got, s.wantSample)
				}
			}
		})
	}
}

// TestPassTrackerOpenerAbortsAfterOthersJoined: a read that joined a pass
// relies on its opener's sample, so an opener that then sends nothing
// still bills it.
func TestPassTrackerOpenerAbortsAfterOthersJoined(t *testing.T) {
	pt := newPassTracker(0)
	k := passKey{name: "n"}
	opener := pt.claim(k, 100, 0, 50)
	joiner := pt.claim(k, 100, 50, 10)
	if !opener.Opens || joiner.Opens {
		t.Fatalf("opens: opener %v, joiner %v", opener.Opens, joiner.Opens)
	}
	if joiner.settle(10) {
		t.Error("the joiner billed a sample")
	}
	if !opener.settle(0) {
		t.Error("the opener sent nothing after another read joined its pass, and billed no sample")
	}
}

// TestPassTrackerKeysAreIndependent: another job, epoch, name, digest or
// contract is another pass.
func TestPassTrackerKeysAreIndependent(t *testing.T) {
	pt := newPassTracker(0)
	base := passKey{contract: "c", job: "j", name: "n", sha: "s", epoch: 1}
	pt.claim(base, 100, 1, 10).settle(10)
	for _, k := range []passKey{
		{contract: "c2", job: "j", name: "n", sha: "s", epoch: 1},
		{contract: "c", job: "j2", name: "n", sha: "s", epoch: 1},
		{contract: "c", job: "j", name: "n2", sha: "s", epoch: 1},
		{contract: "c", job: "j", name: "n", sha: "s2", epoch: 1},
		{contract: "c", job: "j", name: "n", sha: "s", epoch: 2},
	} {
		if c := pt.claim(k, 100, 50, 10); !c.Opens {
			t.Errorf("%+v continued another key's pass", k)
		}
	}
	if c := pt.claim(base, 100, 50, 10); c.Opens {
		t.Error("the base pass was lost")
	}
}

// TestPassTrackerBoundsOnlyOverbill: an evicted pass, or one with too many
// spans, makes the next read open a new pass (a sample more), never fewer.
func TestPassTrackerBoundsOnlyOverbill(t *testing.T) {
	pt := newPassTracker(2)
	keys := []passKey{{name: "a"}, {name: "b"}, {name: "c"}}
	for _, k := range keys {
		pt.claim(k, 100, 0, 10).settle(10)
	}
	if len(pt.m) != 2 || pt.lru.Len() != 2 {
		t.Fatalf("tracker holds %d passes (%d in the list), bound 2", len(pt.m), pt.lru.Len())
	}
	if c := pt.claim(keys[0], 100, 10, 10); !c.Opens {
		t.Error("a read continuing an evicted pass did not open a new one")
	}
	pt = newPassTracker(0)
	k := passKey{name: "spans"}
	for i := range int64(maxPassSpans) {
		if c := pt.claim(k, 1000, 2*i, 1); c.Opens != (i == 0) {
			t.Fatalf("span %d: opens %v", i, c.Opens)
		}
	}
	if c := pt.claim(k, 1000, 2*maxPassSpans, 1); !c.Opens {
		t.Error("a read needing more than maxPassSpans spans continued the pass")
	}
	if c := pt.claim(k, 1000, 2*maxPassSpans+1, 1); c.Opens {
		t.Error("the new pass did not take the read that opened it")
	}
}

// TestPassTrackerConcurrentReadsOpenOnePass: disjoint ranges of one pass
// claimed at once bill exactly one sample between them.
func TestPassTrackerConcurrentReadsOpenOnePass(t *testing.T) {
	pt := newPassTracker(0)
	k := passKey{name: "n"}
	var opened atomic.Int64
	var wg sync.WaitGroup
	for i := range int64(50) {
		wg.Go(func() {
			c := pt.claim(k, 1000, i*10, 10)
			if c.settle(10) {
				opened.Add(1)
			}
		})
	}
	wg.Wait()
	if opened.Load() != 1 {
		t.Errorf("50 disjoint ranges of one pass billed %d samples, want 1", opened.Load())
	}
}
