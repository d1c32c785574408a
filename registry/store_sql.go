package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/mattn/go-sqlite3"
)

// dialect is the SQL database a store runs on. The store's queries are
// shared: written once, with ? placeholders, in the SQL both databases
// speak; the few places where they differ ask the dialect.
type dialect int

const (
	dialectSQLite dialect = iota
	dialectPostgres
)

// sqlDB runs a store's SQL on SQLite or PostgreSQL through database/sql.
// It is the one place where ? placeholders become PostgreSQL's $n, and
// where a call whose context carries the log transaction (see inLogTx)
// runs in that transaction instead of on a connection of its own. Its
// methods mirror *sql.DB's, so that a store method reads the same on both.
type sqlDB struct {
	db *sql.DB
	d  dialect
	// rebound caches the $n form of each query (PostgreSQL only).
	rebound sync.Map
	// wmu queues this process's SQLite writers (transactions and writing
	// statements) in Go, fairly, rather than in SQLite's busy loop, where
	// a writer can starve past its busy timeout while the log's writers
	// take the lock in turn. Readers (WAL) do not take it.
	wmu sync.Mutex
}

// writeLock takes wmu on SQLite; the returned func releases it.
func (d *sqlDB) writeLock() func() {
	if d.d != dialectSQLite {
		return func() {}
	}
	d.wmu.Lock()
	return d.wmu.Unlock
}

// querier is what *sql.DB and *sql.Tx share.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
}

// logTxKey is the context key of the log transaction.
type logTxKey struct{}

type logTx struct {
	db *sqlDB
	tx *sql.Tx
	// savepoints numbers the nested transactions begun in it.
	savepoints int
}

// on is the transaction ctx carries for this database, or the database.
func (d *sqlDB) on(ctx context.Context) querier {
	if lt, ok := ctx.Value(logTxKey{}).(*logTx); ok && lt.db == d {
		return lt.tx
	}
	return d.db
}

func (d *sqlDB) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	q := d.on(ctx)
	if q == querier(d.db) {
		defer d.writeLock()()
	}
	return q.ExecContext(ctx, d.rebind(query), args...)
}

func (d *sqlDB) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return d.on(ctx).QueryContext(ctx, d.rebind(query), args...)
}

func (d *sqlDB) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return d.on(ctx).QueryRowContext(ctx, d.rebind(query), args...)
}

func (d *sqlDB) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	return d.on(ctx).PrepareContext(ctx, d.rebind(query))
}

func (d *sqlDB) Close() error { return d.db.Close() }

// BeginTx begins a transaction; inside the log transaction it is a
// savepoint of it, so that its Rollback undoes only its own writes and its
// Commit makes them part of the log transaction.
func (d *sqlDB) BeginTx(ctx context.Context, opts *sql.TxOptions) (*sqlTx, error) {
	if lt, ok := ctx.Value(logTxKey{}).(*logTx); ok && lt.db == d {
		lt.savepoints++
		sp := "sp" + strconv.Itoa(lt.savepoints)
		if _, err := lt.tx.ExecContext(ctx, "SAVEPOINT "+sp); err != nil {
			return nil, err
		}
		return &sqlTx{d: d, tx: lt.tx, ctx: ctx, savepoint: sp}, nil
	}
	unlock := d.writeLock()
	tx, err := d.db.BeginTx(ctx, opts)
	if err != nil {
		unlock()
		return nil, err
	}
	return &sqlTx{d: d, tx: tx, ctx: ctx, unlock: unlock}, nil
}

// sqlTx is a transaction (or a savepoint of the log transaction) with
// sqlDB's placeholders.
type sqlTx struct {
	d         *sqlDB
	tx        *sql.Tx
	ctx       context.Context // of a savepoint: its release or rollback
	unlock    func()          // of a transaction: releases sqlDB.wmu
	savepoint string
	done      bool
}

func (t *sqlTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return t.tx.ExecContext(ctx, t.d.rebind(query), args...)
}

