package registry

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/provgate/provgate/internal/testenv"
)

// backends runs a store test on each database the registry supports: a
// fresh SQLite file and a fresh PostgreSQL database of the test binary's
// cluster.
func backends(t *testing.T, test func(t *testing.T, st *sqlStore)) {
	t.Helper()
	backendURLs(t, func(t *testing.T, db string) {
		st, err := openStore(context.Background(), db, true)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.close() })
		test(t, st)
	})
}

// backendURLs runs a test on a fresh database of each kind, given as the
// registry's DBPath, for tests that open it several times (replicas).
func backendURLs(t *testing.T, test func(t *testing.T, db string)) {
	t.Helper()
	for _, b := range []struct {
		name string
		open func(t *testing.T) string
	}{
		{"sqlite", func(t *testing.T) string { return filepath.Join(t.TempDir(), "r.db") }},
		{"postgres", func(t *testing.T) string { return testenv.Postgres(t).NewDatabase(t) }},
	} {
		t.Run(b.name, func(t *testing.T) { test(t, b.open(t)) })
	}
}
