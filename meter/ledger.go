package meter

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sqlite3 "github.com/mattn/go-sqlite3"

	"github.com/provgate/provgate/contract"
)

// Errors. Callers test them with errors.Is.
var (
	// ErrBusy: the write buffer stayed full for Config.FullWait; the
	// sidecar answers 503 and the client retries.
	ErrBusy = errors.New("meter: ledger buffer is full")
	// ErrClosed: the ledger is stopping or stopped.
	ErrClosed = errors.New("meter: ledger is closed")
	// ErrUnknownContract: no pricing was set for the contract.
	ErrUnknownContract = errors.New("meter: contract has no pricing in the ledger")
	// ErrInvalidEvent: the event is out of bounds; nothing was written.
	ErrInvalidEvent = errors.New("meter: invalid event")
	// ErrTampered: Verify found a row that breaks the chain.
	ErrTampered = errors.New("meter: ledger chain is broken")
	// ErrQuotaSpent: a token's or contract's quota is used up.
	ErrQuotaSpent = errors.New("meter: quota spent")
)

// Sync is the durability of an acknowledged event; see the package doc.
type Sync int

const (
	// SyncNormal: acknowledged events survive a killed process.
	SyncNormal Sync = iota
	// SyncFull: acknowledged events survive power loss (fsync per group commit).
	SyncFull
)

// Defaults for Config.
const (
	DefaultBufferSize = 1 << 16
	DefaultFullWait   = 50 * time.Millisecond
	// DefaultCommitDelay is how long the writer lets a group of events
	// that nobody waits for grow before committing it: fewer, larger
	// commits keep the data path's cost low (see BenchmarkHitInterleaved).
	DefaultCommitDelay = 20 * time.Millisecond
	// urgentGroup is the group size that is committed without delay.
	urgentGroup = 1024
)

// Config tunes a Ledger. The zero value is usable.
type Config struct {
	Sync Sync
	// BufferSize bounds the events queued for the writer.
	BufferSize int
	// FullWait is how long Submit waits for room before ErrBusy.
	FullWait time.Duration
	// CommitDelay is how long a group that nobody waits for may grow
	// before it is committed; a Wait (or Record) commits at once. Events
	// submitted without waiting are unacknowledged for at most this long
	// plus one commit.
	CommitDelay time.Duration
	Logger      *slog.Logger
}

// writerDriver is SQLite for the writer's connection: no automatic WAL
// checkpoints, so that a checkpoint's fsyncs never stall a commit; the
// checkpointer goroutine runs them beside the writer instead.
const writerDriver = "sqlite3-provgate-meter-writer"

func init() {
	sql.Register(writerDriver, &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
		_, err := c.Exec("PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 67108864", nil)
		return err
	}})
}

// insertRows is how many rows one INSERT statement carries.
const insertRows = 64

// Ledger is the metering ledger. Open it, SetPricing for each mounted
// contract, Start the writer, then Record or Submit events.
type Ledger struct {
	path     string
	cfg      Config
	log      *slog.Logger
	db       *sql.DB // one connection, every write
	rdb      *sql.DB // readers
	id       string  // ledger id
	readOnly bool

	mu        sync.Mutex
	cur       *group
	queued    int
	room      chan struct{} // closed when the writer frees room
	closed    bool
	contracts map[string]*contractState
	byID      map[int64]*contractState
	usage     map[usageKey]*usageTotals // per contract and lease (or token)
	cusage    map[int64]*usageTotals    // per contract
	reserved  map[usageKey]*usageTotals // reserved by responses in flight
	creserved map[int64]*usageTotals

	commit    committer     // who commits: a waiting caller, or the writer
	wake      chan struct{} // a group has its first event
	urgent    chan struct{} // a group has a waiter, or is big
	committed chan struct{} // tells a Syncer there is new work

	// owned by the writer goroutine
	headSeq    int64
	headHash   []byte
	epochsSeen map[epochKey]bool
	hasher     chainHasher

	insert      *sql.Stmt // one row
	insertN     *sql.Stmt // insertRows rows
	args        []any
	arena       []byte
	usageUpsert *sql.Stmt
	headUpdate  *sql.Stmt
	usageDelta  map[usageKey]usageTotals // committed, not yet in the usage table
	lastSnap    time.Time
	cdb         *sql.DB // the checkpointer's connection
	dirty       atomic.Bool

	startOnce sync.Once
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	written, commits, refused, writeErrors atomic.Uint64
	synced, batches, syncErrors            atomic.Uint64
	disputed                               atomic.Uint64
	// disputes by contract id, replaced whole on each (rare) dispute so
	// that DisputeStatus, read on the data path, takes no lock.
	disputes  atomic.Pointer[map[string]DisputeInfo]
	disputeMu sync.Mutex // serialises writers of disputes
}

