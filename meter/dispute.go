package meter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/provgate/provgate/contract"
)

// ErrDisputed is the error of a batch the registry acknowledged without
// counting exactly what was sent.
var ErrDisputed = errors.New("registry did not count the batch as sent")

// checkAnswer compares the registry's answer to a batch with the events
// sent in it. The answer must account for every event once, as accepted
// or as a duplicate; a duplicate must be an event of this batch that an
// earlier batch may have carried (seq <= mayRepeat; a retry of the same
// batch is answered as its first send); and the sums counted must be
// those of the accepted events.
func checkAnswer(events []contract.MeteringEvent, mayRepeat int64, resp *contract.MeteringResponse) error {
	if resp.Accepted < 0 || resp.Duplicates != len(resp.DuplicateIDs) || resp.Accepted+resp.Duplicates != len(events) {
		return fmt.Errorf("%w: sent %d events, registry accepted %d and called %d duplicates (%d ids listed)",
			ErrDisputed, len(events), resp.Accepted, resp.Duplicates, len(resp.DuplicateIDs))
	}
	byID := make(map[string]int, len(events))
	for i, e := range events {
		byID[e.ID] = i
	}
	dup := make(map[string]bool, len(resp.DuplicateIDs))
	for _, id := range resp.DuplicateIDs {
		if _, ok := byID[id]; !ok || dup[id] {
			return fmt.Errorf("%w: registry called %q a duplicate, which this batch did not carry once", ErrDisputed, id)
		}
		if _, seq, ok := contract.SplitEventID(id); !ok || seq > mayRepeat {
			return fmt.Errorf("%w: registry called event %q a duplicate, but this sidecar never sent it before", ErrDisputed, id)
		}
		dup[id] = true
	}
	var want contract.Sums
	for _, e := range events {
		if !dup[e.ID] && !want.Add(e.Sums()) {
			return fmt.Errorf("%w: the batch's sums overflow", ErrDisputed)
		}
	}
	if resp.Counted != want {
		return fmt.Errorf("%w: registry counted %+v, the accepted events sum to %+v", ErrDisputed, resp.Counted, want)
	}
	return nil
}

// DisputeInfo is what a contract's disputes are: how many batches the
// registry acknowledged without counting exactly what was sent, and the
// latest one's detail. Their rows are kept in the ledger.
type DisputeInfo struct {
	Batches int64
	Detail  string
}

// dispute records that the registry did not count batch b of c as sent:
// the rows stay in the ledger (Prune keeps them), the contract's dispute
// count and detail show in DisputeStatus, and the Disputed counter moves.
// Recording the same batch twice (a retry after a crash answered the
// same) counts once.
func (l *Ledger) dispute(ctx context.Context, c *contractState, b *batch, afterSeq int64, cause error) error {
	return l.recordDispute(ctx, c, b.id, afterSeq, b.last, cause)
}

// recordDispute records a dispute named id over the rows (afterSeq,
// lastSeq] of c, once.
func (l *Ledger) recordDispute(ctx context.Context, c *contractState, id string, afterSeq, lastSeq int64, cause error) error {
	res, err := l.db.ExecContext(ctx, `INSERT OR IGNORE INTO disputes (contract, batch, after_seq, last_seq, time, detail)
		VALUES (?, ?, ?, ?, ?, ?)`, c.id, id, afterSeq, lastSeq, time.Now().UnixNano(), cause.Error())
	if err != nil {
		return fmt.Errorf("meter: sync %s: record dispute of %s: %w", c.name, id, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		l.addDispute(c.name, id, cause.Error())
		l.disputed.Add(1)
	}
	return nil
}

func (l *Ledger) addDispute(contractID, batch, detail string) {
	l.disputeMu.Lock()
	defer l.disputeMu.Unlock()
	next := map[string]DisputeInfo{}
	if m := l.disputes.Load(); m != nil {
		for k, v := range *m {
			next[k] = v
		}
	}
	d := next[contractID]
	d.Batches++
	d.Detail = fmt.Sprintf("batch %s: %s", batch, detail)
	next[contractID] = d
	l.disputes.Store(&next)
}

// loadDisputes reads each contract's recorded disputes.
func (l *Ledger) loadDisputes(ctx context.Context) error {
	rows, err := l.rdb.QueryContext(ctx, `SELECT contract, batch, detail FROM disputes ORDER BY time`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var batch, detail string
		if err := rows.Scan(&id, &batch, &detail); err != nil {
			return err
		}
		if c := l.byID[id]; c != nil {
			l.addDispute(c.name, batch, detail)
		}
	}
	return rows.Err()
}

// DisputeStatus is the disputes of contractID (zero when none).
func (l *Ledger) DisputeStatus(contractID string) DisputeInfo {
	if m := l.disputes.Load(); m != nil {
		return (*m)[contractID]
	}
	return DisputeInfo{}
}

// keptFrom is the first seq Prune must keep for disputes (max int64 when
// none).
func (l *Ledger) keptFrom(ctx context.Context) (int64, error) {
	var after *int64
	if err := l.rdb.QueryRowContext(ctx, "SELECT min(after_seq) FROM disputes").Scan(&after); err != nil {
		return 0, err
	}
	if after == nil {
		return 1<<63 - 1, nil
	}
	return *after + 1, nil
}
