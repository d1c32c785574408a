package registry

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/provgate/provgate/contract"
)

// Aggregate metering: a batch that carries sums per key and the Merkle
// root of the sender's ledger rows it sums (contract.RowCommitment). The
// registry stores one row per aggregate and one per counted seq range; a
// (contract, sender, ledger) seq range is counted once.

// aggregateSchema holds counted aggregate batches. metering_ranges has one
// row per counted range of a sender's ledger (ranges of one sender and
// ledger never overlap); metering_aggregates the sums of each, by key, for
// the totals; metering_event_seqs the ledger seq of every event counted
// one by one (ids "<ledger>-<seq>"), so that a range over rows already
// counted as events is refused and an event inside a counted range is a
// duplicate. On PostgreSQL its migration 3 (pgstore.go) makes the same
// tables.
const aggregateSchema = `
CREATE TABLE IF NOT EXISTS metering_ranges (
	contract TEXT NOT NULL, sender TEXT NOT NULL, ledger TEXT NOT NULL,
	after_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, count INTEGER NOT NULL, root BLOB NOT NULL,
	seq INTEGER NOT NULL,
	PRIMARY KEY (contract, sender, ledger, after_seq));
CREATE TABLE IF NOT EXISTS metering_aggregates (
	contract TEXT NOT NULL, sender TEXT NOT NULL, ledger TEXT NOT NULL, after_seq INTEGER NOT NULL, idx INTEGER NOT NULL,
	seq INTEGER NOT NULL, licensee TEXT NOT NULL, lease TEXT NOT NULL, kind TEXT NOT NULL, outcome TEXT NOT NULL,
	job TEXT NOT NULL, epoch INTEGER NOT NULL, terms_seq INTEGER NOT NULL, events INTEGER NOT NULL,
	samples INTEGER NOT NULL, bytes INTEGER NOT NULL, units INTEGER NOT NULL, cost INTEGER NOT NULL,
	PRIMARY KEY (contract, sender, ledger, after_seq, idx));
CREATE INDEX IF NOT EXISTS metering_aggregates_job ON metering_aggregates (contract, job, epoch);
CREATE TABLE IF NOT EXISTS metering_event_seqs (
	contract TEXT NOT NULL, sender TEXT NOT NULL, ledger TEXT NOT NULL, lseq INTEGER NOT NULL,
	PRIMARY KEY (contract, sender, ledger, lseq));
`

// aggregateSchemaVersion is recorded in meta once the tables exist and
// metering_event_seqs holds the events counted before them.
const aggregateSchemaVersion = "1"