type contractState struct {
	id      int64
	name    string
	pricing contract.Pricing
	nano    int64
	priced  bool
	// terms is the seq of the contract's terms version in force (the log
	// entry its pricing comes from); rows priced under it record it.
	terms  uint64
	outbox atomic.Int64 // rows not yet acknowledged by the registry
}

type usageKey struct {
	contract int64
	token    string
}

type usageTotals struct{ samples, bytes int64 }

type epochKey struct {
	contract int64
	job      string
	epoch    int64
}

// item is one queued write: an access event or an epoch close.
type item struct {
	kind         byte
	c            *contractState
	ev           Event
	units, cost  int64
	terms        uint64
	res          *Reservation  // turned into usage as the item is queued
	epochSummary *EpochSummary // result, for kindEpoch
}

// group is the set of items one transaction commits.
type group struct {
	waiters atomic.Int32
	items   []item
	seqs    []int64
	err     error
	done    chan struct{}
}

// newGroup makes a group with room for hint items (at least 16).
func newGroup(hint int) *group {
	return &group{done: make(chan struct{}), items: make([]item, 0, max(hint, 16))}
}

// Open opens (creating if needed) the ledger at path and migrates its
// schema. The writer does not run until Start.
func Open(ctx context.Context, path string, cfg Config) (*Ledger, error) {
	if cfg.BufferSize <= 0 {
		cfg.BufferSize = DefaultBufferSize
	}
	if cfg.FullWait <= 0 {
		cfg.FullWait = DefaultFullWait
	}
	if cfg.CommitDelay <= 0 {
		cfg.CommitDelay = DefaultCommitDelay
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	sync := "NORMAL"
	if cfg.Sync == SyncFull {
		sync = "FULL"
	}
	db, err := sql.Open(writerDriver, "file:"+path+"?_journal_mode=WAL&_synchronous="+sync+"&_busy_timeout=10000&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open ledger: %w", err)
	}
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	l := newLedger(path, cfg, db)
	if err := l.init(ctx, false); err != nil {
		db.Close()
		return nil, err
	}
	return l, nil
}

// OpenReadOnly opens an existing ledger for reading (report, export,
// verify), while a sidecar may be writing it.
func OpenReadOnly(ctx context.Context, path string) (*Ledger, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("open ledger: %w", err)
	}
	l := newLedger(path, Config{Logger: slog.New(slog.DiscardHandler)}, nil)
	l.readOnly = true
	if err := l.init(ctx, true); err != nil {
		return nil, err
	}
	return l, nil
}

func newLedger(path string, cfg Config, db *sql.DB) *Ledger {
	return &Ledger{
		path: path, cfg: cfg, log: cfg.Logger, db: db,
		cur:        newGroup(0),
		room:       make(chan struct{}),
		contracts:  map[string]*contractState{},
		byID:       map[int64]*contractState{},
		usage:      map[usageKey]*usageTotals{},
		cusage:     map[int64]*usageTotals{},
		reserved:   map[usageKey]*usageTotals{},
		creserved:  map[int64]*usageTotals{},
		wake:       make(chan struct{}, 1),
		urgent:     make(chan struct{}, 1),
		committed:  make(chan struct{}, 1),
		epochsSeen: map[epochKey]bool{},
		usageDelta: map[usageKey]usageTotals{},
	}
}

