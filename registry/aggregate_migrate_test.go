package registry

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/provgate/provgate/contract"
)

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
		`INSERT INTO metering_events (contract, sender, id, seq, kind, outcome, licensee, bytes, samples, units, cost, epoch, job)
			VALUES ('c1', 'jkt', 'L-7', 1, 'access', 'served', '', 1, 1, 1, 500, 0, ''), ('c1', 'jkt', 'not-a-seq-x', 1, 'access', 'served', '', 1, 1, 1, 500, 0, '')`,
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
