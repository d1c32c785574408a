package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

// IsPostgresURL reports whether db names a PostgreSQL database
// (postgres:// or postgresql://) rather than a SQLite file.
func IsPostgresURL(db string) bool {
	return strings.HasPrefix(db, "postgres://") || strings.HasPrefix(db, "postgresql://")
}

// openStore opens the store that db names: a PostgreSQL URL, or a SQLite
// file path.
func openStore(ctx context.Context, db string, relaxed bool) (*sqlStore, error) {
	if IsPostgresURL(db) {
		return openPostgres(ctx, db)
	}
	return openSQLite(ctx, db, relaxed)
}

// openPostgres opens the registry's PostgreSQL database, which several
// registry replicas may share, and brings its schema up to date.
//
// It goes through pgx's database/sql driver, not pgxpool, so that the
// store's methods (and their SQL) are the SQLite store's: one
// implementation, with sqlDB adapting placeholders and locks.
func openPostgres(ctx context.Context, dsn string) (*sqlStore, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(32)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	if err := migratePostgres(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open postgres: migrate: %w", err)
	}
	return &sqlStore{db: &sqlDB{db: db, d: dialectPostgres}, now: time.Now}, nil
}

// pgMigration is one versioned step of the PostgreSQL schema. Steps are
// applied in order, each once, and never edited once released: a change
// is a new step.
type pgMigration struct {
	version int
	name    string
	sql     string
	// then, when set, runs after sql in the migration's transaction (with
	// ? placeholders): a backfill of what the new tables derive from.
	then func(ctx context.Context, tx querier) error
}

// pgMigrations is the PostgreSQL schema: the SQLite schema's tables with
// PostgreSQL's types (BIGINT for integers, BYTEA for blobs).
var pgMigrations = []pgMigration{
	{1, "registry tables", `
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE signing_keys (
	kid TEXT PRIMARY KEY, jwk BYTEA NOT NULL, created BIGINT NOT NULL, retired BIGINT NOT NULL DEFAULT 0);
CREATE TABLE contracts (
	id TEXT PRIMARY KEY, body BYTEA NOT NULL, etag TEXT NOT NULL, created BIGINT NOT NULL);
CREATE TABLE terms_versions (
	contract TEXT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (contract, seq));
CREATE TABLE entries (
	contract TEXT NOT NULL, seq BIGINT NOT NULL, body BYTEA NOT NULL, time BIGINT NOT NULL,
	PRIMARY KEY (contract, seq));
CREATE TABLE nodes (
	contract TEXT NOT NULL, level BIGINT NOT NULL, idx BIGINT NOT NULL, hash BYTEA NOT NULL,
	PRIMARY KEY (contract, level, idx));
CREATE TABLE checkpoints (
	contract TEXT NOT NULL, time BIGINT NOT NULL, size BIGINT NOT NULL, note BYTEA NOT NULL);
CREATE INDEX checkpoints_time ON checkpoints (contract, time);
CREATE INDEX checkpoints_size ON checkpoints (contract, size, time);
CREATE TABLE checkpoint_bodies (
	contract TEXT NOT NULL, size BIGINT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (contract, size));
CREATE TABLE attestations (
	contract TEXT NOT NULL, issuer TEXT NOT NULL, jti TEXT NOT NULL, seq BIGINT NOT NULL,
	PRIMARY KEY (contract, issuer, jti));
CREATE TABLE objects (
	contract TEXT NOT NULL, name TEXT NOT NULL, seq BIGINT NOT NULL, redacted BIGINT NOT NULL DEFAULT 0,
	stored_size BIGINT NOT NULL DEFAULT 0,
	PRIMARY KEY (contract, name));
CREATE TABLE owners (
	contract TEXT NOT NULL, name TEXT NOT NULL, issuer TEXT NOT NULL, seq BIGINT NOT NULL,
	PRIMARY KEY (contract, name));
CREATE TABLE revoked_keys (
	contract TEXT NOT NULL, issuer TEXT NOT NULL, kid TEXT NOT NULL, seq BIGINT NOT NULL,
	PRIMARY KEY (contract, issuer, kid));
CREATE TABLE sidecar_keys (jkt TEXT PRIMARY KEY, jwk BYTEA NOT NULL,
	seen BIGINT NOT NULL DEFAULT 0, signed BIGINT NOT NULL DEFAULT 1);
CREATE TABLE proof_ids (jti TEXT PRIMARY KEY, exp BIGINT NOT NULL);
CREATE INDEX proof_ids_exp ON proof_ids (exp);
CREATE TABLE metering_events (
	contract TEXT NOT NULL, sender TEXT NOT NULL, id TEXT NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL,
	outcome TEXT NOT NULL, licensee TEXT NOT NULL,
	bytes BIGINT NOT NULL, samples BIGINT NOT NULL, units BIGINT NOT NULL, cost BIGINT NOT NULL,
	epoch BIGINT NOT NULL, job TEXT NOT NULL,
	PRIMARY KEY (contract, sender, id));
CREATE TABLE metering_sums (
	contract TEXT PRIMARY KEY, samples BIGINT NOT NULL, bytes BIGINT NOT NULL,
	units BIGINT NOT NULL, cost BIGINT NOT NULL);
CREATE TABLE enrolments (
	contract_id TEXT NOT NULL, jkt TEXT NOT NULL, licensee TEXT NOT NULL, expires BIGINT NOT NULL, jws TEXT NOT NULL,
	PRIMARY KEY (contract_id, jkt));
CREATE TABLE leases (
	id TEXT PRIMARY KEY, contract_id TEXT NOT NULL, licensee TEXT NOT NULL, jkt TEXT NOT NULL,
	max_samples BIGINT NOT NULL, max_bytes BIGINT NOT NULL, created BIGINT NOT NULL, expires BIGINT NOT NULL,
	presigned_samples BIGINT NOT NULL DEFAULT 0, presigned_bytes BIGINT NOT NULL DEFAULT 0,
	metered_samples BIGINT NOT NULL DEFAULT 0, metered_bytes BIGINT NOT NULL DEFAULT 0);
CREATE INDEX leases_holder ON leases (contract_id, licensee, jkt, expires);
CREATE TABLE lease_objects (
	lease TEXT NOT NULL, name TEXT NOT NULL, size BIGINT NOT NULL,
	PRIMARY KEY (lease, name));
CREATE TABLE idempotency (
	contract TEXT NOT NULL, key TEXT NOT NULL, body_hash TEXT NOT NULL, response BYTEA NOT NULL,
	PRIMARY KEY (contract, key));
`, nil},
	{2, "witness cosignatures", `
CREATE TABLE witness_cosigs (
	contract TEXT NOT NULL, witness TEXT NOT NULL, size BIGINT NOT NULL, body TEXT NOT NULL, line TEXT NOT NULL,
	PRIMARY KEY (contract, witness));
`, nil},
	// Aggregate metering (aggregate.go's aggregateSchema): counted seq
	// ranges of each sender's ledger, their sums by key, and the ledger
	// seqs of events counted one by one, backfilled from metering_events.
	// A range counts once: its insertion runs in the log transaction
	// (under the contract's advisory lock, after the overlap check), and
	// the primary key refuses a second range from the same row.
	{3, "metering aggregates", `
CREATE TABLE metering_ranges (
	contract TEXT NOT NULL, sender TEXT NOT NULL, ledger TEXT NOT NULL,
	after_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL, count BIGINT NOT NULL, root BYTEA NOT NULL,
	seq BIGINT NOT NULL,
	PRIMARY KEY (contract, sender, ledger, after_seq),
	CHECK (last_seq > after_seq));
CREATE TABLE metering_aggregates (
	contract TEXT NOT NULL, sender TEXT NOT NULL, ledger TEXT NOT NULL, after_seq BIGINT NOT NULL, idx BIGINT NOT NULL,
	seq BIGINT NOT NULL, licensee TEXT NOT NULL, lease TEXT NOT NULL, kind TEXT NOT NULL, outcome TEXT NOT NULL,
	job TEXT NOT NULL, epoch BIGINT NOT NULL, terms_seq BIGINT NOT NULL, events BIGINT NOT NULL,
	samples BIGINT NOT NULL, bytes BIGINT NOT NULL, units BIGINT NOT NULL, cost BIGINT NOT NULL,
	PRIMARY KEY (contract, sender, ledger, after_seq, idx),
	FOREIGN KEY (contract, sender, ledger, after_seq) REFERENCES metering_ranges);
CREATE INDEX metering_aggregates_job ON metering_aggregates (contract, job, epoch);
CREATE TABLE metering_event_seqs (
	contract TEXT NOT NULL, sender TEXT NOT NULL, ledger TEXT NOT NULL, lseq BIGINT NOT NULL,
	PRIMARY KEY (contract, sender, ledger, lseq));
`, backfillEventSeqs},
	// Batch attestations (batch.go's batchManifestsTable): manifests by
	// digest, written in the log transaction that appends their entry.
	{4, "batch manifests", `
CREATE TABLE batch_manifests (
	contract TEXT NOT NULL, sha256 TEXT NOT NULL, body BYTEA NOT NULL,
	PRIMARY KEY (contract, sha256));
`, nil},
}

