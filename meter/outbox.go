package meter

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// Tokens gives the capability token a contract's batches carry. The
// sidecar's token source (which refreshes before expiry) implements it.
type Tokens interface {
	Token(ctx context.Context, contractID string) (string, error)
}

// Defaults for SyncConfig.
const (
	DefaultBatchSize = 500
	// DefaultMaxBatchBytes bounds the JSON of a batch's events, so that the
	// signed batch stays under verify.MaxJWSSize once base64-encoded.
	DefaultMaxBatchBytes = 160 << 10
	DefaultSyncInterval  = time.Second
	DefaultMinBackoff    = 500 * time.Millisecond
	DefaultMaxBackoff    = time.Minute
	DefaultRetention     = 7 * 24 * time.Hour
	DefaultPruneInterval = 10 * time.Minute
)

// SyncConfig configures a Syncer.
type SyncConfig struct {
	// Client posts batches; its Proof must sign DPoP proofs with Key.
	Client *contract.Client
	// Key is the sidecar key: it signs batches, its thumbprint is the
	// batch's sidecar id.
	Key    *jose.JSONWebKey
	Tokens Tokens
	// BatchSize and MaxBatchBytes bound one batch (BatchSize: of events,
	// when PerEvent).
	BatchSize     int
	MaxBatchBytes int
	// PerEvent sends every row as its own event (the batch form of
	// registries before aggregate batches). By default a batch sends the
	// sums of up to AggregateRows rows per key and the Merkle root of the
	// rows (contract.RowCommitment).
	PerEvent      bool
	AggregateRows int
	// Interval is how often the outbox is looked at when idle.
	Interval time.Duration
	// MinBackoff and MaxBackoff bound the jittered exponential backoff
	// after a failed pass.
	MinBackoff, MaxBackoff time.Duration
	// Retention is how long acknowledged rows are kept; PruneInterval how
	// often they are pruned. A negative Retention keeps them for ever.
	Retention     time.Duration
	PruneInterval time.Duration
	// Log gives the log (origin and checkpoint key) of a contract, against
	// which receipts are checked; nil fetches the contract from Client.
	Log func(ctx context.Context, contractID string) (contract.LogInfo, error)
	// LogCheckInterval is how often the log is checked to still hold every
	// receipted batch (DefaultLogCheckInterval when 0).
	LogCheckInterval time.Duration
	Logger           *slog.Logger
}