// migrateAggregates creates the aggregate tables and, the first time,
// fills metering_event_seqs from the events already counted.
func migrateAggregates(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, aggregateSchema); err != nil {
		return err
	}
	var v string
	err := db.QueryRowContext(ctx, `SELECT v FROM meta WHERE k = 'metering_aggregates_schema'`).Scan(&v)
	if err == nil && v == aggregateSchemaVersion {
		return nil
	}
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := backfillEventSeqs(ctx, tx); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO meta (k, v) VALUES ('metering_aggregates_schema', ?)
		ON CONFLICT (k) DO UPDATE SET v = excluded.v`, aggregateSchemaVersion); err != nil {
		return err
	}
	return tx.Commit()
}

// backfillEventSeqs fills metering_event_seqs from the events counted
// one by one before it existed (ids that are no "<ledger>-<seq>" have no
// seq to mark). tx takes ? placeholders.
func backfillEventSeqs(ctx context.Context, tx querier) error {
	rows, err := tx.QueryContext(ctx, `SELECT contract, sender, id FROM metering_events`)
	if err != nil {
		return err
	}
	type mark struct {
		contract, sender, ledger string
		seq                      int64
	}
	var marks []mark
	for rows.Next() {
		var m mark
		var id string
		if err := rows.Scan(&m.contract, &m.sender, &id); err != nil {
			rows.Close()
			return err
		}
		var ok bool
		if m.ledger, m.seq, ok = contract.SplitEventID(id); ok {
			marks = append(marks, m)
		}
	}
	if err := rows.Close(); err != nil {
		return err
	}
	for _, m := range marks {
		if _, err := tx.ExecContext(ctx, `INSERT INTO metering_event_seqs (contract, sender, ledger, lseq) VALUES (?, ?, ?, ?)
			ON CONFLICT DO NOTHING`, m.contract, m.sender, m.ledger, m.seq); err != nil {
			return err
		}
	}
	return nil
}

// aggregateRecord is what an aggregate batch adds to the store.
type aggregateRecord struct {
	Rows       contract.RowCommitment
	Aggregates []contract.MeteringAggregate
}

// countedRange is a counted seq range of a sender's ledger; Legacy when
// it is an event counted one by one (Seq is then its log entry unknown: 0).
type countedRange struct {
	contract.RowCommitment
	Seq    uint64
	Legacy bool
}

// ingestAggregate counts an aggregate batch b, verified and from sender:
// each aggregate priced under its terms version, the leases it names the
// sender's, its range new (or exactly one already counted: a duplicate).
func (s *Server) ingestAggregate(w http.ResponseWriter, r *http.Request, c *contract.Contract, in *meteringInput) error {
	ctx := r.Context()
	b := in.batch
	prices := termsPrices{c: c}
	var sums contract.Sums
	leases := map[string]bool{}
	for i := range b.Aggregates {
		a := &b.Aggregates[i]
		if a.Licensee != "" && a.Licensee != in.licensee {
			return contract.Errorf(http.StatusForbidden, contract.CodeForbidden,
				"metering batch refused: aggregate %d is for licensee %q, sidecar %s is enrolled by %q", i, a.Licensee, in.sender, in.licensee)
		}
		// Rows read before a price cut cannot name the cheaper terms,
		// nor rows read after one the dearer: the terms must be in force
		// from the aggregate's first row to its last.
		p, err := prices.atSeq(ctx, s, a.TermsSeq, a.FirstTime, a.LastTime, fmt.Sprintf("aggregate %d", i))
		if err != nil {
			return err
		}
		if err := contract.CheckAggregateAmounts(a, p); err != nil {
			return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "metering batch refused: %v", err)
		}
		if !sums.Add(a.Sums()) {
			return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "metering batch refused: its sums overflow")
		}
		if a.Lease != "" {
			leases[a.Lease] = true
		}
	}
	if len(leases) > 0 {
		ids := make([]string, 0, len(leases))
		for id := range leases {
			ids = append(ids, id)
		}
		held, err := s.st.senderLeases(ctx, c.ContractID, in.sender, ids)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if !held[id] {
				return contract.Errorf(http.StatusForbidden, contract.CodeForbidden,
					"metering batch refused: lease %q is not a lease of sidecar %s under contract %q", id, in.sender, c.ContractID)
			}
		}
	}

	var (
		replay []byte // the stored answer to a retry that landed meanwhile
		resp   = contract.MeteringResponse{Licensee: in.licensee}
	)
	// The check that the range is new and its insertion run in the log
	// transaction, under the contract's log lock: of two replicas given
	// the same or overlapping rows at once, the second sees the first's
	// range (a duplicate or a conflict), never counts them again.
	err := s.withLog(ctx, c.ContractID, func(ctx context.Context) error {
		if in.idem != "" { // a concurrent retry may have landed while we verified
			var err error
			if replay, err = s.idempotentAnswer(ctx, c.ContractID, in.idem, in.bodyHash); replay != nil || err != nil {
				return err
			}
		}
		prev, err := s.st.countedRange(ctx, c.ContractID, in.sender, b.Rows)
		switch {
		case err == nil && !prev.Legacy && prev.Same(b.Rows):
			// These rows were counted: a duplicate, counted once.
			resp.Duplicates = int(b.Rows.Count)
			if in.idem != "" {
				raw, _ := json.Marshal(resp)
				return s.st.putIdempotent(ctx, c.ContractID, in.idem, in.bodyHash, raw)
			}
			return nil
		case err == nil && prev.Legacy:
			return contract.Errorf(http.StatusConflict, contract.CodeConflict,
				"metering batch refused: rows (%d, %d] of ledger %q include row %d, which sidecar %s already sent as an event",
				b.Rows.AfterSeq, b.Rows.LastSeq, b.Rows.Ledger, prev.LastSeq, in.sender)
		case err == nil:
			return contract.Errorf(http.StatusConflict, contract.CodeConflict,
				"metering batch refused: rows (%d, %d] of ledger %q overlap rows (%d, %d] that sidecar %s's batch in log entry %d counted with another root or count",
				b.Rows.AfterSeq, b.Rows.LastSeq, b.Rows.Ledger, prev.AfterSeq, prev.LastSeq, in.sender, prev.Seq)
		case !errors.Is(err, errNotFound):
			return err
		}
		total, err := s.st.meteringSums(ctx, c.ContractID)
		if err != nil {
			return err
		}
		if !total.Add(sums) {
			return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest,
				"metering batch refused: it would make the contract's metering totals overflow int64")
		}
		h, err := s.head(ctx, c.ContractID)
		if err != nil {
			return err
		}
		resp.Accepted, resp.Counted = int(b.Rows.Count), sums
		resp.Seq = h.size() + 1 // appendLocked assigns exactly this seq
		rec := &appendRecord{Sender: in.sender, Licensee: in.licensee, IdemKey: in.idem, IdemBodyHash: in.bodyHash, Lease: in.lease,
			Aggregate: &aggregateRecord{Rows: *b.Rows, Aggregates: b.Aggregates}, Metering: &resp}
		return s.appendLocked(ctx, c, h, contract.EntryMetering, in.jws, nil, rec)
	})
	if err != nil {
		return err
	}
	if replay != nil {
		writeReplay(w, replay)
		return nil
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// countedRange returns a counted range of the sender's ledger that
// overlaps rows: an aggregate batch's, or (Legacy) an event counted one by
// one, whose seq is LastSeq; errNotFound when none. Ranges of one sender
// and ledger never overlap, so the one starting last before rows end is
// the only aggregate candidate.
func (s *sqliteStore) countedRange(ctx context.Context, contractID, sender string, rows *contract.RowCommitment) (*countedRange, error) {
	return queryCountedRange(ctx, s.db, contractID, sender, rows)
}

type queryRower interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func queryCountedRange(ctx context.Context, q queryRower, contractID, sender string, rows *contract.RowCommitment) (*countedRange, error) {
	p := &countedRange{RowCommitment: contract.RowCommitment{Ledger: rows.Ledger}}
	err := q.QueryRowContext(ctx, `SELECT after_seq, last_seq, count, root, seq FROM metering_ranges
		WHERE contract = ? AND sender = ? AND ledger = ? AND after_seq < ? ORDER BY after_seq DESC LIMIT 1`,
		contractID, sender, rows.Ledger, rows.LastSeq).Scan(&p.AfterSeq, &p.LastSeq, &p.Count, &p.Root, &p.Seq)
	switch {
	case err == nil && p.LastSeq > rows.AfterSeq:
		return p, nil
	case err != nil && !errors.Is(err, sql.ErrNoRows):
		return nil, err
	}
	var seq int64
	err = q.QueryRowContext(ctx, `SELECT lseq FROM metering_event_seqs
		WHERE contract = ? AND sender = ? AND ledger = ? AND lseq > ? AND lseq <= ? ORDER BY lseq LIMIT 1`,
		contractID, sender, rows.Ledger, rows.AfterSeq, rows.LastSeq).Scan(&seq)
	switch {
	case err == nil:
		return &countedRange{RowCommitment: contract.RowCommitment{Ledger: rows.Ledger, AfterSeq: seq - 1, LastSeq: seq}, Legacy: true}, nil
	case errors.Is(err, sql.ErrNoRows):
		return nil, errNotFound
	default:
		return nil, err
	}
}

// senderLeases returns which of ids are leases of sender under the
// contract.
func (s *sqliteStore) senderLeases(ctx context.Context, contractID, sender string, ids []string) (map[string]bool, error) {
	held := make(map[string]bool, len(ids))
	for _, id := range ids {
		var n int
		if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM leases WHERE id = ? AND contract_id = ? AND jkt = ?`,
			id, contractID, sender).Scan(&n); err != nil {
			return nil, err
		}
		held[id] = n > 0
	}
	return held, nil
}

