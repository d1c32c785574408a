package meter

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/provgate/provgate/contract"
)

// Group commit. A transaction commits every event queued when it
// begins; the events that arrive while it runs form the next group, which
// the next transaction takes whole: no timer decides how long a group
// gathers. When someone waits for a group (Record, Pending.Wait,
// EndEpoch), the waiter commits it in its own goroutine if no commit is
// under way: the request that needs the commit runs it, with no hand-off
// to another goroutine and back, which on a busy machine costs a
// scheduling delay each way. Waiters that find a commit under way wait
// for their group, or for that commit to end and then lead the next one.
// The writer goroutine commits the groups nobody waits for (after letting
// them grow for Config.CommitDelay), and at shutdown.

// committer serialises commits between waiting callers and the writer.
type committer struct {
	mu      sync.Mutex    // held by whoever is committing
	started atomic.Bool   // the writer runs: callers may commit
	free    chan struct{} // closed when a commit ends (under Ledger.mu)
}

// lock takes the commit lock and blocks until it is held.
func (l *Ledger) lockCommit() { l.commit.mu.Lock() }

// unlockCommit releases the commit lock and wakes the waiters that wait
// for it to lead their group.
func (l *Ledger) unlockCommit() {
	l.commit.mu.Unlock()
	l.mu.Lock()
	if l.commit.free != nil {
		close(l.commit.free)
		l.commit.free = nil
	}
	l.mu.Unlock()
}

// await returns once g is committed (or failed), committing it in the
// calling goroutine when no commit is under way.
func (l *Ledger) await(ctx context.Context, g *group) error {
	if g.waiters.Add(1) == 1 && !l.commit.started.Load() {
		l.nudge()
	}
	for {
		// Take the signal of the current commit's end before trying the
		// lock, so that a commit ending in between is not missed.
		l.mu.Lock()
		if l.commit.free == nil {
			l.commit.free = make(chan struct{})
		}
		free := l.commit.free
		l.mu.Unlock()
		if l.commit.started.Load() && l.commit.mu.TryLock() {
			l.gather()
			l.commitUntil(g)
			l.unlockCommit()
		}
		select {
		case <-g.done:
			return nil
		default:
		}
		if !l.commit.started.Load() {
			free = nil // the writer will commit (or Stop fails the group)
		}
		select {
		case <-g.done:
			return nil
		case <-free:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// gatherRounds bounds how often a committing request yields for others.
const gatherRounds = 8

// gather lets the requests that are about to submit join the group a
// committing request is about to write: it yields the processor while
// the group still grows, at most gatherRounds times, and no longer once a
// yield brought nobody. No timer: a lone request commits at once (one
// yield that brings nothing). Under load on few cores, a request that
// finished its body is often runnable but not yet queued; without this
// nearly every request committed alone (0.94 commits per request at 8 in
// flight, BenchmarkHit/meter=ack), and a commit costs some 30 µs of CPU
// whatever its size.
func (l *Ledger) gather() {
	l.mu.Lock()
	n := len(l.cur.items)
	l.mu.Unlock()
	for range gatherRounds {
		runtime.Gosched()
		l.mu.Lock()
		m := len(l.cur.items)
		l.mu.Unlock()
		if m == n {
			return
		}
		n = m
	}
}

// commitUntil commits groups until g is done; the commit lock is held.
func (l *Ledger) commitUntil(g *group) {
	for {
		select {
		case <-g.done:
			return
		default:
		}
		if !l.commitOne() {
			return
		}
	}
}

// writer commits queued events, one transaction per group, until ctx
// ends; then it refuses new events and commits what is queued.
func (l *Ledger) writer(ctx context.Context) {
	defer l.wg.Done()
	l.commit.started.Store(true)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-l.wake:
			// Let a group that nobody waits for grow a little.
			l.mu.Lock()
			linger := l.cur.waiters.Load() == 0 && len(l.cur.items) < urgentGroup && l.queued < l.cfg.BufferSize
			l.mu.Unlock()
			if linger {
				t.Reset(l.cfg.CommitDelay)
				select {
				case <-t.C:
				case <-l.urgent:
					t.Stop()
				case <-ctx.Done():
					t.Stop()
				}
			}
			l.lockCommit()
			l.drain()
			l.unlockCommit()
		case <-ctx.Done():
			l.mu.Lock()
			l.closed = true
			close(l.room) // wake Submits waiting for room: they see closed
			l.room = make(chan struct{})
			l.mu.Unlock()
			l.lockCommit()
			l.drain()
			if err := l.snapshot(); err != nil {
				l.log.Error("ledger snapshot failed", "err", err)
			}
			l.commit.started.Store(false)
			l.unlockCommit()
			return
		}
	}
}

// checkpointInterval is how often the checkpointer copies the WAL into
// the database file.
const checkpointInterval = 200 * time.Millisecond

// checkpointer runs passive WAL checkpoints beside the writer (which never
// checkpoints itself), and a last one when ctx ends.
func (l *Ledger) checkpointer(ctx context.Context) {
	defer l.wg.Done()
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if _, err := l.cdb.Exec("PRAGMA wal_checkpoint(PASSIVE)"); err != nil {
				l.log.Warn("ledger checkpoint failed", "err", err)
			}
			return
		case <-t.C:
			if !l.dirty.Swap(false) {
				continue
			}
			if _, err := l.cdb.ExecContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)"); err != nil && ctx.Err() == nil {
				l.log.Warn("ledger checkpoint failed", "err", err)
			}
		}
	}
}

