package meter

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// DefaultAggregateRows bounds the ledger rows one aggregate batch covers.
const DefaultAggregateRows = 20000

// aggregateJSONSize is a generous bound on one aggregate's JSON beyond
// its strings, to keep the signed batch under verify.MaxJWSSize.
const aggregateJSONSize = 320

// aggregator sums rows into an aggregate batch: one aggregate per key,
// and the row tree of every row.
type aggregator struct {
	tree  *rowTree
	aggs  []contract.MeteringAggregate
	index map[contract.AggregateKey]int
	size  int
}

func newAggregator() *aggregator {
	return &aggregator{tree: newRowTree(0), index: map[contract.AggregateKey]int{}}
}

// rowKey is the aggregate key of a row, as sent (MeteringEvent).
func rowKey(ev *contract.MeteringEvent) contract.AggregateKey {
	k := contract.AggregateKey{Kind: ev.Kind, Job: ev.Job, Lease: ev.Lease, Epoch: ev.Epoch, TermsSeq: ev.TermsSeq}
	if ev.Kind == contract.EventAccess {
		k.Outcome = ev.Outcome
		if k.Outcome == "" {
			k.Outcome = OutcomeServed
		}
	}
	return k
}

// fits reports whether r can join the batch without passing its bounds:
// rows, aggregates and bytes of JSON.
func (g *aggregator) fits(r *Row, maxRows, maxBytes int) bool {
	if g.tree.size() >= uint64(maxRows) {
		return false
	}
	ev := r.MeteringEvent()
	if _, ok := g.index[rowKey(&ev)]; ok {
		return true
	}
	return len(g.aggs) < contract.MaxBatchAggregates && g.size+aggregateJSONSize+len(ev.Job)+len(ev.Lease)+len(ev.Outcome) <= maxBytes
}

// add adds r to its aggregate and its leaf to the tree.
func (g *aggregator) add(r *Row) {
	g.tree.add(r)
	ev := r.MeteringEvent()
	k := rowKey(&ev)
	i, ok := g.index[k]
	if !ok {
		i = len(g.aggs)
		g.index[k] = i
		g.aggs = append(g.aggs, contract.MeteringAggregate{Kind: k.Kind, Outcome: k.Outcome, Job: k.Job, Epoch: k.Epoch,
			Lease: k.Lease, TermsSeq: k.TermsSeq, FirstTime: ev.Time, LastTime: ev.Time})
		g.size += aggregateJSONSize + len(k.Job) + len(k.Lease) + len(k.Outcome)
	}
	a := &g.aggs[i]
	a.Events++
	// Each row is within one event's bounds and a batch holds at most
	// contract.MaxAggregateRows of them, so the sums fit.
	a.Samples += ev.Samples
	a.Bytes += ev.Bytes
	a.Units += ev.Units
	a.CostNanoUSD += ev.CostNanoUSD
	if ev.Time.Before(a.FirstTime) {
		a.FirstTime = ev.Time
	}
	if ev.Time.After(a.LastTime) {
		a.LastTime = ev.Time
	}
}