func (l *Ledger) init(ctx context.Context, readOnly bool) error {
	if !readOnly {
		if err := migrate(ctx, l.db); err != nil {
			return err
		}
		if err := l.ensureID(ctx); err != nil {
			return err
		}
	}
	rdb, err := sql.Open("sqlite3", "file:"+l.path+"?_busy_timeout=10000&_query_only=1")
	if err != nil {
		return fmt.Errorf("open ledger: %w", err)
	}
	rdb.SetMaxOpenConns(4)
	l.rdb = rdb
	if readOnly {
		var v int
		if err := rdb.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
			rdb.Close()
			return fmt.Errorf("open ledger %s: %w", l.path, err)
		}
		if v != SchemaVersion {
			rdb.Close()
			return fmt.Errorf("open ledger %s: schema version %d, this program reads %d", l.path, v, SchemaVersion)
		}
	}
	if err := l.load(ctx); err != nil {
		rdb.Close()
		return err
	}
	if !readOnly {
		const row = "(?, ?, ?, ?)"
		l.insert, err = l.db.PrepareContext(ctx, "INSERT INTO events (seq, contract, rec, hash) VALUES "+row)
		if err == nil {
			l.insertN, err = l.db.PrepareContext(ctx, "INSERT INTO events (seq, contract, rec, hash) VALUES "+row+strings.Repeat(", "+row, insertRows-1))
		}
		if err == nil {
			l.usageUpsert, err = l.db.PrepareContext(ctx, `INSERT INTO usage (contract, token_jti, samples, bytes) VALUES (?, ?, ?, ?)
				ON CONFLICT (contract, token_jti) DO UPDATE SET samples = samples + excluded.samples, bytes = bytes + excluded.bytes`)
		}
		if err == nil {
			l.headUpdate, err = l.db.PrepareContext(ctx, "INSERT OR REPLACE INTO meta (key, value) VALUES ('head_seq', ?), ('head_hash', ?), ('usage_seq', ?)")
		}
		if err == nil {
			l.cdb, err = sql.Open("sqlite3", "file:"+l.path+"?_busy_timeout=10000")
		}
		if err != nil {
			rdb.Close()
			return fmt.Errorf("open ledger: %w", err)
		}
		l.cdb.SetMaxOpenConns(1)
	}
	return nil
}

// ensureID mints the ledger id the first time.
func (l *Ledger) ensureID(ctx context.Context) error {
	var b [16]byte
	rand.Read(b[:])
	_, err := l.db.ExecContext(ctx, "INSERT OR IGNORE INTO meta (key, value) VALUES ('ledger_id', ?)", base64.RawURLEncoding.EncodeToString(b[:]))
	if err != nil {
		return fmt.Errorf("open ledger: %w", err)
	}
	return nil
}

// querier is a *sql.DB or *sql.Tx.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (l *Ledger) meta(ctx context.Context, key string) ([]byte, bool, error) {
	return metaGet(ctx, l.rdb, key)
}