// drain commits groups until the queue is empty; the commit lock is held.
func (l *Ledger) drain() {
	for l.commitOne() {
	}
}

// commitOne commits the current group, if it has events, and reports
// whether it did; the commit lock is held.
func (l *Ledger) commitOne() bool {
	{
		l.mu.Lock()
		g := l.cur
		if len(g.items) == 0 {
			l.mu.Unlock()
			return false
		}
		l.cur = newGroup(min(len(g.items), l.cfg.BufferSize)) // about as many as the last
		l.mu.Unlock()

		err := l.write(g)
		if err != nil {
			g.err = fmt.Errorf("meter: write: %w", err)
			l.writeErrors.Add(1)
			l.log.Error("ledger write failed", "events", len(g.items), "err", err)
		} else {
			l.commits.Add(1)
			select {
			case l.committed <- struct{}{}:
			default:
			}
		}
		l.mu.Lock()
		if err != nil {
			for i := range g.items {
				it := &g.items[i]
				if it.kind == kindAccess && billable(it.ev.Outcome) {
					l.addUsage(it.c.id, quotaKey(it.ev.Lease, it.ev.TokenID), -it.ev.Samples, -it.ev.Bytes)
				}
			}
		}
		l.queued -= len(g.items)
		close(l.room)
		l.room = make(chan struct{})
		l.mu.Unlock()
		close(g.done)
	}
	return true
}

// snapshotInterval is how often the writer records the usage totals and
// the chain's head with a commit. Between snapshots a commit touches the
// events table only (one page for a small group); on open, the rows after
// the last snapshot are replayed into the usage totals.
const snapshotInterval = 100 * time.Millisecond

func add(m map[usageKey]usageTotals, k usageKey, u usageTotals) {
	v := m[k]
	v.samples += u.samples
	v.bytes += u.bytes
	m[k] = v
}

// writeSnapshot records usage deltas and the head (seq, hash) in tx.
func (l *Ledger) writeSnapshot(ctx context.Context, tx *sql.Tx, usage map[usageKey]usageTotals, seq int64, hash []byte) error {
	up := tx.StmtContext(ctx, l.usageUpsert)
	for k, u := range usage {
		if _, err := up.ExecContext(ctx, k.contract, k.token, u.samples, u.bytes); err != nil {
			return err
		}
	}
	n := []byte(strconv.FormatInt(seq, 10))
	_, err := tx.StmtContext(ctx, l.headUpdate).ExecContext(ctx, n, hash, n)
	return err
}

// snapshot commits the pending usage deltas and the head on their own.
func (l *Ledger) snapshot() error {
	ctx := context.Background()
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := l.writeSnapshot(ctx, tx, l.usageDelta, l.headSeq, l.headHash); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	clear(l.usageDelta)
	l.lastSnap = time.Now()
	return nil
}

