package testenv_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/provgate/provgate/internal/testenv"
)

// TestPostgresStarts: the throwaway cluster answers SQL on its port, and
// each NewDatabase is a fresh, separate database.
func TestPostgresStarts(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := context.Background()
	a, b := pg.NewDatabase(t), pg.NewDatabase(t)
	if a == b {
		t.Fatalf("two databases share the URL %s", a)
	}
	dba, err := sql.Open("pgx", a)
	if err != nil {
		t.Fatal(err)
	}
	defer dba.Close()
	if _, err := dba.ExecContext(ctx, `CREATE TABLE x (v INT); INSERT INTO x VALUES (42)`); err != nil {
		t.Fatal(err)
	}
	dbb, err := sql.Open("pgx", b)
	if err != nil {
		t.Fatal(err)
	}
	defer dbb.Close()
	var n int
	if err := dbb.QueryRowContext(ctx, `SELECT COUNT(*) FROM pg_tables WHERE tablename = 'x'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("second database sees the first's table: %d, %v", n, err)
	}
	if err := dba.QueryRowContext(ctx, `SELECT v FROM x`).Scan(&n); err != nil || n != 42 {
		t.Fatalf("read back: %d, %v", n, err)
	}
}