// pgMigrationsLock names the advisory lock that migrations run under, so
// that replicas starting together migrate one after the other (the later
// ones find nothing to do).
const pgMigrationsLock = "provgate registry schema migrations"

// migratePostgres applies the migrations the database lacks, in one
// transaction (PostgreSQL's DDL is transactional: a failed step leaves the
// schema as it was) holding pgMigrationsLock. A database migrated by a
// newer registry is refused: this one does not know its schema.
func migratePostgres(ctx context.Context, db *sql.DB) error {
	return migratePostgresTo(ctx, db, pgMigrations)
}

// migratePostgresTo applies migrations, the first steps of pgMigrations
// (a test leaves a database as an older registry did).
func migratePostgresTo(ctx context.Context, db *sql.DB, migrations []pgMigration) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, pgMigrationsLock); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied TIMESTAMPTZ NOT NULL DEFAULT now())`); err != nil {
		return err
	}
	var have sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&have); err != nil {
		return err
	}
	latest := migrations[len(migrations)-1].version
	if int(have.Int64) > latest {
		return fmt.Errorf("the database's schema is at version %d, newer than this registry's %d: upgrade the registry", have.Int64, latest)
	}
	for _, m := range migrations {
		if m.version <= int(have.Int64) {
			continue
		}
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return fmt.Errorf("migration %d (%s): %w", m.version, m.name, err)
		}
		if m.then != nil {
			if err := m.then(ctx, &sqlTx{d: &sqlDB{d: dialectPostgres}, tx: tx}); err != nil {
				return fmt.Errorf("migration %d (%s): %w", m.version, m.name, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.version, m.name); err != nil {
			if isUnique(err) {
				return errors.New("schema_migrations changed under the migration lock")
			}
			return err
		}
	}
	return tx.Commit()
}