func metaGet(ctx context.Context, q querier, key string) ([]byte, bool, error) {
	var v []byte
	err := q.QueryRowContext(ctx, "SELECT value FROM meta WHERE key = ?", key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	return v, err == nil, err
}

func (l *Ledger) metaInt(ctx context.Context, key string) (int64, bool, error) {
	return metaInt(ctx, l.rdb, key)
}

func metaInt(ctx context.Context, q querier, key string) (int64, bool, error) {
	v, ok, err := metaGet(ctx, q, key)
	if !ok || err != nil {
		return 0, ok, err
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	return n, err == nil, err
}

// load reads the ledger id, head, contracts, usage and outbox depths.
func (l *Ledger) load(ctx context.Context) error {
	id, ok, err := l.meta(ctx, "ledger_id")
	if err != nil || !ok {
		return fmt.Errorf("open ledger %s: no ledger id (%v)", l.path, err)
	}
	l.id = string(id)
	l.headSeq, l.headHash = 0, genesis(l.id)
	if seq, ok, err := l.metaInt(ctx, "head_seq"); err != nil {
		return fmt.Errorf("open ledger: %w", err)
	} else if ok {
		h, _, err := l.meta(ctx, "head_hash")
		if err != nil {
			return fmt.Errorf("open ledger: %w", err)
		}
		l.headSeq, l.headHash = seq, h
	}
	// A row past the recorded head cannot come from this package; keep
	// chaining after it so that Verify reports it rather than a reuse.
	var maxSeq sql.NullInt64
	var maxHash []byte
	err = l.rdb.QueryRowContext(ctx, "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").Scan(&maxSeq, &maxHash)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("open ledger: %w", err)
	}
	if maxSeq.Valid && maxSeq.Int64 > l.headSeq {
		l.headSeq, l.headHash = maxSeq.Int64, maxHash
	}

	rows, err := l.rdb.QueryContext(ctx, "SELECT id, contract_id, unit, nano_usd, acked_seq FROM contracts")
	if err != nil {
		return fmt.Errorf("open ledger: %w", err)
	}
	acked := map[int64]int64{}
	for rows.Next() {
		c := &contractState{}
		var a int64
		if err := rows.Scan(&c.id, &c.name, &c.pricing.Unit, &c.nano, &a); err != nil {
			rows.Close()
			return fmt.Errorf("open ledger: %w", err)
		}
		c.priced = c.pricing.Unit != ""
		c.pricing.PriceUSD = float64(c.nano) / 1e9
		l.contracts[c.name], l.byID[c.id] = c, c
		acked[c.id] = a
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("open ledger: %w", err)
	}
	for id, a := range acked {
		var n int64
		if err := l.rdb.QueryRowContext(ctx, "SELECT count(*) FROM events WHERE seq > ? AND contract = ?", a, id).Scan(&n); err != nil {
			return fmt.Errorf("open ledger: %w", err)
		}
		l.byID[id].outbox.Store(n)
	}

	if err := l.loadDisputes(ctx); err != nil && !l.readOnly {
		return fmt.Errorf("open ledger: %w", err)
	}

	rows, err = l.rdb.QueryContext(ctx, "SELECT contract, token_jti, samples, bytes FROM usage")
	if err != nil {
		return fmt.Errorf("open ledger: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k usageKey
		var u usageTotals
		if err := rows.Scan(&k.contract, &k.token, &u.samples, &u.bytes); err != nil {
			return fmt.Errorf("open ledger: %w", err)
		}
		l.usage[k] = &u
		cu := l.cusage[k.contract]
		if cu == nil {
			cu = &usageTotals{}
			l.cusage[k.contract] = cu
		}
		cu.samples += u.samples
		cu.bytes += u.bytes
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("open ledger: %w", err)
	}
	// Rows after the last usage snapshot.
	usageSeq, _, err := l.metaInt(ctx, "usage_seq")
	if err != nil {
		return fmt.Errorf("open ledger: %w", err)
	}
	err = l.scanRows(ctx, func(r *Row, cid int64) error {
		if r.Kind == contract.EventAccess && billable(r.Outcome) {
			k := quotaKey(r.Lease, r.TokenID)
			l.addUsage(cid, k, r.Samples, r.Bytes)
			if !l.readOnly {
				add(l.usageDelta, usageKey{cid, k}, usageTotals{r.Samples, r.Bytes})
			}
		}
		return nil
	}, "SELECT seq, contract, rec, hash FROM events WHERE seq > ? ORDER BY seq", usageSeq)
	if err != nil {
		return fmt.Errorf("open ledger: %w", err)
	}
	return nil
}

// ID is the ledger's id, the prefix of every event id it mints.
func (l *Ledger) ID() string { return l.id }

// Path is the ledger file.
func (l *Ledger) Path() string { return l.path }

// SetPricing registers a contract and the pricing its new events are
// billed at. Rows already written keep their price.
func (l *Ledger) SetPricing(ctx context.Context, contractID string, p contract.Pricing) error {
	return l.SetTerms(ctx, contractID, p, 0)
}

// SetTerms is SetPricing for the terms version at log entry termsSeq:
// every access row priced from now on records that seq (0: none).
func (l *Ledger) SetTerms(ctx context.Context, contractID string, p contract.Pricing, termsSeq uint64) error {
	if l.readOnly {
		return ErrClosed
	}
	if err := contract.ValidateID(contractID); err != nil {
		return fmt.Errorf("set pricing: %w", err)
	}
	switch p.Unit {
	case contract.UnitSample, contract.UnitToken, contract.UnitByte, contract.UnitSubscription:
	default:
		return fmt.Errorf("set pricing: unit %q: want sample, token, byte or subscription", p.Unit)
	}
	if p.PriceUSD < 0 || p.PriceUSD > 1e9 {
		return fmt.Errorf("set pricing: price %v out of range", p.PriceUSD)
	}
	nano := p.NanoUSD()
	var id int64
	err := l.db.QueryRowContext(ctx, `INSERT INTO contracts (contract_id, unit, nano_usd) VALUES (?, ?, ?)
		ON CONFLICT (contract_id) DO UPDATE SET unit = excluded.unit, nano_usd = excluded.nano_usd
		RETURNING id`, contractID, p.Unit, nano).Scan(&id)
	if err != nil {
		return fmt.Errorf("set pricing: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.contracts[contractID]
	if c == nil {
		c = &contractState{id: id, name: contractID}
		l.contracts[contractID], l.byID[id] = c, c
	}
	c.pricing, c.nano, c.priced, c.terms = p, nano, true, termsSeq
	return nil
}

// Start runs the writer until ctx ends or Stop is called. Events
// submitted before Start wait for it.
func (l *Ledger) Start(ctx context.Context) {
	if l.readOnly {
		return
	}
	l.startOnce.Do(func() {
		ctx, l.cancel = context.WithCancel(ctx)
		l.wg.Add(2)
		go l.writer(ctx)
		go l.checkpointer(ctx)
	})
}

// Stop refuses new events, commits every queued one and waits for the
// writer to end. Events queued on a ledger that was never started fail
// with ErrClosed.
func (l *Ledger) Stop() {
	if l.cancel != nil {
		l.cancel()
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		l.startOnce.Do(func() {}) // never start now
		if g := l.cur; len(g.items) > 0 {
			g.err = ErrClosed
			close(g.done)
			l.cur = newGroup(0)
			l.queued = 0
		}
		close(l.room)
		l.room = make(chan struct{})
	}
}

// Close stops the writer and closes the file.
func (l *Ledger) Close() error {
	l.Stop()
	var errs []error
	if l.insert != nil {
		errs = append(errs, l.insert.Close(), l.insertN.Close(), l.usageUpsert.Close(), l.headUpdate.Close())
	}
	if l.cdb != nil {
		errs = append(errs, l.cdb.Close())
	}
	if l.db != nil {
		errs = append(errs, l.db.Close())
	}
	if l.rdb != nil {
		errs = append(errs, l.rdb.Close())
	}
	return errors.Join(errs...)
}

// Receipt is an acknowledged event.
type Receipt struct {
	Seq         int64
	ID          string
	Units       int64
	CostNanoUSD int64
}

// Pending is a submitted event on its way to the ledger.
type Pending struct {
	g *group
	i int
	l *Ledger
}

// Done is closed once the event's transaction has ended.
func (p Pending) Done() <-chan struct{} { return p.g.done }

// Wait returns once the event is committed (acknowledged) or has failed.
// A group with a waiter is committed without delay, by the waiter itself
// when no commit is under way (see Ledger.await).
func (p Pending) Wait(ctx context.Context) (Receipt, error) {
	if err := p.l.await(ctx, p.g); err != nil {
		return Receipt{}, err
	}
	if p.g.err != nil {
		return Receipt{}, p.g.err
	}
	it := &p.g.items[p.i]
	seq := p.g.seqs[p.i]
	return Receipt{Seq: seq, ID: eventID(p.l.id, seq), Units: it.units, CostNanoUSD: it.cost}, nil
}

// Record writes one access event and returns once it is acknowledged
// (committed, see the package doc). Concurrent calls share one
// transaction. It fails with ErrBusy when the buffer stays full, and
// with ErrUnknownContract, ErrInvalidEvent or ErrClosed.
func (l *Ledger) Record(ctx context.Context, e Event) (Receipt, error) {
	p, err := l.Submit(ctx, e)
	if err != nil {
		return Receipt{}, err
	}
	return p.Wait(ctx)
}

// Submit queues one access event without waiting for the commit; Wait on
// the result to know it is acknowledged. The event counts toward Usage at
// once. It waits at most Config.FullWait for room in the buffer, then
// fails with ErrBusy.
func (l *Ledger) Submit(ctx context.Context, e Event) (Pending, error) {
	if err := e.normalize(time.Now().UTC()); err != nil {
		return Pending{}, err
	}
	return l.enqueue(ctx, item{kind: kindAccess, ev: e})
}

func (l *Ledger) enqueue(ctx context.Context, it item) (Pending, error) {
	var timer *time.Timer
	l.mu.Lock()
	for l.queued >= l.cfg.BufferSize && !l.closed {
		room := l.room
		l.mu.Unlock()
		l.nudge()
		// A reserved access bills bytes that are leaving: it waits for
		// room as long as its context lets it, never ErrBusy.
		var timeout <-chan time.Time
		if it.res == nil {
			if timer == nil {
				timer = time.NewTimer(l.cfg.FullWait)
				defer timer.Stop()
			}
			timeout = timer.C
		}
		select {
		case <-room:
		case <-timeout:
			l.refused.Add(1)
			return Pending{}, fmt.Errorf("%w: %d events queued", ErrBusy, l.cfg.BufferSize)
		case <-ctx.Done():
			return Pending{}, ctx.Err()
		}
		l.mu.Lock()
	}
	if l.closed || l.readOnly {
		l.mu.Unlock()
		return Pending{}, ErrClosed
	}
	c := l.contracts[it.ev.Contract]
	if c == nil || !c.priced {
		l.mu.Unlock()
		return Pending{}, fmt.Errorf("%w: %q", ErrUnknownContract, it.ev.Contract)
	}
	it.c = c
	if it.kind == kindAccess {
		var err error
		it.terms = c.terms
		if it.units, it.cost, err = price(c.pricing, c.nano, &it.ev); err != nil {
			l.mu.Unlock()
			return Pending{}, err
		}
		if billable(it.ev.Outcome) {
			l.addUsage(c.id, quotaKey(it.ev.Lease, it.ev.TokenID), it.ev.Samples, it.ev.Bytes)
		}
		if it.res != nil {
			it.res.releaseLocked() // the usage above replaces it
			it.res = nil
		}
	}
	g := l.cur
	g.items = append(g.items, it)
	i := len(g.items) - 1
	l.queued++
	l.mu.Unlock()
	switch i {
	case 0:
		select {
		case l.wake <- struct{}{}:
		default:
		}
	case urgentGroup:
		l.nudge()
	}
	return Pending{g: g, i: i, l: l}, nil
}

// nudge asks the writer to commit the current group now.
func (l *Ledger) nudge() {
	select {
	case l.urgent <- struct{}{}:
	default:
	}
}

// addUsage changes the running totals; l.mu is held.
func (l *Ledger) addUsage(cid int64, token string, samples, bytes int64) {
	k := usageKey{cid, token}
	u := l.usage[k]
	if u == nil {
		u = &usageTotals{}
		l.usage[k] = u
	}
	u.samples += samples
	u.bytes += bytes
	cu := l.cusage[cid]
	if cu == nil {
		cu = &usageTotals{}
		l.cusage[cid] = cu
	}
	cu.samples += samples
	cu.bytes += bytes
}

// Usage is what a token has consumed of a contract so far (billing
// outcomes only), counting events from the moment they are submitted.
func (l *Ledger) Usage(contractID, tokenID string) (samples, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.contracts[contractID]
	if c == nil {
		return 0, 0
	}
	if u := l.usage[usageKey{c.id, tokenID}]; u != nil {
		return u.samples, u.bytes
	}
	return 0, 0
}

// ContractUsage is what all tokens have consumed of a contract so far.
func (l *Ledger) ContractUsage(contractID string) (samples, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.contracts[contractID]
	if c == nil {
		return 0, 0
	}
	if u := l.cusage[c.id]; u != nil {
		return u.samples, u.bytes
	}
	return 0, 0
}

// Stats are the ledger's counters, for /metrics.
type Stats struct {
	Queued      int    // events waiting for the writer
	Written     uint64 // rows committed since Open
	Commits     uint64 // write transactions since Open
	Refused     uint64 // events refused with ErrBusy
	WriteErrors uint64 // failed write transactions
	Outbox      int64  // rows not yet acknowledged by the registry
	Synced      uint64 // rows the registry acknowledged since Open
	Batches     uint64 // batches the registry acknowledged since Open
	SyncErrors  uint64 // failed batch posts
	Disputed    uint64 // acknowledged batches the registry did not count as sent, since Open
}

// Stats returns the counters now.
func (l *Ledger) Stats() Stats {
	l.mu.Lock()
	s := Stats{Queued: l.queued}
	for _, c := range l.contracts {
		s.Outbox += c.outbox.Load()
	}
	l.mu.Unlock()
	s.Written, s.Commits, s.Refused, s.WriteErrors = l.written.Load(), l.commits.Load(), l.refused.Load(), l.writeErrors.Load()
	s.Synced, s.Batches, s.SyncErrors = l.synced.Load(), l.batches.Load(), l.syncErrors.Load()
	s.Disputed = l.disputed.Load()
	return s
}

// OutboxDepth is the number of rows of a contract not yet acknowledged.
func (l *Ledger) OutboxDepth(contractID string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c := l.contracts[contractID]; c != nil {
		return c.outbox.Load()
	}
	return 0
}
