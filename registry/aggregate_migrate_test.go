package registry

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
)

// oldEvents are events an older registry counted one by one: one whose id
// names ledger L's row 7, one whose id names no row.
const oldEvents = `INSERT INTO metering_events (contract, sender, id, seq, kind, outcome, licensee, bytes, samples, units, cost, epoch, job)
	VALUES ('c1', 'jkt', 'L-7', 1, 'access', 'served', '', 1, 1, 1, 500, 0, ''), ('c1', 'jkt', 'not-a-seq-x', 1, 'access', 'served', '', 1, 1, 1, 500, 0, '')`

// A database written before aggregate batches opens with the ledger seqs
// of the events it counted one by one, so that an aggregate over rows
// already counted as events is refused.
func TestMigrateMarksEventSeqs(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "reg.db")
	st, err := openSQLite(ctx, path, true)
	if err != nil {
		t.Fatal(err)
	}
	// As an older registry left it: events, no aggregate tables.
	for _, q := range []string{
		oldEvents,
		`DROP TABLE metering_event_seqs`, `DROP TABLE metering_ranges`, `DROP TABLE metering_aggregates`,
		`DELETE FROM meta WHERE k = 'metering_aggregates_schema'`,
	} {
		if _, err := st.db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	st.close()
	st, err = openSQLite(ctx, path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	checkEventSeqsMarked(t, st)
}

// The same on PostgreSQL: a database at schema version 2 (before
// aggregates) with events gets migration 3, whose backfill marks them.
func TestPostgresMigrateMarksEventSeqs(t *testing.T) {
	ctx := context.Background()
	url := testenv.Postgres(t).NewDatabase(t)
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	if err := migratePostgresTo(ctx, db, pgMigrations[:2]); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, oldEvents); err != nil {
		t.Fatal(err)
	}
	db.Close()
	st, err := openStore(ctx, url, true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	var version int
	if err := st.db.QueryRowContext(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&version); err != nil || version != len(pgMigrations) {
		t.Fatalf("schema version %d, %v; want %d", version, err, len(pgMigrations))
	}
	checkEventSeqsMarked(t, st)
}

// checkEventSeqsMarked checks that oldEvents' L-7 is a counted row of L.
func checkEventSeqsMarked(t *testing.T, st *sqlStore) {
	t.Helper()
	ctx := context.Background()
	p, err := st.countedRange(ctx, "c1", "jkt", &contract.RowCommitment{Ledger: "L", AfterSeq: 5, LastSeq: 10, Count: 5})
	if err != nil || !p.Legacy || p.LastSeq != 7 {
		t.Errorf("range (5, 10] of ledger L: %+v, %v; want event L-7 found", p, err)
	}
	if _, err := st.countedRange(ctx, "c1", "jkt", &contract.RowCommitment{Ledger: "L", AfterSeq: 7, LastSeq: 10, Count: 3}); !errors.Is(err, errNotFound) {
		t.Errorf("range (7, 10]: %v, want none counted", err)
	}
	if _, err := st.countedRange(ctx, "c1", "other", &contract.RowCommitment{Ledger: "L", AfterSeq: 5, LastSeq: 10, Count: 5}); !errors.Is(err, errNotFound) {
		t.Errorf("another sender's range: %v, want none counted", err)
	}
}