// nextAggregate makes, signs and records the next aggregate batch of c:
// the rows after acked (up to upTo when re-signing the batch in flight),
// or nil when there are none.
func (s *Syncer) nextAggregate(ctx context.Context, c *contractState, acked, sent int64, resign bool, upTo int64) (*batch, error) {
	maxRows, maxBytes := s.cfg.AggregateRows, s.cfg.MaxBatchBytes
	if resign {
		maxRows, maxBytes = contract.MaxAggregateRows, 1<<62
	}
	g := newAggregator()
	var last int64
	full := errors.New("full")
	err := s.l.scanRows(ctx, func(r *Row, _ int64) error {
		if g.tree.size() > 0 && !g.fits(r, maxRows, maxBytes) {
			return full
		}
		g.add(r)
		last = r.Seq
		return nil
	}, "SELECT seq, contract, rec, hash FROM events WHERE seq > ? AND seq <= ? AND contract = ? ORDER BY seq LIMIT ?", acked, upTo, c.id, maxRows)
	if err != nil && !errors.Is(err, full) {
		return nil, fmt.Errorf("meter: sync %s: %w", c.name, err)
	}
	if g.tree.size() == 0 {
		return nil, nil
	}
	rows := &contract.RowCommitment{Ledger: s.l.id, AfterSeq: acked, LastSeq: last, Count: int64(g.tree.size()), Root: g.tree.root()}
	b := &batch{id: s.aggregateBatchID(c.name+s.salt, rows), last: last, count: rows.Count, after: acked, mayRepeat: sent, aggregate: true}
	mb := &contract.MeteringBatch{Contract: c.name, BatchID: b.id, Sidecar: s.kid, IssuedAt: time.Now().Unix(), Aggregates: g.aggs, Rows: rows}
	if b.jws, err = verify.SignMeteringBatch(s.cfg.Key, mb); err != nil {
		return nil, fmt.Errorf("meter: sync %s: %w", c.name, err)
	}
	// Record the batch, its rows and their root before sending it: a
	// retry after a crash sends the same bytes under the same key.
	tx, err := s.l.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("meter: sync %s: record batch: %w", c.name, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "UPDATE contracts SET pending_batch = ?, pending_last = ?, pending_count = ?, pending_jws = ? WHERE id = ?",
		b.id, b.last, b.count, b.jws, c.id); err != nil {
		return nil, fmt.Errorf("meter: sync %s: record batch: %w", c.name, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO batches (contract, batch, after_seq, last_seq, count, root, time) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (contract, batch) DO UPDATE SET after_seq = excluded.after_seq, last_seq = excluded.last_seq,
		count = excluded.count, root = excluded.root, time = excluded.time`,
		c.id, b.id, rows.AfterSeq, rows.LastSeq, rows.Count, rows.Root, time.Now().UnixNano()); err != nil {
		return nil, fmt.Errorf("meter: sync %s: record batch: %w", c.name, err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("meter: sync %s: record batch: %w", c.name, err)
	}
	return b, nil
}

// aggregateBatchID derives an aggregate batch's id (its Idempotency-Key)
// from the contract, the signing key and the rows it covers.
func (s *Syncer) aggregateBatchID(contractID string, rows *contract.RowCommitment) string {
	h := sha256.New()
	h.Write([]byte("aggregate\n" + contractID + "\n" + s.kid + "\n" + rows.Ledger + "\n"))
	var n [24]byte
	binary.BigEndian.PutUint64(n[0:], uint64(rows.AfterSeq))
	binary.BigEndian.PutUint64(n[8:], uint64(rows.LastSeq))
	binary.BigEndian.PutUint64(n[16:], uint64(rows.Count))
	h.Write(n[:])
	h.Write(rows.Root)
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:18])
}

// checkAggregateAnswer checks that the registry counted aggregate batch
// mb whole: every row accepted with exactly the batch's sums, or (for a
// batch that may have been counted before: a retry, or rows an earlier
// batch carried) every row a duplicate.
func checkAggregateAnswer(mb *contract.MeteringBatch, b *batch, resp *contract.MeteringResponse) error {
	var want contract.Sums
	for i := range mb.Aggregates {
		if !want.Add(mb.Aggregates[i].Sums()) {
			return fmt.Errorf("%w: the batch's sums overflow", ErrDisputed)
		}
	}
	n := mb.Rows.Count
	switch {
	case len(resp.DuplicateIDs) != 0:
		return fmt.Errorf("%w: registry named %d duplicate events in an aggregate batch", ErrDisputed, len(resp.DuplicateIDs))
	case int64(resp.Accepted) == n && resp.Duplicates == 0:
		if resp.Counted != want {
			return fmt.Errorf("%w: registry counted %+v, the batch sums to %+v", ErrDisputed, resp.Counted, want)
		}
		return nil
	case resp.Accepted == 0 && int64(resp.Duplicates) == n:
		if !b.retry && mb.Rows.LastSeq > b.mayRepeat {
			return fmt.Errorf("%w: registry called rows (%d, %d] duplicates, but this sidecar never sent them before",
				ErrDisputed, mb.Rows.AfterSeq, mb.Rows.LastSeq)
		}
		if resp.Counted != (contract.Sums{}) {
			return fmt.Errorf("%w: registry counted %+v of a batch it calls a duplicate", ErrDisputed, resp.Counted)
		}
		return nil
	default:
		return fmt.Errorf("%w: sent %d rows, registry accepted %d and called %d duplicates", ErrDisputed, n, resp.Accepted, resp.Duplicates)
	}
}

// BatchInfo is an aggregate batch the outbox made: its rows and their
// root, as sent in rows.root.
type BatchInfo struct {
	Contract string
	Batch    string
	Rows     RowRange
	Count    int64
	Root     []byte
	Time     time.Time
}

// Batch returns the aggregate batch batchID of contractID: the rows it
// covers, to disclose with DiscloseRows.
func (l *Ledger) Batch(ctx context.Context, contractID, batchID string) (BatchInfo, error) {
	bi := BatchInfo{Contract: contractID, Batch: batchID}
	var t int64
	err := l.rdb.QueryRowContext(ctx, `SELECT b.after_seq, b.last_seq, b.count, b.root, b.time
		FROM batches b JOIN contracts c ON c.id = b.contract WHERE c.contract_id = ? AND b.batch = ?`, contractID, batchID).
		Scan(&bi.Rows.AfterSeq, &bi.Rows.LastSeq, &bi.Count, &bi.Root, &t)
	if errors.Is(err, sql.ErrNoRows) {
		return bi, fmt.Errorf("meter: no aggregate batch %q of %s in the ledger", batchID, contractID)
	}
	if err != nil {
		return bi, fmt.Errorf("meter: batch %s: %w", batchID, err)
	}
	bi.Time = time.Unix(0, t)
	return bi, nil
}

// Batches returns every aggregate batch of contractID, in seq order.
func (l *Ledger) Batches(ctx context.Context, contractID string) ([]BatchInfo, error) {
	rows, err := l.rdb.QueryContext(ctx, `SELECT b.batch, b.after_seq, b.last_seq, b.count, b.root, b.time
		FROM batches b JOIN contracts c ON c.id = b.contract WHERE c.contract_id = ? ORDER BY b.after_seq, b.last_seq`, contractID)
	if err != nil {
		return nil, fmt.Errorf("meter: batches: %w", err)
	}
	defer rows.Close()
	var out []BatchInfo
	for rows.Next() {
		bi := BatchInfo{Contract: contractID}
		var t int64
		if err := rows.Scan(&bi.Batch, &bi.Rows.AfterSeq, &bi.Rows.LastSeq, &bi.Count, &bi.Root, &t); err != nil {
			return nil, fmt.Errorf("meter: batches: %w", err)
		}
		bi.Time = time.Unix(0, t)
		out = append(out, bi)
	}
	return out, rows.Err()
}
