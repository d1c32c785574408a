package verify

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
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
	db *sql.DB
}

const schema = `
CREATE TABLE IF NOT EXISTS logs (
	contract   TEXT PRIMARY KEY,
	state      BLOB NOT NULL,
	checkpoint BLOB NOT NULL,
	quarantine TEXT NOT NULL DEFAULT '',
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
);
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

// OpenStore opens (creating if needed) the state database at path.
func OpenStore(path string) (*Store, error) {
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_synchronous=FULL&_busy_timeout=5000&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	var hadOwners int
	if err := db.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'owners'`).Scan(&hadOwners); err != nil {
		db.Close()
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	if _, err := db.Exec(schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	if hadOwners == 0 {
		// A state from before names had owners: each live name is taken to
		// belong to the issuer of its current version.
		if _, err := db.Exec(`INSERT OR IGNORE INTO owners (contract, name, issuer, seq) SELECT contract, name, issuer, seq FROM manifest`); err != nil {
			db.Close()
			return nil, fmt.Errorf("open state %s: owners: %w", path, err)
		}
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

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

// trusted is a contract's persisted state.
type trusted struct {
	state      LogState
	checkpoint []byte
	quarantine string
	manifest   *Manifest
	revs       map[revKey]revocation
	terms      []TermsVersion // as stored: checked again on load
}

// load reads a contract's state; nil when there is none.
func (s *Store) load(ctx context.Context, contractID string) (*trusted, error) {
	var stateJSON, cp []byte
	var q string
	err := s.db.QueryRowContext(ctx, "SELECT state, checkpoint, quarantine FROM logs WHERE contract = ?", contractID).Scan(&stateJSON, &cp, &q)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	t := &trusted{checkpoint: cp, quarantine: q, manifest: newManifest(), revs: map[revKey]revocation{}}
	if err := json.Unmarshal(stateJSON, &t.state); err != nil {
		return nil, fmt.Errorf("%w: log state: %v", ErrState, err)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT name, seq, issuer, kid, stored_sha256, stored_size, encoding,
		decoded_sha256, decoded_size, license, media_type FROM manifest WHERE contract = ?`, contractID)
	if err != nil {
		return nil, fmt.Errorf("load manifest: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		e := new(ManifestEntry)
		if err := rows.Scan(&e.Name, &e.Seq, &e.Issuer, &e.KeyID, &e.StoredSHA256, &e.StoredSize, &e.Encoding,
			&e.DecodedSHA256, &e.DecodedSize, &e.License, &e.MediaType); err != nil {
			return nil, fmt.Errorf("%w: manifest: %v", ErrState, err)
		}
		t.manifest.objects[e.Name] = e
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load manifest: %w", err)
	}
	rows.Close()
	rrows, err := s.db.QueryContext(ctx, "SELECT name, seq FROM redactions WHERE contract = ?", contractID)
	if err != nil {
		return nil, fmt.Errorf("load redactions: %w", err)
	}
	defer rrows.Close()
	for rrows.Next() {
		var name string
		var seq uint64
		if err := rrows.Scan(&name, &seq); err != nil {
			return nil, fmt.Errorf("load redactions: %w", err)
		}
		t.manifest.redacted[name] = seq
	}
	if err := rrows.Err(); err != nil {
		return nil, fmt.Errorf("load redactions: %w", err)
	}
	orows, err := s.db.QueryContext(ctx, "SELECT name, issuer, seq FROM owners WHERE contract = ?", contractID)
	if err != nil {
		return nil, fmt.Errorf("load owners: %w", err)
	}
	defer orows.Close()
	for orows.Next() {
		var name string
		var o owner
		if err := orows.Scan(&name, &o.Issuer, &o.Seq); err != nil {
			return nil, fmt.Errorf("load owners: %w", err)
		}
		t.manifest.owners[name] = o
	}
	if err := orows.Err(); err != nil {
		return nil, fmt.Errorf("load owners: %w", err)
	}
	orows.Close()
	vrows, err := s.db.QueryContext(ctx, "SELECT issuer, kid, seq, retroactive FROM revocations WHERE contract = ?", contractID)
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
	trows, err := s.db.QueryContext(ctx, "SELECT seq, time, note FROM terms WHERE contract = ? ORDER BY seq", contractID)
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

// commit stores a verified sync atomically: the new log state and
// checkpoint, and the manifest delta.
func (s *Store) commit(ctx context.Context, contractID string, st LogState, cp []byte, d *delta) error {
	stateJSON, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("commit state: %w", err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("commit state: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO logs (contract, state, checkpoint, updated) VALUES (?, ?, ?, ?)
		ON CONFLICT (contract) DO UPDATE SET state = excluded.state, checkpoint = excluded.checkpoint, updated = excluded.updated`,
		contractID, stateJSON, cp, time.Now().Unix()); err != nil {
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
	return nil
}

func commitDelta(ctx context.Context, tx *sql.Tx, contractID string, d *delta) error {
	put, err := tx.PrepareContext(ctx, `INSERT OR REPLACE INTO manifest (contract, name, seq, issuer, kid, stored_sha256,
		stored_size, encoding, decoded_sha256, decoded_size, license, media_type) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	defer put.Close()
	del, err := tx.PrepareContext(ctx, "DELETE FROM manifest WHERE contract = ? AND name = ?")
	if err != nil {
		return err
	}
	defer del.Close()
	for name, e := range d.objects {
		if e == nil {
			_, err = del.ExecContext(ctx, contractID, name)
		} else {
			_, err = put.ExecContext(ctx, contractID, name, e.Seq, e.Issuer, e.KeyID, e.StoredSHA256, e.StoredSize, e.Encoding,
				e.DecodedSHA256, e.DecodedSize, e.License, e.MediaType)
		}
		if err != nil {
			return err
		}
	}
	for name, seq := range d.redacted {
		if seq == 0 {
			_, err = tx.ExecContext(ctx, "DELETE FROM redactions WHERE contract = ? AND name = ?", contractID, name)
		} else {
			_, err = tx.ExecContext(ctx, "INSERT OR REPLACE INTO redactions (contract, name, seq) VALUES (?, ?, ?)", contractID, name, seq)
		}
		if err != nil {
			return err
		}
	}
	for name, o := range d.owners {
		if _, err := tx.ExecContext(ctx, "INSERT OR IGNORE INTO owners (contract, name, issuer, seq) VALUES (?, ?, ?, ?)",
			contractID, name, o.Issuer, o.Seq); err != nil {
			return err
		}
	}
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
