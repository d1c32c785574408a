package verify

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"

	_ "github.com/mattn/go-sqlite3" // the SQLite driver
)

// StateFile is the name of the trusted-state database in the sidecar's
// state dir.
const StateFile = "verify.db"

// Store persists what the sidecar trusts of each contract's log: the log
// state (size, last leaf, compact range), the last trusted checkpoint, the
// verified manifest, the revocations seen, and a quarantine, so that a
// restart resumes at once and still catches a rollback or a fork. One
// SQLite file serves every contract of a sidecar; every sync commits in one
// transaction.
type Store struct {
	db  *sql.DB // writes: one connection, a sync's transaction at a time
	rdb *sql.DB // reads of the committed state (WAL snapshots), beside a sync
}

const schema = `
CREATE TABLE IF NOT EXISTS logs (
	contract   TEXT PRIMARY KEY,
	state      BLOB NOT NULL,
	checkpoint BLOB NOT NULL,
	quarantine TEXT NOT NULL DEFAULT '',
	objects    INTEGER NOT NULL DEFAULT -1,
	redacted   INTEGER NOT NULL DEFAULT -1,
	updated    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS manifest (
	contract       TEXT NOT NULL,
	name           TEXT NOT NULL,
	seq            INTEGER NOT NULL,
	issuer         TEXT NOT NULL,
	kid            TEXT NOT NULL,
	stored_sha256  TEXT NOT NULL,
	stored_size    INTEGER NOT NULL,
	encoding       TEXT NOT NULL,
	decoded_sha256 TEXT NOT NULL,
	decoded_size   INTEGER NOT NULL,
	license        TEXT NOT NULL,
	media_type     TEXT NOT NULL,
	tokens         INTEGER NOT NULL DEFAULT 0,
	owner_issuer   TEXT NOT NULL DEFAULT '',
	owner_seq      INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (contract, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS redactions (
	contract TEXT NOT NULL,
	name     TEXT NOT NULL,
	seq      INTEGER NOT NULL,
	PRIMARY KEY (contract, name)
);
CREATE TABLE IF NOT EXISTS owners (
	contract TEXT NOT NULL,
	name     TEXT NOT NULL,
	issuer   TEXT NOT NULL,
	seq      INTEGER NOT NULL,
	PRIMARY KEY (contract, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS terms (
	contract TEXT NOT NULL,
	seq      INTEGER NOT NULL,
	time     INTEGER NOT NULL,
	note     TEXT NOT NULL,
	PRIMARY KEY (contract, seq)
);
CREATE TABLE IF NOT EXISTS revocations (
	contract    TEXT NOT NULL,
	issuer      TEXT NOT NULL,
	kid         TEXT NOT NULL,
	seq         INTEGER NOT NULL,
	retroactive INTEGER NOT NULL,
	PRIMARY KEY (contract, issuer, kid)
);
`

// writeCacheKiB is the page cache of the write connection (negative:
// KiB): a sync that adds a million names touches a few hundred MiB of
// index; a larger cache spills less of it to the WAL before the commit.
const writeCacheKiB = "-65536"

