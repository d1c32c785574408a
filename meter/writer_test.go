package meter_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/provgate/provgate/meter"
)

// TestWaitersCommitWithoutTheWriter: waiting callers commit their groups
// themselves, handing the commit from one to the next, with no help from
// the writer goroutine. The writer here lets a group nobody waits for
// linger for an hour, so a waiter whose group no one committed (a lost
// hand-off) would hang past its deadline; every Record must return well
// before it, each event committed once.
func TestWaitersCommitWithoutTheWriter(t *testing.T) {
	l := MustOpen(t, filepath.Join(t.TempDir(), "ledger.db"), meter.Config{CommitDelay: time.Hour})
	const rounds, callers = 50, 16
	start := time.Now()
	for r := range rounds {
		var wg sync.WaitGroup
		for c := range callers {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if _, err := l.Record(ctx, access(r*callers+c)); err != nil {
					t.Errorf("round %d caller %d: %v", r, c, err)
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
	}
	st := l.Stats()
	if st.Written != rounds*callers || st.Commits >= rounds*callers {
		t.Errorf("stats %+v: want %d events written in fewer commits", st, rounds*callers)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("%d rounds took %v: commits waited for the writer's linger", rounds, d)
	}
}