// insertAggregate counts an aggregate batch: its range (refused with
// errConflict when it overlaps a counted one: the durable guarantee that a
// range counts once), its aggregates, the contract's sums (errOverflow)
// and the leases' metered use.
func insertAggregate(ctx context.Context, tx *sqlTx, contractID string, rec *appendRecord) error {
	a := rec.Aggregate
	if _, err := queryCountedRange(ctx, tx, contractID, rec.Sender, &a.Rows); err == nil {
		return fmt.Errorf("%w: rows (%d, %d] of ledger %q of %s already counted", errConflict, a.Rows.AfterSeq, a.Rows.LastSeq, a.Rows.Ledger, rec.Sender)
	} else if !errors.Is(err, errNotFound) {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO metering_ranges (contract, sender, ledger, after_seq, last_seq, count, root, seq)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, contractID, rec.Sender, a.Rows.Ledger, a.Rows.AfterSeq, a.Rows.LastSeq, a.Rows.Count, a.Rows.Root, rec.Seq); err != nil {
		if isUnique(err) {
			return fmt.Errorf("%w: rows after %d of ledger %q of %s already counted", errConflict, a.Rows.AfterSeq, a.Rows.Ledger, rec.Sender)
		}
		return err
	}
	sums, err := txMeteringSums(ctx, tx, contractID)
	if err != nil {
		return err
	}
	ins, err := tx.PrepareContext(ctx, `INSERT INTO metering_aggregates (contract, sender, ledger, after_seq, idx, seq, licensee, lease,
		kind, outcome, job, epoch, terms_seq, events, samples, bytes, units, cost) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	defer ins.Close()
	leased := map[string]*contract.Sums{}
	for i := range a.Aggregates {
		g := &a.Aggregates[i]
		if !sums.Add(g.Sums()) {
			return fmt.Errorf("%w: aggregate %d would make the contract's metering totals overflow", errOverflow, i)
		}
		outcome := ""
		if g.Kind == contract.EventAccess {
			outcome = g.Outcome
			if outcome == "" {
				outcome = contract.OutcomeServed
			}
		}
		if _, err := ins.ExecContext(ctx, contractID, rec.Sender, a.Rows.Ledger, a.Rows.AfterSeq, i, rec.Seq, rec.Licensee, g.Lease,
			g.Kind, outcome, g.Job, g.Epoch, g.TermsSeq, g.Events, g.Samples, g.Bytes, g.Units, g.CostNanoUSD); err != nil {
			return err
		}
		if g.Kind != contract.EventAccess {
			continue
		}
		lease := g.Lease
		if lease == "" {
			lease = rec.Lease
		}
		if lease == "" {
			continue
		}
		if leased[lease] == nil {
			leased[lease] = &contract.Sums{}
		}
		leased[lease].Add(contract.Sums{Samples: g.Samples, Bytes: g.Bytes}) // within the contract's sums
	}
	if err := putMeteringSums(ctx, tx, contractID, sums); err != nil {
		return err
	}
	for id, u := range leased {
		// Only the sender's leases (the handler refused a batch naming
		// another's; the batch token's lease is the sender's).
		if _, err := tx.ExecContext(ctx, `UPDATE leases SET metered_samples = metered_samples + ?, metered_bytes = metered_bytes + ?
			WHERE id = ? AND contract_id = ? AND jkt = ?`, u.Samples, u.Bytes, id, contractID, rec.Sender); err != nil {
			return err
		}
	}
	return nil
}

// markEventSeqs records the ledger seqs of events counted one by one.
func markEventSeqs(ctx context.Context, tx *sqlTx, contractID, sender string, events []contract.MeteringEvent) error {
	st, err := tx.PrepareContext(ctx, `INSERT INTO metering_event_seqs (contract, sender, ledger, lseq) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING`)
	if err != nil {
		return err
	}
	defer st.Close()
	for _, e := range events {
		if ledger, seq, ok := contract.SplitEventID(e.ID); ok {
			if _, err := st.ExecContext(ctx, contractID, sender, ledger, seq); err != nil {
				return err
			}
		}
	}
	return nil
}

// inCountedRanges returns which of ids ("<ledger>-<seq>") fall in a range
// the sender's aggregate batches counted.
func (s *sqliteStore) inCountedRanges(ctx context.Context, contractID, sender string, ids []string) (map[string]bool, error) {
	type span struct{ lo, hi int64 }
	by := map[string]*span{}
	for _, id := range ids {
		ledger, seq, ok := contract.SplitEventID(id)
		if !ok {
			continue
		}
		if sp := by[ledger]; sp == nil {
			by[ledger] = &span{seq, seq}
		} else {
			sp.lo, sp.hi = min(sp.lo, seq), max(sp.hi, seq)
		}
	}
	out := map[string]bool{}
	for ledger, sp := range by {
		rows, err := s.db.QueryContext(ctx, `SELECT after_seq, last_seq FROM metering_ranges
			WHERE contract = ? AND sender = ? AND ledger = ? AND last_seq >= ? AND after_seq < ?`, contractID, sender, ledger, sp.lo, sp.hi)
		if err != nil {
			return nil, err
		}
		var spans []span
		for rows.Next() {
			var sp span
			if err := rows.Scan(&sp.lo, &sp.hi); err != nil {
				rows.Close()
				return nil, err
			}
			spans = append(spans, sp)
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		if len(spans) == 0 {
			continue
		}
		for _, id := range ids {
			l, seq, ok := contract.SplitEventID(id)
			if !ok || l != ledger {
				continue
			}
			for _, sp := range spans {
				if seq > sp.lo && seq <= sp.hi {
					out[id] = true
					break
				}
			}
		}
	}
	return out, nil
}

func txMeteringSums(ctx context.Context, tx *sqlTx, contractID string) (contract.Sums, error) {
	var sums contract.Sums
	err := tx.QueryRowContext(ctx, `SELECT samples, bytes, units, cost FROM metering_sums WHERE contract = ?`, contractID).
		Scan(&sums.Samples, &sums.Bytes, &sums.Units, &sums.CostNanoUSD)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return sums, err
	}
	return sums, nil
}

func putMeteringSums(ctx context.Context, tx *sqlTx, contractID string, sums contract.Sums) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO metering_sums (contract, samples, bytes, units, cost) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (contract) DO UPDATE SET samples = excluded.samples, bytes = excluded.bytes, units = excluded.units, cost = excluded.cost`,
		contractID, sums.Samples, sums.Bytes, sums.Units, sums.CostNanoUSD)
	return err
}
