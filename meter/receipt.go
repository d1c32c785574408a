package meter

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

var (
	// ErrReceipt is the error of a batch whose receipt the sidecar refused:
	// missing, badly signed, not proving the entry, or not the batch sent.
	ErrReceipt = errors.New("metering receipt refused")
	// ErrLogRewritten is the error of a log checkpoint that drops or
	// rewrites a receipted batch: it does not extend the checkpoint the
	// receipts were checked against.
	ErrLogRewritten = errors.New("the registry's log dropped or rewrote receipted metering")
)

// DefaultLogCheckInterval is how often the syncer checks that the
// contract's log still holds every receipted batch.
const DefaultLogCheckInterval = 30 * time.Second

// maxNamedReceipts bounds the receipted batches checked one by one (and
// named) when a checkpoint does not extend the receipted one.
const maxNamedReceipts = 200

// StoredReceipt is a receipt as the ledger keeps it: the batch, its rows
// (AfterSeq, LastSeq] and what the registry answered.
type StoredReceipt struct {
	Contract          string
	Batch             string
	AfterSeq, LastSeq int64
	Time              time.Time
	contract.MeteringReceipt
}

// Seq is the receipt's log entry.
func (r *StoredReceipt) Seq() uint64 { return r.Index + 1 }

// Receipts returns contractID's stored receipts in log order.
func (l *Ledger) Receipts(ctx context.Context, contractID string) ([]StoredReceipt, error) {
	rows, err := l.rdb.QueryContext(ctx, `SELECT r.batch, r.seq, r.after_seq, r.last_seq, r.leaf, r.entry, r.checkpoint, r.inclusion, r.time
		FROM receipts r JOIN contracts c ON c.id = r.contract WHERE c.contract_id = ? ORDER BY r.seq`, contractID)
	if err != nil {
		return nil, fmt.Errorf("meter: receipts: %w", err)
	}
	defer rows.Close()
	var out []StoredReceipt
	for rows.Next() {
		r := StoredReceipt{Contract: contractID}
		var seq uint64
		var incl []byte
		var t int64
		if err := rows.Scan(&r.Batch, &seq, &r.AfterSeq, &r.LastSeq, &r.Leaf, &r.Entry, &r.Checkpoint, &incl, &t); err != nil {
			return nil, fmt.Errorf("meter: receipts: %w", err)
		}
		if err := json.Unmarshal(incl, &r.Inclusion); err != nil {
			return nil, fmt.Errorf("meter: receipt of batch %s: inclusion: %w", r.Batch, err)
		}
		r.Index, r.Time = seq-1, time.Unix(0, t)
		out = append(out, r)
	}
	return out, rows.Err()
}

// LogCheckpoint is the latest checkpoint of contractID's log that every
// stored receipt was checked consistent with (nil when none).
func (l *Ledger) LogCheckpoint(ctx context.Context, contractID string) ([]byte, error) {
	var cp sql.NullString
	err := l.rdb.QueryRowContext(ctx, "SELECT log_checkpoint FROM contracts WHERE contract_id = ?", contractID).Scan(&cp)
	if errors.Is(err, sql.ErrNoRows) || !cp.Valid {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("meter: log checkpoint: %w", err)
	}
	return []byte(cp.String), nil
}

