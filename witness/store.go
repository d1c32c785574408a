package witness

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	_ "github.com/mattn/go-sqlite3" // database/sql driver
)

// logState is the last checkpoint cosigned for one log.
type logState struct {
	Origin string
	Size   uint64
	Root   []byte
	Note   []byte
}

type store struct{ db *sql.DB }

const schema = `
CREATE TABLE IF NOT EXISTS logs (
	origin TEXT PRIMARY KEY, origin_hash TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,
	root BLOB NOT NULL, note BLOB NOT NULL, updated INTEGER NOT NULL);`

func openStore(ctx context.Context, path string) (*store, error) {
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_synchronous=FULL&_busy_timeout=5000&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

// get returns the state of a log; a log never cosigned has size 0.
func (s *store) get(ctx context.Context, origin string) (logState, error) {
	st := logState{Origin: origin}
	err := s.db.QueryRowContext(ctx, `SELECT size, root, note FROM logs WHERE origin = ?`, origin).Scan(&st.Size, &st.Root, &st.Note)
	if errors.Is(err, sql.ErrNoRows) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("load %q: %w", origin, err)
	}
	return st, nil
}

func (s *store) byHash(ctx context.Context, hash string) (*logState, error) {
	var st logState
	err := s.db.QueryRowContext(ctx, `SELECT origin, size, root, note FROM logs WHERE origin_hash = ?`, hash).
		Scan(&st.Origin, &st.Size, &st.Root, &st.Note)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", hash, err)
	}
	return &st, nil
}

// put records a new cosigned checkpoint, durably, before it is answered.
func (s *store) put(ctx context.Context, st logState) error {
	_, err := s.db.ExecContext(context.WithoutCancel(ctx), `INSERT INTO logs (origin, origin_hash, size, root, note, updated) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root, note = excluded.note, updated = excluded.updated`,
		st.Origin, OriginHash(st.Origin), st.Size, st.Root, st.Note, time.Now().UnixNano())
	if err != nil {
		return fmt.Errorf("store %q: %w", st.Origin, err)
	}
	return nil
}