// OpenStore opens (creating if needed) the state database at path.
func OpenStore(path string) (*Store, error) {
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_synchronous=FULL&_busy_timeout=5000&_txlock=immediate&_cache_size="+writeCacheKiB)
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	var hadOwners int
	if err := db.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'owners'`).Scan(&hadOwners); err != nil {
		db.Close()
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	if _, err := db.Exec(schema + shardSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	var hasTokens int
	if err := db.QueryRow(`SELECT COUNT(*) FROM pragma_table_info('manifest') WHERE name = 'tokens'`).Scan(&hasTokens); err != nil {
		db.Close()
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	if hasTokens == 0 {
		// A state from before token counts were kept: they read as 0 until
		// the state is reset and the log verified again.
		if _, err := db.Exec(`ALTER TABLE manifest ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0`); err != nil {
			db.Close()
			return nil, fmt.Errorf("open state %s: tokens: %w", path, err)
		}
	}
	for _, col := range []string{"owner_issuer TEXT NOT NULL DEFAULT ''", "owner_seq INTEGER NOT NULL DEFAULT 0"} {
		name, _, _ := strings.Cut(col, " ")
		var has int
		if err := db.QueryRow(`SELECT COUNT(*) FROM pragma_table_info('manifest') WHERE name = ?`, name).Scan(&has); err != nil {
			db.Close()
			return nil, fmt.Errorf("open state %s: %w", path, err)
		}
		if has == 0 {
			// A state from before owners were kept in the manifest rows:
			// its owners are in the owners table.
			if _, err := db.Exec(`ALTER TABLE manifest ADD COLUMN ` + col); err != nil {
				db.Close()
				return nil, fmt.Errorf("open state %s: %s: %w", path, name, err)
			}
		}
	}
	for _, col := range []string{"objects", "redacted"} {
		var has int
		if err := db.QueryRow(`SELECT COUNT(*) FROM pragma_table_info('logs') WHERE name = ?`, col).Scan(&has); err != nil {
			db.Close()
			return nil, fmt.Errorf("open state %s: %w", path, err)
		}
		if has == 0 {
			// Counted again on the next load (-1).
			if _, err := db.Exec(`ALTER TABLE logs ADD COLUMN ` + col + ` INTEGER NOT NULL DEFAULT -1`); err != nil {
				db.Close()
				return nil, fmt.Errorf("open state %s: %s: %w", path, col, err)
			}
		}
	}
	if hadOwners == 0 {
		// A state from before names had owners: each live name is taken to
		// belong to the issuer of its current version.
		if _, err := db.Exec(`INSERT OR IGNORE INTO owners (contract, name, issuer, seq) SELECT contract, name, issuer, seq FROM manifest`); err != nil {
			db.Close()
			return nil, fmt.Errorf("open state %s: owners: %w", path, err)
		}
	}
	rdb, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_busy_timeout=5000&_query_only=true")
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	rdb.SetMaxOpenConns(max(4, runtime.GOMAXPROCS(0)))
	return &Store{db: db, rdb: rdb}, nil
}

// Close closes the database.
func (s *Store) Close() error { return errors.Join(s.rdb.Close(), s.db.Close()) }

// Reset forgets everything trusted about a contract, quarantine included:
// the next follower starts from first contact (pinned checkpoint or trust
// on first use). It is the operator's way out of a quarantine.
func (s *Store) Reset(ctx context.Context, contractID string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("reset state: %w", err)
	}
	defer tx.Rollback()
	for _, t := range []string{"logs", "manifest", "redactions", "owners", "revocations", "terms"} {
		if _, err := tx.ExecContext(ctx, "DELETE FROM "+t+" WHERE contract = ?", contractID); err != nil {
			return fmt.Errorf("reset state: %w", err)
		}
	}
	return tx.Commit()
}

// trusted is a contract's persisted state, but for the manifest, which
// stays on disk (Store.manifestFor).
type trusted struct {
	state      LogState
	checkpoint []byte
	quarantine string
	revs       map[revKey]revocation
	terms      []TermsVersion // as stored: checked again on load
}

// load reads a contract's state; nil when there is none. It reads the
// committed state beside any sync in progress (of another contract).
func (s *Store) load(ctx context.Context, contractID string) (*trusted, error) {
	var stateJSON, cp []byte
	var q string
	err := s.rdb.QueryRowContext(ctx, "SELECT state, checkpoint, quarantine FROM logs WHERE contract = ?", contractID).Scan(&stateJSON, &cp, &q)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	t := &trusted{checkpoint: cp, quarantine: q, revs: map[revKey]revocation{}}
	if err := json.Unmarshal(stateJSON, &t.state); err != nil {
		return nil, fmt.Errorf("%w: log state: %v", ErrState, err)
	}
	vrows, err := s.rdb.QueryContext(ctx, "SELECT issuer, kid, seq, retroactive FROM revocations WHERE contract = ?", contractID)
	if err != nil {
		return nil, fmt.Errorf("load revocations: %w", err)
	}
	defer vrows.Close()
	for vrows.Next() {
		var k revKey
		var r revocation
		if err := vrows.Scan(&k.issuer, &k.kid, &r.Seq, &r.Retroactive); err != nil {
			return nil, fmt.Errorf("load revocations: %w", err)
		}
		t.revs[k] = r
	}
	if err := vrows.Err(); err != nil {
		return nil, fmt.Errorf("load revocations: %w", err)
	}
	vrows.Close()
	trows, err := s.rdb.QueryContext(ctx, "SELECT seq, time, note FROM terms WHERE contract = ? ORDER BY seq", contractID)
	if err != nil {
		return nil, fmt.Errorf("load terms: %w", err)
	}
	defer trows.Close()
	for trows.Next() {
		var v TermsVersion
		var at int64
		if err := trows.Scan(&v.Seq, &at, &v.Note); err != nil {
			return nil, fmt.Errorf("load terms: %w", err)
		}
		v.Time = time.Unix(0, at).UTC()
		t.terms = append(t.terms, v)
	}
	return t, trows.Err()
}

// begin starts a sync's delta: a transaction on the state database that
// the manifest changes are written into as they are verified, committed
// with the new log state by commit, or rolled back.
func (s *Store) begin(ctx context.Context, contractID string, m *Manifest, revs map[revKey]revocation, terms *TermsHistory) (*delta, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin sync: %w", err)
	}
	st, err := prepareDelta(ctx, tx)
	if err != nil {
		tx.Rollback()
		return nil, fmt.Errorf("begin sync: %w", err)
	}
	d := &delta{ctx: ctx, tx: tx, st: st, contract: contractID, revs: revs, newRevs: map[revKey]revocation{}, terms: terms}
	if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM redactions WHERE contract = ?", contractID).Scan(&d.redactions); err != nil {
		tx.Rollback()
		return nil, fmt.Errorf("begin sync: %w", err)
	}
	if err := tx.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM owners WHERE contract = ?)", contractID).Scan(&d.ownersKept); err != nil {
		tx.Rollback()
		return nil, fmt.Errorf("begin sync: %w", err)
	}
	return d, nil
}

// commit stores a verified sync atomically: the new log state and
// checkpoint, the delta (whose manifest changes its transaction holds
// already), and the manifest's counts after it (so that a restart need
// not count a million rows).
func (s *Store) commit(ctx context.Context, contractID string, st LogState, cp []byte, d *delta, objects, redacted int64) error {
	stateJSON, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("commit state: %w", err)
	}
	var tx *sql.Tx
	if d != nil {
		tx = d.tx
	} else if tx, err = s.db.BeginTx(ctx, nil); err != nil {
		return fmt.Errorf("commit state: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO logs (contract, state, checkpoint, updated, objects, redacted) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (contract) DO UPDATE SET state = excluded.state, checkpoint = excluded.checkpoint, updated = excluded.updated,
		objects = excluded.objects, redacted = excluded.redacted`,
		contractID, stateJSON, cp, time.Now().Unix(), objects, redacted); err != nil {
		return fmt.Errorf("commit state: %w", err)
	}
	if d != nil {
		if err := commitDelta(ctx, tx, contractID, d); err != nil {
			return fmt.Errorf("commit manifest: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit state: %w", err)
	}
	if d != nil {
		d.tx = nil
	}
	return nil
}