// storeReceipt keeps a checked receipt and moves the contract's checked
// checkpoint to cp (when larger), in one transaction.
func (l *Ledger) storeReceipt(ctx context.Context, c *contractState, b *batch, r *contract.MeteringReceipt, cp []byte) error {
	incl, err := json.Marshal(r.Inclusion)
	if err != nil {
		return err
	}
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("meter: store receipt: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO receipts (contract, batch, seq, after_seq, last_seq, leaf, entry, checkpoint, inclusion, time)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, c.id, b.id, r.Index+1, b.after, b.last, r.Leaf, r.Entry, r.Checkpoint, incl, time.Now().UnixNano()); err != nil {
		return fmt.Errorf("meter: store receipt of batch %s: %w", b.id, err)
	}
	if cp != nil {
		if _, err := tx.ExecContext(ctx, "UPDATE contracts SET log_checkpoint = ? WHERE id = ?", string(cp), c.id); err != nil {
			return fmt.Errorf("meter: store receipt of batch %s: %w", b.id, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("meter: store receipt of batch %s: %w", b.id, err)
	}
	return nil
}

// logVerifier is the checkpoint verifier of contractID's log: from
// SyncConfig.Log, else from the contract the registry serves.
func (s *Syncer) logVerifier(ctx context.Context, contractID string) (*verify.CheckpointVerifier, error) {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	if v, ok := s.logs[contractID]; ok {
		return v, nil
	}
	var info contract.LogInfo
	if s.cfg.Log != nil {
		var err error
		if info, err = s.cfg.Log(ctx, contractID); err != nil {
			return nil, err
		}
	} else {
		c, _, err := s.cfg.Client.GetContract(ctx, contractID, "")
		if err != nil {
			return nil, fmt.Errorf("meter: contract %s: %w", contractID, err)
		}
		info = c.Log
	}
	v, err := verify.NewCheckpointVerifier(info.Origin, info.CheckpointKey)
	if err != nil {
		return nil, fmt.Errorf("meter: contract %s: %w", contractID, err)
	}
	s.logs[contractID] = v
	return v, nil
}

// takeReceipt checks the receipt of an acknowledged batch and stores it.
// A receipt that does not prove the batch sent is refused: it is not
// stored, and the batch is disputed. The error it returns is one to retry
// (the registry or the ledger failing), never the receipt's.
func (s *Syncer) takeReceipt(ctx context.Context, c *contractState, b *batch, resp *contract.MeteringResponse) error {
	cpv, err := s.logVerifier(ctx, c.name)
	if err != nil {
		return err
	}
	cp, bad := s.checkReceipt(cpv, c, b, resp)
	if bad != nil {
		s.log.Error("metering receipt refused", "contract", c.name, "batch", b.id, "err", bad)
		return s.l.dispute(ctx, c, b, b.after, bad)
	}
	// The receipt's checkpoint and the one the earlier receipts were
	// checked against must be one log.
	prevRaw, err := s.l.LogCheckpoint(ctx, c.name)
	if err != nil {
		return err
	}
	keep := cp.Raw
	if prevRaw != nil {
		prev, err := cpv.Parse(prevRaw)
		if err != nil {
			return fmt.Errorf("meter: %s: stored log checkpoint: %w", c.name, err)
		}
		if err := logExtends(ctx, s.cfg.Client, c.name, prev, cp); err != nil {
			if !errors.Is(err, verify.ErrInconsistent) {
				return err
			}
			bad := fmt.Errorf("%w: batch %s: %w", ErrLogRewritten, b.id, err)
			s.log.Error("metering log inconsistent", "contract", c.name, "batch", b.id, "err", err)
			return s.l.dispute(ctx, c, b, b.after, bad)
		}
		if prev.Size >= cp.Size {
			keep = nil
		}
	}
	return s.l.storeReceipt(ctx, c, b, resp.Receipt, keep)
}

// checkReceipt checks that resp's receipt is signed, proves its entry and
// that the entry is the batch b as sent, with the events the answer says
// were counted.
func (s *Syncer) checkReceipt(cpv *verify.CheckpointVerifier, c *contractState, b *batch, resp *contract.MeteringResponse) (*verify.Checkpoint, error) {
	cp, e, err := verify.VerifyMeteringReceipt(cpv, c.name, resp.Receipt)
	if err != nil {
		return nil, fmt.Errorf("%w: batch %s: %w", ErrReceipt, b.id, err)
	}
	if e.Seq != resp.Seq {
		return nil, fmt.Errorf("%w: batch %s: receipt is for entry %d, the answer names entry %d", ErrReceipt, b.id, e.Seq, resp.Seq)
	}
	if e.JWS != b.jws {
		return nil, fmt.Errorf("%w: batch %s: entry %d does not carry the batch sent", ErrReceipt, b.id, e.Seq)
	}
	mb, err := verify.VerifyMeteringBatch(b.jws, s.pub)
	if err != nil {
		return nil, fmt.Errorf("%w: batch %s: %v", ErrReceipt, b.id, err)
	}
	if mb.Aggregated() {
		// Counted whole: the entry carries the batch (its sums and the
		// root of its rows) and lists no events.
		if len(e.Accepted) != 0 {
			return nil, fmt.Errorf("%w: batch %s: entry %d lists events of an aggregate batch", ErrReceipt, b.id, e.Seq)
		}
		return cp, nil
	}
	dup := make(map[string]bool, len(resp.DuplicateIDs))
	for _, id := range resp.DuplicateIDs {
		dup[id] = true
	}
	var want []string
	for _, ev := range mb.Events {
		if !dup[ev.ID] {
			want = append(want, ev.ID)
		}
	}
	got := slices.Clone(e.Accepted)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return nil, fmt.Errorf("%w: batch %s: entry %d lists %d accepted events, the answer counted %d", ErrReceipt, b.id, e.Seq, len(got), len(want))
	}
	return cp, nil
}

// logExtends checks that a and b are checkpoints of one log, fetching the
// consistency proof from the smaller to the larger. A
// verify.ErrInconsistent error means they are not; any other is the
// registry not answering.
func logExtends(ctx context.Context, client *contract.Client, contractID string, a, b *verify.Checkpoint) error {
	from, to := min(a.Size, b.Size), max(a.Size, b.Size)
	var hashes [][]byte
	if from != to {
		p, err := client.ConsistencyProof(ctx, contractID, from, to)
		if err != nil {
			if contract.StatusOf(err) == 400 {
				// The registry refuses to prove the larger size: it has
				// not got it.
				return fmt.Errorf("%w: no consistency proof from %d to %d: %v", verify.ErrInconsistent, from, to, err)
			}
			return fmt.Errorf("meter: %s: consistency proof %d to %d: %w", contractID, from, to, err)
		}
		if p.From != from || p.To != to {
			return fmt.Errorf("%w: asked for a proof from %d to %d, got %d to %d", verify.ErrInconsistent, from, to, p.From, p.To)
		}
		hashes = p.Hashes
	}
	return verify.VerifyExtends(a, b, hashes)
}

// CheckLog checks, for every contract with receipts, that the log's
// current checkpoint extends the checkpoint the receipts were checked
// against, and moves that checkpoint forward. A checkpoint that does not
// (a rewritten or rolled-back log) raises the alarm, naming the receipted
// batches the new checkpoint no longer includes.
func (s *Syncer) CheckLog(ctx context.Context) error {
	s.mu.Lock() // one pass at a time: a sync moves the checked checkpoint too
	defer s.mu.Unlock()
	s.l.mu.Lock()
	cs := make([]*contractState, 0, len(s.l.contracts))
	for _, c := range s.l.contracts {
		cs = append(cs, c)
	}
	s.l.mu.Unlock()
	var errs []error
	for _, c := range cs {
		if err := s.checkLog(ctx, c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Syncer) checkLog(ctx context.Context, c *contractState) error {
	prevRaw, err := s.l.LogCheckpoint(ctx, c.name)
	if err != nil || prevRaw == nil {
		return err
	}
	cpv, err := s.logVerifier(ctx, c.name)
	if err != nil {
		return err
	}
	prev, err := cpv.Parse(prevRaw)
	if err != nil {
		return fmt.Errorf("meter: %s: stored log checkpoint: %w", c.name, err)
	}
	raw, err := s.cfg.Client.Checkpoint(ctx, c.name)
	if err != nil {
		return fmt.Errorf("meter: %s: checkpoint: %w", c.name, err)
	}
	cur, err := cpv.Parse(raw)
	if err != nil {
		// Not the log's signature: nothing the log said.
		return fmt.Errorf("meter: %s: %w", c.name, err)
	}
	err = logExtends(ctx, s.cfg.Client, c.name, prev, cur)
	if err == nil && cur.Size < prev.Size {
		err = fmt.Errorf("%w: the log went back from size %d to %d", verify.ErrInconsistent, prev.Size, cur.Size)
	}
	switch {
	case err == nil:
		if cur.Size > prev.Size {
			if _, err := s.l.db.ExecContext(ctx, "UPDATE contracts SET log_checkpoint = ? WHERE id = ?", string(cur.Raw), c.id); err != nil {
				return fmt.Errorf("meter: %s: store log checkpoint: %w", c.name, err)
			}
		}
		return nil
	case !errors.Is(err, verify.ErrInconsistent):
		return err
	}
	dropped := s.droppedReceipts(ctx, c, cur)
	cause := fmt.Errorf("%w: checkpoint of size %d (root %x) does not extend the receipted checkpoint of size %d: %w; receipted batches it does not include: %s",
		ErrLogRewritten, cur.Size, cur.Hash, prev.Size, err, dropped)
	s.log.Error("metering log dropped or rewrote receipted batches", "contract", c.name, "err", cause)
	id := fmt.Sprintf("log@%d:%s", cur.Size, hex.EncodeToString(cur.Hash[:8]))
	// Every row stays: the ledger is the evidence.
	return s.l.recordDispute(ctx, c, id, 0, 0, cause)
}

// droppedReceipts names the receipted batches (the latest
// maxNamedReceipts) that checkpoint cur does not include.
func (s *Syncer) droppedReceipts(ctx context.Context, c *contractState, cur *verify.Checkpoint) string {
	rs, err := s.l.Receipts(ctx, c.name)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	if len(rs) > maxNamedReceipts {
		rs = rs[len(rs)-maxNamedReceipts:]
	}
	var names []string
	for _, r := range rs {
		if !s.included(ctx, c.name, &r, cur) {
			names = append(names, fmt.Sprintf("%s (entry %d)", r.Batch, r.Seq()))
		}
	}
	if len(names) == 0 {
		return "none found"
	}
	return strings.Join(names, ", ")
}

// included reports whether the registry proves receipt r in cur.
func (s *Syncer) included(ctx context.Context, contractID string, r *StoredReceipt, cur *verify.Checkpoint) bool {
	if r.Index >= cur.Size {
		return false
	}
	p, err := s.cfg.Client.InclusionProof(ctx, contractID, r.Seq(), cur.Size)
	if err != nil || p.Seq != r.Seq() || p.TreeSize != cur.Size {
		return false
	}
	return verify.VerifyInclusion(cur, r.Seq(), r.Leaf, p.Hashes) == nil
}