func (t *sqlTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return t.tx.QueryContext(ctx, t.d.rebind(query), args...)
}

func (t *sqlTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return t.tx.QueryRowContext(ctx, t.d.rebind(query), args...)
}

func (t *sqlTx) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	return t.tx.PrepareContext(ctx, t.d.rebind(query))
}

func (t *sqlTx) Commit() error {
	if t.done {
		return sql.ErrTxDone
	}
	t.done = true
	if t.savepoint == "" {
		defer t.unlock()
		return t.tx.Commit()
	}
	_, err := t.tx.ExecContext(context.WithoutCancel(t.ctx), "RELEASE SAVEPOINT "+t.savepoint)
	return err
}

// Rollback undoes the transaction (or the savepoint) unless it was
// committed; like sql.Tx's, it is safe to defer.
func (t *sqlTx) Rollback() error {
	if t.done {
		return sql.ErrTxDone
	}
	t.done = true
	if t.savepoint == "" {
		defer t.unlock()
		return t.tx.Rollback()
	}
	if _, err := t.tx.ExecContext(context.WithoutCancel(t.ctx), "ROLLBACK TO SAVEPOINT "+t.savepoint); err != nil {
		return err
	}
	_, err := t.tx.ExecContext(context.WithoutCancel(t.ctx), "RELEASE SAVEPOINT "+t.savepoint)
	return err
}

// inLogTx runs fn as the one writer of a contract's log: in one
// transaction (which the store calls fn makes with the context it is given
// join) holding the log's lock. On SQLite the transaction's write lock
// (BEGIN IMMEDIATE) is the lock; on PostgreSQL it is a transaction-level
// advisory lock on the contract, so that the registry replicas sharing
// the database take turns, each seeing the log as the previous one
// committed it. fn's error rolls everything back.
func (d *sqlDB) inLogTx(ctx context.Context, contractID string, fn func(ctx context.Context) error) error {
	if _, ok := ctx.Value(logTxKey{}).(*logTx); ok {
		return errors.New("registry: nested log transactions")
	}
	defer d.writeLock()()
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := d.lockKey(ctx, tx, "log "+contractID); err != nil {
		return err
	}
	if err := fn(context.WithValue(ctx, logTxKey{}, &logTx{db: d, tx: tx})); err != nil {
		return err
	}
	return tx.Commit()
}

// lockKey takes, for the rest of the transaction, a lock named key that
// other transactions of any replica wait for. SQLite transactions hold the
// database's write lock from their start (_txlock=immediate) already.
func (d *sqlDB) lockKey(ctx context.Context, tx interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}, key string) error {
	if d.d != dialectPostgres {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, key); err != nil {
		return fmt.Errorf("lock %q: %w", key, err)
	}
	return nil
}

// rebind turns ? placeholders into $1, $2, … for PostgreSQL. The store's
// queries hold no ? in string literals or identifiers.
func (d *sqlDB) rebind(q string) string {
	if d.d != dialectPostgres || !strings.Contains(q, "?") {
		return q
	}
	if r, ok := d.rebound.Load(q); ok {
		return r.(string)
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	inQuote := false
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'':
			inQuote = !inQuote
		case c == '?' && !inQuote:
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(c)
	}
	r := b.String()
	d.rebound.Store(q, r)
	return r
}

// greatest is the SQL of the largest of the expressions.
func (d *sqlDB) greatest(exprs ...string) string {
	if d.d == dialectPostgres {
		return "GREATEST(" + strings.Join(exprs, ", ") + ")"
	}
	return "MAX(" + strings.Join(exprs, ", ") + ")"
}

// isUnique reports a unique or primary-key violation on either database.
func isUnique(err error) bool {
	var se sqlite3.Error
	if errors.As(err, &se) {
		return se.ExtendedCode == sqlite3.ErrConstraintUnique || se.ExtendedCode == sqlite3.ErrConstraintPrimaryKey
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}