func commitDelta(ctx context.Context, tx *sql.Tx, contractID string, d *delta) error {
	for _, v := range d.newTerms {
		if _, err := tx.ExecContext(ctx, "INSERT OR REPLACE INTO terms (contract, seq, time, note) VALUES (?, ?, ?, ?)",
			contractID, v.Seq, v.Time.UnixNano(), v.Note); err != nil {
			return err
		}
	}
	for k, r := range d.newRevs {
		if _, err := tx.ExecContext(ctx, "INSERT OR REPLACE INTO revocations (contract, issuer, kid, seq, retroactive) VALUES (?, ?, ?, ?, ?)",
			contractID, k.issuer, k.kid, r.Seq, r.Retroactive); err != nil {
			return err
		}
	}
	return nil
}

// quarantine records a contract's quarantine and its evidence.
func (s *Store) quarantine(ctx context.Context, contractID, evidence string) error {
	res, err := s.db.ExecContext(ctx, "UPDATE logs SET quarantine = ?, updated = ? WHERE contract = ?", evidence, time.Now().Unix(), contractID)
	if err != nil {
		return fmt.Errorf("record quarantine: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		// Quarantined before any state was trusted: keep the evidence anyway.
		st, _ := json.Marshal(LogState{})
		if _, err := s.db.ExecContext(ctx, "INSERT INTO logs (contract, state, checkpoint, quarantine, updated) VALUES (?, ?, ?, ?, ?)",
			contractID, st, []byte{}, evidence, time.Now().Unix()); err != nil {
			return fmt.Errorf("record quarantine: %w", err)
		}
	}
	return nil
}
