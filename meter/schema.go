package meter

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations are the schema versions in order; migrations[i] takes the
// schema from version i to i+1 (PRAGMA user_version). Append, never edit.
var migrations = []string{
	// 1: the ledger.
	`CREATE TABLE meta (
		key   TEXT PRIMARY KEY,
		value BLOB NOT NULL
	) WITHOUT ROWID;
	CREATE TABLE contracts (
		id            INTEGER PRIMARY KEY,
		contract_id   TEXT NOT NULL UNIQUE,
		unit          TEXT NOT NULL DEFAULT '',
		nano_usd      INTEGER NOT NULL DEFAULT 0,
		-- every row of this contract with seq <= acked_seq is acknowledged
		acked_seq     INTEGER NOT NULL DEFAULT 0,
		-- the batch in flight: rows in (acked_seq, pending_last]
		pending_batch TEXT,
		pending_last  INTEGER,
		pending_count INTEGER,
		pending_jws   TEXT
	);
	-- rec is the row's content in the stable binary record form; hash
	-- chains it to the row before (see package doc).
	CREATE TABLE events (
		seq      INTEGER PRIMARY KEY,
		contract INTEGER NOT NULL,
		rec      BLOB NOT NULL,
		hash     BLOB NOT NULL
	);
	CREATE TABLE usage (
		contract  INTEGER NOT NULL,
		token_jti TEXT NOT NULL,
		samples   INTEGER NOT NULL,
		bytes     INTEGER NOT NULL,
		PRIMARY KEY (contract, token_jti)
	) WITHOUT ROWID;
	CREATE TABLE epochs (
		contract    INTEGER NOT NULL,
		job         TEXT NOT NULL,
		epoch       INTEGER NOT NULL,
		first_seq   INTEGER NOT NULL,
		summary_seq INTEGER,
		PRIMARY KEY (contract, job, epoch)
	) WITHOUT ROWID;`,
	// 2: what the registry may have counted, and what it disputed.
	`-- rows with seq <= sent_seq may have been counted by a batch whose
	-- answer was lost: the registry may call them duplicates
	ALTER TABLE contracts ADD COLUMN sent_seq INTEGER NOT NULL DEFAULT 0;
	-- batches the registry acknowledged without counting exactly what was
	-- sent: their rows (after_seq, last_seq] are kept, never pruned
	CREATE TABLE disputes (
		contract  INTEGER NOT NULL,
		batch     TEXT NOT NULL,
		after_seq INTEGER NOT NULL,
		last_seq  INTEGER NOT NULL,
		time      INTEGER NOT NULL,
		detail    TEXT NOT NULL,
		PRIMARY KEY (contract, batch)
	) WITHOUT ROWID;`,
	// 3: the registry's receipts, and the log checkpoint they were
	// checked against.
	`-- the receipt of each acknowledged batch that the registry committed
	-- to the contract's log: its rows (after_seq, last_seq], the log entry
	-- (seq, its exact bytes and leaf hash), the signed checkpoint and the
	-- inclusion proof (a JSON array of base64 hashes) it came with
	CREATE TABLE receipts (
		contract   INTEGER NOT NULL,
		batch      TEXT NOT NULL,
		seq        INTEGER NOT NULL,
		after_seq  INTEGER NOT NULL,
		last_seq   INTEGER NOT NULL,
		leaf       BLOB NOT NULL,
		entry      BLOB NOT NULL,
		checkpoint TEXT NOT NULL,
		inclusion  BLOB NOT NULL,
		time       INTEGER NOT NULL,
		PRIMARY KEY (contract, batch)
	) WITHOUT ROWID;
	CREATE INDEX receipts_seq ON receipts (contract, seq);
	-- the latest signed checkpoint of the contract's log that every
	-- receipt was checked consistent with
	ALTER TABLE contracts ADD COLUMN log_checkpoint TEXT;`,
	// 4: aggregate batches and the rows they cover.
	`-- every aggregate batch the outbox made: its rows (after_seq,
	-- last_seq] of the contract, how many, and the RFC 6962 root of their
	-- leaves (rows.root of the batch), recorded with the batch in flight
	CREATE TABLE batches (
		contract  INTEGER NOT NULL,
		batch     TEXT NOT NULL,
		after_seq INTEGER NOT NULL,
		last_seq  INTEGER NOT NULL,
		count     INTEGER NOT NULL,
		root      BLOB NOT NULL,
		time      INTEGER NOT NULL,
		PRIMARY KEY (contract, batch)
	) WITHOUT ROWID;`,
}

// SchemaVersion is the schema this package writes.
var SchemaVersion = len(migrations)

// migrate brings the schema up to SchemaVersion, one transaction per
// step, and refuses a file written by a newer version.
func migrate(ctx context.Context, db *sql.DB) error {
	for {
		var v int
		if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if v == len(migrations) {
			return nil
		}
		if v > len(migrations) {
			return fmt.Errorf("migrate: ledger schema version %d is newer than this program's %d", v, len(migrations))
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate to version %d: %w", v+1, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate to version %d: %w", v+1, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migrate to version %d: %w", v+1, err)
		}
	}
}