// write commits one group: rows, epoch bookkeeping and, every
// snapshotInterval, the usage totals and the head.
func (l *Ledger) write(g *group) (err error) {
	ctx := context.Background()
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	ins, insN := tx.StmtContext(ctx, l.insert), tx.StmtContext(ctx, l.insertN)
	// Rows go in insertRows at a time; flush writes what is pending.
	args := l.args[:0]
	l.arena = l.arena[:0]
	flush := func() error {
		for len(args) >= 4*insertRows {
			if _, err := insN.ExecContext(ctx, args[:4*insertRows]...); err != nil {
				return err
			}
			args = append(args[:0], args[4*insertRows:]...)
		}
		for i := 0; i < len(args); i += 4 {
			if _, err := ins.ExecContext(ctx, args[i:i+4]...); err != nil {
				return err
			}
		}
		clear(args)
		args = args[:0]
		l.arena = l.arena[:0]
		return nil
	}
	defer func() { l.args = args[:0] }()
	g.seqs = make([]int64, len(g.items))
	seq := l.headSeq
	var prev [32]byte // the chain's running hash
	copy(prev[:], l.headHash)
	usage := map[usageKey]usageTotals{}
	outbox := map[*contractState]int64{}
	var newEpochs []epochKey
	for i := range g.items {
		it := &g.items[i]
		switch it.kind {
		case kindAccess:
			e := &it.ev
			seq++
			row := Row{
				Kind: contract.EventAccess, Time: e.Time, Contract: e.Contract, Name: e.Name,
				Bytes: e.Bytes, Samples: e.Samples, Tokens: e.Tokens, Units: it.units, CostNanoUSD: it.cost,
				Epoch: e.Epoch, Job: e.Job, TokenID: e.TokenID, Lease: e.Lease, DecodedSHA: e.DecodedSHA256, Outcome: e.Outcome,
				TermsSeq: it.terms,
			}
			// Records and hashes go into an arena that SQLite copies from
			// at bind time; it is reused after each flush.
			n := len(l.arena)
			l.arena = appendRecord(l.arena, &row)
			rec := l.arena[n:len(l.arena):len(l.arena)]
			prev = l.hasher.sum(prev[:], seq, rec)
			n = len(l.arena)
			l.arena = append(l.arena, prev[:]...)
			args = append(args, seq, it.c.id, rec, l.arena[n:len(l.arena):len(l.arena)])
			if len(args) == 4*insertRows {
				if err := flush(); err != nil {
					return err
				}
			}
			g.seqs[i] = seq
			outbox[it.c]++
			if billable(e.Outcome) {
				add(usage, usageKey{it.c.id, quotaKey(e.Lease, e.TokenID)}, usageTotals{e.Samples, e.Bytes})
			}
			ek := epochKey{it.c.id, e.Job, e.Epoch}
			if !l.epochsSeen[ek] {
				if _, err := tx.ExecContext(ctx, "INSERT OR IGNORE INTO epochs (contract, job, epoch, first_seq) VALUES (?, ?, ?, ?)",
					ek.contract, ek.job, ek.epoch, seq); err != nil {
					return err
				}
				newEpochs = append(newEpochs, ek)
			}
		case kindEpoch:
			if err := flush(); err != nil {
				return err
			}
			s, wrote, err := l.closeEpoch(ctx, tx, it, seq+1, prev[:])
			if err != nil {
				return err
			}
			it.epochSummary = s
			if wrote {
				seq++
				copy(prev[:], s.hash)
				outbox[it.c]++
			}
			g.seqs[i] = s.Seq
		}
	}
	if err := flush(); err != nil {
		return err
	}
	snap := time.Since(l.lastSnap) >= snapshotInterval
	if snap {
		for k, u := range l.usageDelta {
			add(usage, k, u)
		}
		if err := l.writeSnapshot(ctx, tx, usage, seq, prev[:]); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if snap {
		clear(l.usageDelta)
		l.lastSnap = time.Now()
	} else {
		for k, u := range usage {
			add(l.usageDelta, k, u)
		}
	}
	l.written.Add(uint64(seq - l.headSeq))
	l.dirty.Store(true)
	l.headSeq, l.headHash = seq, append([]byte(nil), prev[:]...)
	for _, k := range newEpochs {
		l.epochsSeen[k] = true
	}
	for c, n := range outbox {
		c.outbox.Add(n)
	}
	return nil
}

// EpochSummary is the summary of one (contract, job, epoch): its access
// rows, as EndEpoch closed it.
type EpochSummary struct {
	Contract string    `json:"contract_id"`
	Job      string    `json:"job,omitempty"`
	Epoch    int64     `json:"epoch"`
	Seq      int64     `json:"seq"`
	ID       string    `json:"id"`
	Closed   time.Time `json:"closed"`
	// Events counts the access rows, whatever their outcome.
	Events int64 `json:"events"`
	// Samples, Bytes, Distinct, Units and CostNanoUSD count the rows that
	// bill (served, partial).
	Samples     int64  `json:"samples"`
	Bytes       int64  `json:"bytes"`
	Distinct    int64  `json:"distinct_objects"`
	Units       int64  `json:"units"`
	CostNanoUSD int64  `json:"cost_nano_usd"`
	PricingUnit string `json:"pricing_unit"`

	hash []byte
}

// EndEpoch closes the summary of (contract, job, epoch) and returns it.
// Access rows queued before the call are in it. Closing again returns the
// same summary; later accesses to that epoch still bill, outside it.
func (l *Ledger) EndEpoch(ctx context.Context, contractID, job string, epoch int64) (*EpochSummary, error) {
	if epoch < 0 || epoch > contract.MaxEventEpoch || len(job) > MaxFieldLen {
		return nil, fmt.Errorf("%w: epoch must be 0 to %d, job at most %d bytes", ErrInvalidEvent, int64(contract.MaxEventEpoch), MaxFieldLen)
	}
	p, err := l.enqueue(ctx, item{kind: kindEpoch, ev: Event{Contract: contractID, Job: job, Epoch: epoch, Time: time.Now().UTC()}})
	if err != nil {
		return nil, err
	}
	if _, err := p.Wait(ctx); err != nil {
		return nil, err
	}
	return p.g.items[p.i].epochSummary, nil
}

// closeEpoch writes the epoch row as seq (chained to prev) unless the
// epoch is closed already; it reports whether it wrote.
func (l *Ledger) closeEpoch(ctx context.Context, tx *sql.Tx, it *item, seq int64, prev []byte) (*EpochSummary, bool, error) {
	e := &it.ev
	var first int64
	var summarySeq sql.NullInt64
	err := tx.QueryRowContext(ctx, "SELECT first_seq, summary_seq FROM epochs WHERE contract = ? AND job = ? AND epoch = ?",
		it.c.id, e.Job, e.Epoch).Scan(&first, &summarySeq)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		first = seq
	case err != nil:
		return nil, false, err
	case summarySeq.Valid:
		var rec []byte
		if err := tx.QueryRowContext(ctx, "SELECT rec FROM events WHERE seq = ?", summarySeq.Int64).Scan(&rec); err != nil {
			return nil, false, fmt.Errorf("epoch summary row %d: %w", summarySeq.Int64, err)
		}
		var r Row
		if err := decodeRecord(rec, &r); err != nil {
			return nil, false, fmt.Errorf("epoch summary row %d: %w", summarySeq.Int64, err)
		}
		r.Seq = summarySeq.Int64
		return l.summaryOf(&r, it.c), false, nil
	}
	row := Row{Kind: contract.EventEpoch, Time: e.Time, Contract: e.Contract, Epoch: e.Epoch, Job: e.Job}
	rows, err := tx.QueryContext(ctx, "SELECT rec FROM events WHERE seq >= ? AND contract = ?", first, it.c.id)
	if err != nil {
		return nil, false, err
	}
	names := map[string]bool{}
	var r Row
	for rows.Next() {
		var rec []byte
		if err := rows.Scan(&rec); err != nil {
			rows.Close()
			return nil, false, err
		}
		if err := decodeRecord(rec, &r); err != nil {
			rows.Close()
			return nil, false, err
		}
		if r.Kind != contract.EventAccess || r.Epoch != e.Epoch || r.Job != e.Job {
			continue
		}
		row.Events++
		if billable(r.Outcome) {
			row.Samples += r.Samples
			row.Bytes += r.Bytes
			row.Tokens += r.Tokens
			row.Units += r.Units
			row.CostNanoUSD += r.CostNanoUSD
			if r.Samples > 0 || r.Bytes > 0 {
				names[r.Name] = true
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	row.Distinct = int64(len(names))
	row.Outcome = "closed"
	rec := appendRecord(nil, &row)
	h := l.hasher.sum(prev, seq, rec)
	if _, err := tx.ExecContext(ctx, "INSERT INTO events (seq, contract, rec, hash) VALUES (?, ?, ?, ?)", seq, it.c.id, rec, h[:]); err != nil {
		return nil, false, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO epochs (contract, job, epoch, first_seq, summary_seq) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (contract, job, epoch) DO UPDATE SET summary_seq = excluded.summary_seq`,
		it.c.id, e.Job, e.Epoch, first, seq); err != nil {
		return nil, false, err
	}
	row.Seq = seq
	s := l.summaryOf(&row, it.c)
	s.hash = h[:]
	return s, true, nil
}

func (l *Ledger) summaryOf(r *Row, c *contractState) *EpochSummary {
	return &EpochSummary{
		Contract: r.Contract, Job: r.Job, Epoch: r.Epoch, Seq: r.Seq, ID: eventID(l.id, r.Seq), Closed: r.Time,
		Events: r.Events, Samples: r.Samples, Bytes: r.Bytes, Distinct: r.Distinct, Units: r.Units,
		CostNanoUSD: r.CostNanoUSD, PricingUnit: c.pricing.Unit,
	}
}
