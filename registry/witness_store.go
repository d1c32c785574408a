package registry

import (
	"context"
	"database/sql"
	"errors"
)

// witnessStore keeps the latest cosignature of each witness for each log.
type witnessStore interface {
	initWitnessTables(ctx context.Context) error
	putCosignature(ctx context.Context, contractID, witness string, size uint64, body, line string) error
	cosignatures(ctx context.Context, contractID string) ([]cosigRow, error)
	cosignedSize(ctx context.Context, contractID, witness string) (uint64, error)
}

var _ witnessStore = (*sqliteStore)(nil)

type cosigRow struct {
	Witness, Body, Line string
}

func (s *sqliteStore) initWitnessTables(ctx context.Context) error {
	if s.db.d == dialectPostgres {
		return nil // a versioned migration made it
	}
	_, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS witness_cosigs (
		contract TEXT NOT NULL, witness TEXT NOT NULL, size INTEGER NOT NULL, body TEXT NOT NULL, line TEXT NOT NULL,
		PRIMARY KEY (contract, witness)) WITHOUT ROWID`)
	return err
}

// putCosignature keeps a witness's cosignature of a log unless one of a
// larger size is kept already (another replica may have stored a newer one
// while this one waited for the witness).
func (s *sqliteStore) putCosignature(ctx context.Context, contractID, witness string, size uint64, body, line string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO witness_cosigs (contract, witness, size, body, line) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (contract, witness) DO UPDATE SET size = excluded.size, body = excluded.body, line = excluded.line
		WHERE excluded.size >= witness_cosigs.size`,
		contractID, witness, size, body, line)
	return err
}

func (s *sqliteStore) cosignatures(ctx context.Context, contractID string) ([]cosigRow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT witness, body, line FROM witness_cosigs WHERE contract = ? ORDER BY witness`, contractID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []cosigRow
	for rows.Next() {
		var r cosigRow
		if err := rows.Scan(&r.Witness, &r.Body, &r.Line); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func (s *sqliteStore) cosignedSize(ctx context.Context, contractID, witness string) (uint64, error) {
	var size uint64
	err := s.db.QueryRowContext(ctx, `SELECT size FROM witness_cosigs WHERE contract = ? AND witness = ?`, contractID, witness).Scan(&size)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return 0, err
	}
	return size, nil
}