// Syncer ships the outbox to the registry.
type Syncer struct {
	l   *Ledger
	cfg SyncConfig
	kid string
	pub *jose.JSONWebKey
	log *slog.Logger

	mu        sync.Mutex // one pass at a time
	lastPrune time.Time
	salt      string // set after a batch id conflict
	// eventsTo is, per contract, the seq up to which rows go event by
	// event: the rows of an aggregate batch the registry refused with 409
	// (they overlap rows it counted otherwise), which it dedupes one by one.
	eventsTo  map[int64]int64
	lastCheck time.Time

	logMu  sync.Mutex
	logs   map[string]*verify.CheckpointVerifier
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewSyncer makes a Syncer for l.
func NewSyncer(l *Ledger, cfg SyncConfig) (*Syncer, error) {
	if cfg.Client == nil || cfg.Key == nil || cfg.Tokens == nil {
		return nil, errors.New("meter: syncer needs a client, a key and a token source")
	}
	if cfg.Client.Proof == nil {
		return nil, errors.New("meter: syncer client has no proof-of-possession signer")
	}
	kid, err := verify.Thumbprint(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("meter: syncer key: %w", err)
	}
	if cfg.Key.KeyID != kid {
		return nil, fmt.Errorf("meter: syncer key kid %q is not its thumbprint %q", cfg.Key.KeyID, kid)
	}
	if cfg.BatchSize <= 0 || cfg.BatchSize > contract.MaxBatchEvents {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if cfg.AggregateRows <= 0 || cfg.AggregateRows > contract.MaxAggregateRows {
		cfg.AggregateRows = DefaultAggregateRows
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultSyncInterval
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.PruneInterval <= 0 {
		cfg.PruneInterval = DefaultPruneInterval
	}
	if cfg.LogCheckInterval <= 0 {
		cfg.LogCheckInterval = DefaultLogCheckInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = l.log
	}
	pub := cfg.Key.Public()
	return &Syncer{l: l, cfg: cfg, kid: kid, pub: &pub, log: cfg.Logger, logs: map[string]*verify.CheckpointVerifier{}, eventsTo: map[int64]int64{}}, nil
}

// Start runs the sync loop until ctx ends or Stop is called.
func (s *Syncer) Start(ctx context.Context) {
	ctx, s.cancel = context.WithCancel(ctx)
	s.wg.Add(1)
	go s.run(ctx)
}

// Stop ends the loop and waits for it. A batch in flight is abandoned;
// the next start sends it again with the same Idempotency-Key.
func (s *Syncer) Stop() {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
}

func (s *Syncer) run(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	failures := 0
	for {
		_, err := s.Sync(ctx)
		if ctx.Err() != nil {
			return
		}
		var wait <-chan time.Time
		if err != nil {
			failures++
			d := s.cfg.MinBackoff + contract.Backoff(failures, s.cfg.MinBackoff, s.cfg.MaxBackoff)
			s.log.Warn("metering sync failed", "err", err, "outbox", s.l.Stats().Outbox, "retry_in", d)
			wait = time.After(d)
		} else {
			failures = 0
			if time.Since(s.lastPrune) >= s.cfg.PruneInterval && s.cfg.Retention > 0 {
				if n, err := s.l.Prune(ctx, time.Now().Add(-s.cfg.Retention)); err != nil && ctx.Err() == nil {
					s.log.Warn("ledger prune failed", "err", err)
				} else if n > 0 {
					s.log.Info("ledger pruned", "rows", n)
				}
				s.lastPrune = time.Now()
			}
			if time.Since(s.lastCheck) >= s.cfg.LogCheckInterval {
				if err := s.CheckLog(ctx); err != nil && ctx.Err() == nil {
					s.log.Warn("metering log check failed", "err", err)
				}
				s.lastCheck = time.Now()
			}
			wait = t.C
		}
	wait:
		select {
		case <-ctx.Done():
			return
		case <-wait:
		case <-s.l.committed:
			// New rows: sync now if a full batch is waiting, else on the tick.
			if err != nil || s.l.Stats().Outbox < s.fullBatch() {
				goto wait
			}
		}
	}
}

// fullBatch is how many rows in the outbox make a full batch, which is
// shipped without waiting for the tick: BatchSize events, or AggregateRows
// rows summed into one aggregate batch. Shipping sooner would not bill
// sooner than the tick allows, only append more, smaller batches to the
// contract's log (each an entry every follower replays).
func (s *Syncer) fullBatch() int64 {
	if s.cfg.PerEvent {
		return int64(s.cfg.BatchSize)
	}
	return int64(s.cfg.AggregateRows)
}

// Sync sends batches until the rows in the outbox when it started are
// acknowledged and less than a full batch is left, or a post fails, and
// returns the number of rows the registry acknowledged. On an idle ledger
// that empties the outbox.
func (s *Syncer) Sync(ctx context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.l.mu.Lock()
	cs := make([]*contractState, 0, len(s.l.contracts))
	for _, c := range s.l.contracts {
		cs = append(cs, c)
	}
	s.l.mu.Unlock()
	total := 0
	var errs []error
	for _, c := range cs {
		n, err := s.syncContract(ctx, c)
		total += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// batch is a signed batch ready to post.
type batch struct {
	id    string
	last  int64
	count int64
	jws   string
	// after is the cursor the batch continues (its rows are in (after,
	// last]); rows with seq <= mayRepeat may have been counted by an
	// earlier batch whose answer was lost.
	after, mayRepeat int64
	// retry: the batch was recorded before this pass (sent before, maybe
	// counted).
	retry bool
	// aggregate: an aggregate batch (not known of a batch in flight
	// recorded before this pass).
	aggregate bool
}

func (s *Syncer) syncContract(ctx context.Context, c *contractState) (int, error) {
	total := 0
	// A pass ships the rows there were when it started, and goes on only
	// while a full batch waits: rows that keep coming under load wait for
	// the next tick (or a full batch), instead of leaving in a stream of
	// small batches, each an entry in the contract's log.
	start := c.outbox.Load()
	for {
		if total > 0 && int64(total) >= start && c.outbox.Load() < s.fullBatch() {
			return total, nil
		}
		b, err := s.nextBatch(ctx, c)
		if err != nil || b == nil {
			return total, err
		}
		token, err := s.cfg.Tokens.Token(ctx, c.name)
		if err != nil {
			s.l.syncErrors.Add(1)
			return total, fmt.Errorf("meter: sync %s: token: %w", c.name, err)
		}
		resp, err := s.cfg.Client.PostMetering(ctx, c.name, token, b.id, b.jws)
		if err != nil {
			s.l.syncErrors.Add(1)
			switch contract.StatusOf(err) {
			case http.StatusUnauthorized:
				// The token may be revoked or expired early: ask for another.
				if inv, ok := s.cfg.Tokens.(interface{ Invalidate(contractID string) }); ok {
					inv.Invalidate(c.name)
				}
			case http.StatusForbidden:
				// An aggregate refused for what it names (a lease of the
				// sidecar's previous key) goes again event by event; the
				// registry charges no lease that is not the sender's.
				if b.aggregate {
					if err := s.l.dropPending(ctx, c, b.id); err != nil {
						return total, err
					}
					s.eventsTo[c.id] = max(s.eventsTo[c.id], b.last)
				}
			case http.StatusConflict:
				// The batch id was used with another body (another process
				// sent the same rows). Drop the batch; the rows go again in
				// a batch with a fresh id, and the registry counts each
				// event once.
				// An aggregate batch refused for rows the registry counted
				// otherwise goes again event by event.
				if err := s.l.dropPending(ctx, c, b.id); err != nil {
					return total, err
				}
				s.salt = verify.NewID()
				if b.aggregate {
					s.eventsTo[c.id] = max(s.eventsTo[c.id], b.last)
				}
			}
			return total, fmt.Errorf("meter: sync %s: batch %s: %w", c.name, b.id, err)
		}
		if err := s.checkAnswer(b, resp); err != nil {
			// The registry took the batch durably and answers a retry the
			// same way: sending it again cannot change the count. Keep the
			// rows, mark them, and raise the alarm.
			s.log.Error("registry did not count a metering batch as sent", "contract", c.name, "batch", b.id,
				"events", b.count, "accepted", resp.Accepted, "duplicates", resp.Duplicates, "err", err)
			if err := s.l.dispute(ctx, c, b, b.after, err); err != nil {
				return total, err
			}
		}
		if resp.Accepted > 0 {
			// The batch made a log entry: check its receipt and keep it.
			if err := s.takeReceipt(ctx, c, b, resp); err != nil {
				return total, err
			}
		}
		if err := s.l.ack(ctx, c, b); err != nil {
			return total, err
		}
		total += int(b.count)
	}
}

// nextBatch returns the batch in flight for c, or makes, signs and
// records the next one; nil when the outbox of c is empty.
func (s *Syncer) nextBatch(ctx context.Context, c *contractState) (*batch, error) {
	var acked, sent int64
	var pid, pjws sql.NullString
	var plast, pcount sql.NullInt64
	err := s.l.rdb.QueryRowContext(ctx, "SELECT acked_seq, sent_seq, pending_batch, pending_last, pending_count, pending_jws FROM contracts WHERE id = ?", c.id).
		Scan(&acked, &sent, &pid, &plast, &pcount, &pjws)
	if err != nil {
		return nil, fmt.Errorf("meter: sync %s: %w", c.name, err)
	}
	if pid.Valid {
		if kid, err := verify.PeekKeyID(pjws.String, contract.TypeMetering); err == nil && kid == s.kid {
			mb, _ := peekBatch(pjws.String)
			return &batch{id: pid.String, last: plast.Int64, count: pcount.Int64, jws: pjws.String, after: acked, mayRepeat: sent,
				retry: true, aggregate: mb.Aggregated()}, nil
		}
	}
	eventsTo := s.eventsTo[c.id]
	if !s.cfg.PerEvent && acked >= eventsTo {
		upTo := int64(1<<63 - 1)
		if pid.Valid {
			upTo = plast.Int64
		}
		return s.nextAggregate(ctx, c, acked, sent, pid.Valid, upTo)
	}
	// The rows: the batch in flight (signed by another key: re-sign it),
	// or the next unsynced ones (up to eventsTo, when sending the rows of
	// a refused aggregate batch).
	limit, upTo := s.cfg.BatchSize, int64(1<<63-1)
	if !s.cfg.PerEvent {
		upTo = eventsTo
	}
	if pid.Valid {
		limit, upTo = contract.MaxBatchEvents, plast.Int64
	}
	var events []contract.MeteringEvent
	var last int64
	size := 0
	full := errors.New("full")
	err = s.l.scanRows(ctx, func(r *Row, _ int64) error {
		ev := r.MeteringEvent()
		b, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		if len(events) > 0 && size+len(b)+1 > s.cfg.MaxBatchBytes && !pid.Valid {
			return full
		}
		size += len(b) + 1
		events = append(events, ev)
		last = r.Seq
		return nil
	}, "SELECT seq, contract, rec, hash FROM events WHERE seq > ? AND seq <= ? AND contract = ? ORDER BY seq LIMIT ?", acked, upTo, c.id, limit)
	if err != nil && !errors.Is(err, full) {
		return nil, fmt.Errorf("meter: sync %s: %w", c.name, err)
	}
	if len(events) == 0 {
		return nil, nil
	}
	b := &batch{id: s.batchID(c.name+s.salt, events), last: last, count: int64(len(events)), after: acked, mayRepeat: sent}
	mb := &contract.MeteringBatch{Contract: c.name, BatchID: b.id, Sidecar: s.kid, IssuedAt: time.Now().Unix(), Events: events}
	if b.jws, err = verify.SignMeteringBatch(s.cfg.Key, mb); err != nil {
		return nil, fmt.Errorf("meter: sync %s: %w", c.name, err)
	}
	// Record the batch before sending it: a retry after a crash sends the
	// same bytes under the same key.
	if _, err := s.l.db.ExecContext(ctx, "UPDATE contracts SET pending_batch = ?, pending_last = ?, pending_count = ?, pending_jws = ? WHERE id = ?",
		b.id, b.last, b.count, b.jws, c.id); err != nil {
		return nil, fmt.Errorf("meter: sync %s: record batch: %w", c.name, err)
	}
	return b, nil
}

// batchID derives a batch's id (its Idempotency-Key) from the contract,
// the signing key and the event ids.
func (s *Syncer) batchID(contractID string, events []contract.MeteringEvent) string {
	h := sha256.New()
	h.Write([]byte(contractID + "\n" + s.kid + "\n"))
	for _, e := range events {
		h.Write([]byte(e.ID + "\n"))
	}
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:18])
}

// checkAnswer checks that the registry counted exactly the batch sent.
func (s *Syncer) checkAnswer(b *batch, resp *contract.MeteringResponse) error {
	mb, err := verify.VerifyMeteringBatch(b.jws, s.pub)
	if err != nil {
		return fmt.Errorf("%w: batch %s: %v", ErrDisputed, b.id, err)
	}
	if mb.Aggregated() {
		return checkAggregateAnswer(mb, b, resp)
	}
	return checkAnswer(mb.Events, b.mayRepeat, resp)
}

// dropPending forgets c's batch in flight; the registry may have counted
// its rows, so a later batch may find them duplicates.
func (l *Ledger) dropPending(ctx context.Context, c *contractState, id string) error {
	_, err := l.db.ExecContext(ctx, `UPDATE contracts SET sent_seq = max(sent_seq, pending_last), pending_batch = NULL,
		pending_last = NULL, pending_count = NULL, pending_jws = NULL WHERE id = ? AND pending_batch = ?`, c.id, id)
	if err != nil {
		return fmt.Errorf("meter: sync %s: drop batch %s: %w", c.name, id, err)
	}
	return nil
}

// ack moves c's cursor past an acknowledged batch.
func (l *Ledger) ack(ctx context.Context, c *contractState, b *batch) error {
	res, err := l.db.ExecContext(ctx, `UPDATE contracts SET acked_seq = pending_last, pending_batch = NULL,
		pending_last = NULL, pending_count = NULL, pending_jws = NULL WHERE id = ? AND pending_batch = ?`, c.id, b.id)
	if err != nil {
		return fmt.Errorf("meter: sync %s: ack batch %s: %w", c.name, b.id, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		c.outbox.Add(-b.count)
		l.synced.Add(uint64(b.count))
		l.batches.Add(1)
	}
	return nil
}

// Prune deletes acknowledged rows older than before, from the front of
// the ledger only (so the chain stays whole after its anchor), in small
// transactions so that the writer is never held up for long. It returns
// the number of rows deleted.
func (l *Ledger) Prune(ctx context.Context, before time.Time) (int64, error) {
	// Rows up to limit are acknowledged for every contract.
	limit := int64(1<<63 - 1)
	rows, err := l.rdb.QueryContext(ctx, "SELECT id, acked_seq FROM contracts")
	if err != nil {
		return 0, err
	}
	acked := map[int64]int64{}
	for rows.Next() {
		var id, a int64
		if err := rows.Scan(&id, &a); err != nil {
			rows.Close()
			return 0, err
		}
		acked[id] = a
	}
	rows.Close()
	for id, a := range acked {
		var first sql.NullInt64
		if err := l.rdb.QueryRowContext(ctx, "SELECT min(seq) FROM events WHERE seq > ? AND contract = ?", a, id).Scan(&first); err != nil {
			return 0, err
		}
		if first.Valid {
			limit = min(limit, first.Int64-1)
		}
	}
	// Rows of disputed batches are kept.
	kept, err := l.keptFrom(ctx)
	if err != nil {
		return 0, err
	}
	limit = min(limit, kept-1)
	const chunk = 2000
	var total int64
	for {
		var last int64
		var lastHash []byte
		stop := errors.New("stop")
		var cut int64 = -1
		err := l.scanRows(ctx, func(r *Row, _ int64) error {
			if r.Seq > limit || !r.Time.Before(before) {
				return stop
			}
			cut, last, lastHash = r.Seq, r.Seq, append(lastHash[:0], r.Hash...)
			return nil
		}, "SELECT seq, contract, rec, hash FROM events ORDER BY seq LIMIT ?", chunk)
		if err != nil && !errors.Is(err, stop) {
			return total, err
		}
		if cut < 0 {
			return total, nil
		}
		tx, err := l.db.BeginTx(ctx, nil)
		if err != nil {
			return total, err
		}
		res, err := tx.ExecContext(ctx, "DELETE FROM events WHERE seq <= ?", last)
		if err == nil {
			_, err = tx.ExecContext(ctx, "INSERT OR REPLACE INTO meta (key, value) VALUES ('anchor_seq', ?), ('anchor_hash', ?)",
				fmt.Appendf(nil, "%d", last), lastHash)
		}
		if err == nil {
			err = tx.Commit()
		} else {
			tx.Rollback()
		}
		if err != nil {
			return total, fmt.Errorf("meter: prune: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
		if errors.Is(ctx.Err(), context.Canceled) {
			return total, ctx.Err()
		}
	}
}

// ResendResult counts what a Resend sent.
type ResendResult struct {
	Events     int
	Accepted   int
	Duplicates int
}

// Resend posts every row of contractID still in the ledger, synced or
// not, in fresh batches (new batch ids, so no Idempotency-Key is reused
// with another body). The registry counts each event id once, so this is
// safe; it does not move the cursor. It is `provgate meter replay --all`.
func (s *Syncer) Resend(ctx context.Context, contractID string) (ResendResult, error) {
	var res ResendResult
	s.l.mu.Lock()
	c := s.l.contracts[contractID]
	s.l.mu.Unlock()
	if c == nil {
		return res, fmt.Errorf("%w: %q", ErrUnknownContract, contractID)
	}
	salt := verify.NewID()
	var after int64
	for {
		var events []contract.MeteringEvent
		size := 0
		full := errors.New("full")
		first := after
		err := s.l.scanRows(ctx, func(r *Row, _ int64) error {
			ev := r.MeteringEvent()
			b, err := json.Marshal(ev)
			if err != nil {
				return err
			}
			if len(events) > 0 && size+len(b)+1 > s.cfg.MaxBatchBytes {
				return full
			}
			size += len(b) + 1
			events = append(events, ev)
			after = r.Seq
			return nil
		}, "SELECT seq, contract, rec, hash FROM events WHERE seq > ? AND contract = ? ORDER BY seq LIMIT ?", after, c.id, s.cfg.BatchSize)
		if err != nil && !errors.Is(err, full) {
			return res, fmt.Errorf("meter: resend %s: %w", contractID, err)
		}
		if len(events) == 0 {
			return res, nil
		}
		id := s.batchID(contractID+"\n"+salt, events)
		jws, err := verify.SignMeteringBatch(s.cfg.Key, &contract.MeteringBatch{Contract: contractID, BatchID: id, Sidecar: s.kid, IssuedAt: time.Now().Unix(), Events: events})
		if err != nil {
			return res, fmt.Errorf("meter: resend %s: %w", contractID, err)
		}
		token, err := s.cfg.Tokens.Token(ctx, contractID)
		if err != nil {
			return res, fmt.Errorf("meter: resend %s: token: %w", contractID, err)
		}
		resp, err := s.cfg.Client.PostMetering(ctx, contractID, token, id, jws)
		if err != nil {
			return res, fmt.Errorf("meter: resend %s: batch %s: %w", contractID, id, err)
		}
		res.Events += len(events)
		res.Accepted += resp.Accepted
		res.Duplicates += resp.Duplicates
		// Every row may have been sent before; the answer must still add up.
		if err := checkAnswer(events, 1<<63-1, resp); err != nil {
			s.l.disputed.Add(1)
			s.log.Error("registry did not count a metering batch as sent", "contract", contractID, "batch", id, "err", err)
			return res, fmt.Errorf("meter: resend %s: batch %s: %w", contractID, id, err)
		}
		if resp.Accepted > 0 {
			// Events new to the registry made an entry: keep its receipt.
			b := &batch{id: id, jws: jws, after: first, last: after, count: int64(len(events))}
			if err := s.takeReceipt(ctx, c, b, resp); err != nil {
				return res, fmt.Errorf("meter: resend %s: batch %s: %w", contractID, id, err)
			}
		}
	}
}
