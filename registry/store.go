package registry

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strings"
	"time"

	"github.com/transparency-dev/merkle/compact"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// store is the registry's persistence: contracts, signing keys, and one
// append-only log per contract with its Merkle nodes and side tables.
// sqlStore implements it over SQLite (one machine) and PostgreSQL (several
// replicas); the server runs each log's writers in Server.withLog, one
// transaction under the log's lock, and a store makes each call atomic and
// durable.
type store interface {
	meta(ctx context.Context, key string) (string, error)
	setMeta(ctx context.Context, key, value string) error
	// initMeta sets key to value unless it is set, and returns the value
	// it holds: of several replicas starting together, one value wins.
	initMeta(ctx context.Context, key, value string) (string, error)

	signingKeys(ctx context.Context) ([]signingKey, error)
	addSigningKey(ctx context.Context, k signingKey, retireAt time.Time) error

	createContract(ctx context.Context, id string, body []byte, etag string, created time.Time) error
	contract(ctx context.Context, id string) (body []byte, etag string, err error)
	termsEntries(ctx context.Context, contractID string) ([][]byte, error)
	contracts(ctx context.Context) ([][]byte, error)

	logSize(ctx context.Context, contractID string) (uint64, error)
	// entries returns up to limit entries after since, stopping before
	// the one that would take their bytes past maxBytes (but always
	// returning at least one when there is one).
	entries(ctx context.Context, contractID string, since uint64, limit, maxBytes int) ([]contract.WireEntry, error)
	nodes(ctx context.Context, contractID string, ids []compact.NodeID) ([][]byte, error)
	appendEntry(ctx context.Context, contractID string, rec *appendRecord) error

	// addCheckpoint stores a checkpoint note signed at at; a checkpoint of
	// a size signed before with another body (origin, size, root) is
	// refused (errCorrupted): the log never forks, whatever replica signs.
	addCheckpoint(ctx context.Context, contractID string, size uint64, at time.Time, note []byte) error
	latestCheckpoint(ctx context.Context, contractID string) ([]byte, error)
	checkpointAt(ctx context.Context, contractID string, at time.Time) ([]byte, error)

	object(ctx context.Context, contractID, name string) (*objectRow, error)
	owner(ctx context.Context, contractID, name string) (issuer string, since uint64, err error)
	// owners returns who owns each of names that has an owner.
	owners(ctx context.Context, contractID string, names []string) (map[string]ownerRow, error)
	// manifest returns a batch manifest's bytes by their sha256.
	manifest(ctx context.Context, contractID, sha256Hex string) ([]byte, error)
	revoked(ctx context.Context, contractID, issuer, kid string) (bool, error)
	attestationSeen(ctx context.Context, contractID, issuer, jti string) (bool, error)

	sidecarKey(ctx context.Context, jkt string) ([]byte, error)
	putSidecarKey(ctx context.Context, jkt string, jwk []byte) error
	pruneSidecarKeys(ctx context.Context, before time.Time) (int64, error)
	useProofID(ctx context.Context, jti string, exp time.Time) error
	pruneProofIDs(ctx context.Context, before time.Time) error
	presign(ctx context.Context, leaseID string, objects []*objectRow) error

	putEnrolment(ctx context.Context, contractID, jkt, licensee string, expires time.Time, jws string) error
	// enrolment is the licensee that enrolled the sidecar key jkt for the
	// contract, and until when; errNotFound when none did.
	enrolment(ctx context.Context, contractID, jkt string) (licensee string, expires time.Time, err error)
	grantLease(ctx context.Context, req *leaseRequest) (*leaseRow, error)
	// presignedTotals counts the distinct objects presigned for the
	// contract (for one licensee when licensee is not empty) and their
	// stored bytes, over every lease.
	presignedTotals(ctx context.Context, contractID, licensee string) (samples, bytes int64, err error)

	// knownEvents returns which of ids the sender (a sidecar key
	// thumbprint) already sent for the contract, one by one or inside a
	// range an aggregate batch counted.
	knownEvents(ctx context.Context, contractID, sender string, ids []string) (map[string]bool, error)
	// countedRange returns a range of the sender's ledger rows already
	// counted that overlaps rows (errNotFound when none): an aggregate
	// batch's, or an event counted one by one (Legacy).
	countedRange(ctx context.Context, contractID, sender string, rows *contract.RowCommitment) (*countedRange, error)
	// senderLeases returns which of the lease ids are leases of sender
	// under the contract.
	senderLeases(ctx context.Context, contractID, sender string, ids []string) (map[string]bool, error)
	// meteringSums are the sums of every event counted for the contract;
	// appendEntry refuses events that would make them overflow.
	meteringSums(ctx context.Context, contractID string) (contract.Sums, error)
	idempotent(ctx context.Context, contractID, key string) (bodyHash string, response []byte, err error)
	putIdempotent(ctx context.Context, contractID, key, bodyHash string, response []byte) error
	meteringTotals(ctx context.Context, contractID string, f contract.TotalsFilter) (*contract.MeteringReport, error)

	// inLogTx runs fn holding the log lock of contractID, in one
	// transaction that fn's store calls join through its context (see
	// sqlDB.inLogTx).
	inLogTx(ctx context.Context, contractID string, fn func(ctx context.Context) error) error

	close() error
}

var _ store = (*sqlStore)(nil)

// Store errors.
var (
	errNotFound  = errors.New("not found")
	errExists    = errors.New("already exists")
	errReplay    = errors.New("proof already used")
	errQuota     = errors.New("quota exceeded")
	errConflict  = errors.New("conflict")
	errCorrupted = errors.New("storage corrupted")
	errOverflow  = errors.New("amount out of range")
)

type signingKey struct {
	KeyID   string
	JWK     []byte // private JWK JSON
	Created time.Time
	Retired time.Time // zero: active
}

type objectRow struct {
	Name       string
	Seq        uint64
	Redacted   uint64 // seq of the redaction, 0 if live
	StoredSize int64
}

// appendRecord is everything one append writes, in one transaction: the
// entry, its Merkle nodes, the checkpoint signed over the new size, and the
// side effects of the entry's kind.
type appendRecord struct {
	Seq   uint64
	Entry []byte
	Time  time.Time
	Nodes map[compact.NodeID][]byte

	CheckpointNote []byte

	// Attestation side effects.
	Issuer, JTI string
	Object      *contract.ObjectClaim // contribution or transformation
	// Batch lists a batch's objects; Manifest is its bytes, stored under
	// ManifestSHA256.
	Batch          []contract.ObjectClaim
	Manifest       []byte
	ManifestSHA256 string
	Redact         string // redaction: object name
	RevokeKID      string // revocation

	// Metering side effects: the new events, from Sender (a sidecar key
	// thumbprint), attributed to Licensee.
	Events   []contract.MeteringEvent
	Sender   string
	Licensee string
	// Lease is the quota lease of the token the batch came with; its
	// access events' samples and bytes are added to the lease's metered
	// use (what a dead lease is charged, with what it presigned).
	Lease        string
	IdemKey      string
	IdemBodyHash string
	IdemResponse []byte
	// Metering is the answer to the batch; appendLocked adds its receipt
	// and stores it as IdemResponse.
	Metering *contract.MeteringResponse
	// Aggregate is an aggregate batch's rows and sums (instead of Events).
	Aggregate *aggregateRecord

	// Terms side effect: the contract document (with its terms_seq) that
	// GET /contracts/{id} serves from now on.
	ContractBody []byte
	ContractETag string
}

// sqlStore is the store on SQLite (one registry process) or PostgreSQL
// (several replicas on one database). Its methods are shared: the queries
// are written once with ? placeholders, which sqlDB adapts; what differs
// (schema types, migrations, locks) is in openSQLite and openPostgres.
type sqlStore struct {
	db  *sqlDB
	now func() time.Time
}

// sqliteStore is the name the store's methods were first written on.
type sqliteStore = sqlStore

const schema = `
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signing_keys (
	kid TEXT PRIMARY KEY, jwk BLOB NOT NULL, created INTEGER NOT NULL, retired INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS contracts (
	id TEXT PRIMARY KEY, body BLOB NOT NULL, etag TEXT NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS terms_versions (
	contract TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (contract, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
	contract TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL, time INTEGER NOT NULL,
	PRIMARY KEY (contract, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (
	contract TEXT NOT NULL, level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
	PRIMARY KEY (contract, level, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
	contract TEXT NOT NULL, time INTEGER NOT NULL, size INTEGER NOT NULL, note BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS checkpoints_time ON checkpoints (contract, time);
CREATE INDEX IF NOT EXISTS checkpoints_size ON checkpoints (contract, size, time);
CREATE TABLE IF NOT EXISTS checkpoint_bodies (
	contract TEXT NOT NULL, size INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (contract, size)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attestations (
	contract TEXT NOT NULL, issuer TEXT NOT NULL, jti TEXT NOT NULL, seq INTEGER NOT NULL,
	PRIMARY KEY (contract, issuer, jti)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
	contract TEXT NOT NULL, name TEXT NOT NULL, seq INTEGER NOT NULL, redacted INTEGER NOT NULL DEFAULT 0,
	stored_size INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (contract, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (
	contract TEXT NOT NULL, name TEXT NOT NULL, issuer TEXT NOT NULL, seq INTEGER NOT NULL,
	PRIMARY KEY (contract, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS revoked_keys (
	contract TEXT NOT NULL, issuer TEXT NOT NULL, kid TEXT NOT NULL, seq INTEGER NOT NULL,
	PRIMARY KEY (contract, issuer, kid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sidecar_keys (jkt TEXT PRIMARY KEY, jwk BLOB NOT NULL,
	seen INTEGER NOT NULL DEFAULT 0, signed INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS proof_ids (jti TEXT PRIMARY KEY, exp INTEGER NOT NULL) WITHOUT ROWID;
` + meteringEventsTable + `
` + batchManifestsTable + `
CREATE TABLE IF NOT EXISTS metering_sums (
	contract TEXT PRIMARY KEY, samples INTEGER NOT NULL, bytes INTEGER NOT NULL,
	units INTEGER NOT NULL, cost INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS enrolments (
	contract_id TEXT NOT NULL, jkt TEXT NOT NULL, licensee TEXT NOT NULL, expires INTEGER NOT NULL, jws TEXT NOT NULL,
	PRIMARY KEY (contract_id, jkt)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
	id TEXT PRIMARY KEY, contract_id TEXT NOT NULL, licensee TEXT NOT NULL, jkt TEXT NOT NULL,
	max_samples INTEGER NOT NULL, max_bytes INTEGER NOT NULL, created INTEGER NOT NULL, expires INTEGER NOT NULL,
	presigned_samples INTEGER NOT NULL DEFAULT 0, presigned_bytes INTEGER NOT NULL DEFAULT 0,
	metered_samples INTEGER NOT NULL DEFAULT 0, metered_bytes INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS leases_holder ON leases (contract_id, licensee, jkt, expires);
CREATE TABLE IF NOT EXISTS lease_objects (
	lease TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL,
	PRIMARY KEY (lease, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
	contract TEXT NOT NULL, key TEXT NOT NULL, body_hash TEXT NOT NULL, response BLOB NOT NULL,
	PRIMARY KEY (contract, key)) WITHOUT ROWID;
`

// meteringEventsTable holds the counted events. An event id is unique per
// sender (the sidecar key that signed its batch), not per contract: a
// sender cannot claim the ids of another.
const meteringEventsTable = `CREATE TABLE IF NOT EXISTS metering_events (
	contract TEXT NOT NULL, sender TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
	outcome TEXT NOT NULL, licensee TEXT NOT NULL,
	bytes INTEGER NOT NULL, samples INTEGER NOT NULL, units INTEGER NOT NULL, cost INTEGER NOT NULL,
	epoch INTEGER NOT NULL, job TEXT NOT NULL,
	PRIMARY KEY (contract, sender, id)) WITHOUT ROWID;`

func openSQLite(ctx context.Context, path string, relaxed bool) (*sqliteStore, error) {
	q := url.Values{}
	q.Set("_journal_mode", "WAL")
	q.Set("_synchronous", "FULL")
	if relaxed {
		q.Set("_synchronous", "NORMAL")
	}
	q.Set("_busy_timeout", "10000")
	q.Set("_txlock", "immediate")
	q.Set("_foreign_keys", "on")
	db, err := sql.Open("sqlite3", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	var hadOwners int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'owners'`).Scan(&hadOwners); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if _, err := db.ExecContext(ctx, schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: schema: %w", path, err)
	}
	if err := migrate(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: migrate: %w", path, err)
	}
	if err := migrateAggregates(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: metering aggregates: %w", path, err)
	}
	if hadOwners == 0 {
		if err := backfillOwners(ctx, db); err != nil {
			db.Close()
			return nil, fmt.Errorf("open %s: owners: %w", path, err)
		}
	}
	// Keys stored before pruning existed count as signers: kept.
	for _, col := range []string{"seen INTEGER NOT NULL DEFAULT 0", "signed INTEGER NOT NULL DEFAULT 1"} {
		if err := addColumn(ctx, db, "sidecar_keys", col); err != nil {
			db.Close()
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
	}
	return &sqliteStore{db: &sqlDB{db: db, d: dialectSQLite}, now: time.Now}, nil
}

// migrate brings a database written by an older registry up to the
// schema: metering events are keyed by sender. (An old presigned table,
// counted per token, is left as it is: quota leases count from now on.)
func migrate(ctx context.Context, db *sql.DB) error {
	has, err := hasColumn(ctx, db, "metering_events", "sender")
	if err != nil || has {
		return err
	}
	return migrateMeteringEvents(ctx, db)
}

func hasColumn(ctx context.Context, db *sql.DB, table, col string) (bool, error) {
	var n int
	err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?`, table, col).Scan(&n)
	return n > 0, err
}

// migrateMeteringEvents rebuilds metering_events keyed by (contract,
// sender, id). An old row's sender and outcome are read from the batch of
// the log entry that counted it (the registry verified its signature when
// it appended it); its licensee is unknown (""). The contract's sums are
// recomputed; sums that overflow (amounts forged before the registry
// checked them) are pinned at the maximum, so that the contract takes no
// more metering until an operator looks.
func migrateMeteringEvents(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `ALTER TABLE metering_events RENAME TO metering_events_v1`); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, meteringEventsTable); err != nil {
		return err
	}
	rows, err := tx.QueryContext(ctx, `SELECT m.contract, m.id, m.kind, m.bytes, m.samples, m.units, m.cost, m.epoch, m.job, m.seq, e.body
		FROM metering_events_v1 m LEFT JOIN entries e ON e.contract = m.contract AND e.seq = m.seq ORDER BY m.contract, m.seq`)
	if err != nil {
		return err
	}
	type row struct {
		contract, id, kind, job, sender, outcome string
		bytes, samples, units, cost, epoch       int64
		seq                                      uint64
	}
	var all []row
	batches := map[string]*contract.MeteringBatch{} // by contract and seq
	for rows.Next() {
		var r row
		var body []byte
		if err := rows.Scan(&r.contract, &r.id, &r.kind, &r.bytes, &r.samples, &r.units, &r.cost, &r.epoch, &r.job, &r.seq, &body); err != nil {
			rows.Close()
			return err
		}
		k := fmt.Sprint(r.contract, "\n", r.seq)
		if _, ok := batches[k]; !ok {
			batches[k] = entryBatch(body)
		}
		if b := batches[k]; b != nil {
			r.sender = b.Sidecar
			for _, e := range b.Events {
				if e.ID == r.id && e.Kind == contract.EventAccess {
					r.outcome = e.Outcome
					if r.outcome == "" {
						r.outcome = contract.OutcomeServed
					}
				}
			}
		}
		all = append(all, r)
	}
	if err := rows.Close(); err != nil {
		return err
	}
	sums := map[string]*contract.Sums{}
	pinned := map[string]bool{}
	for _, r := range all {
		if _, err := tx.ExecContext(ctx, `INSERT INTO metering_events (contract, sender, id, seq, kind, outcome, licensee,
			bytes, samples, units, cost, epoch, job) VALUES (?, ?, ?, ?, ?, ?, '', ?, ?, ?, ?, ?, ?)`,
			r.contract, r.sender, r.id, r.seq, r.kind, r.outcome, r.bytes, r.samples, r.units, r.cost, r.epoch, r.job); err != nil {
			return err
		}
		if sums[r.contract] == nil {
			sums[r.contract] = &contract.Sums{}
		}
		if !sums[r.contract].Add(contract.Sums{Samples: r.samples, Bytes: r.bytes, Units: r.units, CostNanoUSD: r.cost}) {
			pinned[r.contract] = true
		}
	}
	for id, s := range sums {
		if pinned[id] {
			*s = contract.Sums{Samples: math.MaxInt64, Bytes: math.MaxInt64, Units: math.MaxInt64, CostNanoUSD: math.MaxInt64}
		}
		if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO metering_sums (contract, samples, bytes, units, cost) VALUES (?, ?, ?, ?, ?)`,
			id, s.Samples, s.Bytes, s.Units, s.CostNanoUSD); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `DROP TABLE metering_events_v1`); err != nil {
		return err
	}
	return tx.Commit()
}

// entryBatch is the metering batch of a stored log entry, nil if the entry
// is not one.
func entryBatch(body []byte) *contract.MeteringBatch {
	var e contract.Entry
	if json.Unmarshal(body, &e) != nil || e.Kind != contract.EntryMetering {
		return nil
	}
	parts := strings.Split(e.JWS, ".")
	if len(parts) != 3 {
		return nil
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil
	}
	var b contract.MeteringBatch
	if json.Unmarshal(payload, &b) != nil {
		return nil
	}
	return &b
}

func (s *sqliteStore) close() error { return s.db.Close() }

func (s *sqliteStore) inLogTx(ctx context.Context, contractID string, fn func(ctx context.Context) error) error {
	return s.db.inLogTx(ctx, contractID, fn)
}

// addColumn adds a column (name and definition) to a table that lacks it.
func addColumn(ctx context.Context, db *sql.DB, table, def string) error {
	name, _, _ := strings.Cut(def, " ")
	var n int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?`, table, name).Scan(&n); err != nil {
		return fmt.Errorf("%s.%s: %w", table, name, err)
	}
	if n > 0 {
		return nil
	}
	if _, err := db.ExecContext(ctx, `ALTER TABLE `+table+` ADD COLUMN `+def); err != nil {
		return fmt.Errorf("%s.%s: %w", table, name, err)
	}
	return nil
}

// backfillOwners fills the owners table of a database made before names
// had owners: each name belongs to the issuer of its first contribution
// or transformation in the log. The entries were verified at append.
func backfillOwners(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, `SELECT contract, seq, body FROM entries ORDER BY contract, seq`)
	if err != nil {
		return err
	}
	type owned struct {
		contract, name, issuer string
		seq                    uint64
	}
	var found []owned
	for rows.Next() {
		var o owned
		var body []byte
		if err := rows.Scan(&o.contract, &o.seq, &body); err != nil {
			rows.Close()
			return err
		}
		e, err := contract.DecodeEntry(body)
		if err != nil || e.Kind != contract.EntryAttestation {
			continue
		}
		a, err := verify.AttestationUnverified(e.JWS)
		if err != nil || a.Object == nil {
			continue
		}
		o.name, o.issuer = a.Object.Name, a.Issuer
		found = append(found, o)
	}
	if err := rows.Close(); err != nil {
		return err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, o := range found {
		if _, err := tx.ExecContext(ctx, `INSERT INTO owners (contract, name, issuer, seq) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING`,
			o.contract, o.name, o.issuer, o.seq); err != nil {
			return err
		}
	}
	return tx.Commit()
}

func (s *sqliteStore) meta(ctx context.Context, key string) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, `SELECT v FROM meta WHERE k = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", errNotFound
	}
	return v, err
}

func (s *sqliteStore) setMeta(ctx context.Context, key, value string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v`, key, value)
	return err
}

func (s *sqliteStore) initMeta(ctx context.Context, key, value string) (string, error) {
	if _, err := s.db.ExecContext(ctx, `INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING`, key, value); err != nil {
		return "", err
	}
	return s.meta(ctx, key)
}

func (s *sqliteStore) signingKeys(ctx context.Context) ([]signingKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT kid, jwk, created, retired FROM signing_keys ORDER BY created, kid`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []signingKey
	for rows.Next() {
		var k signingKey
		var created, retired int64
		if err := rows.Scan(&k.KeyID, &k.JWK, &created, &retired); err != nil {
			return nil, err
		}
		k.Created = time.Unix(0, created)
		if retired != 0 {
			k.Retired = time.Unix(0, retired)
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// addSigningKey makes k the active key (inserting it if new) and retires
// every other active key at retireAt.
func (s *sqliteStore) addSigningKey(ctx context.Context, k signingKey, retireAt time.Time) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `UPDATE signing_keys SET retired = ? WHERE retired = 0 AND kid != ?`, retireAt.UnixNano(), k.KeyID); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO signing_keys (kid, jwk, created, retired) VALUES (?, ?, ?, 0)
		ON CONFLICT (kid) DO UPDATE SET retired = 0`, k.KeyID, k.JWK, k.Created.UnixNano()); err != nil {
		return err
	}
	return tx.Commit()
}

func (s *sqliteStore) createContract(ctx context.Context, id string, body []byte, etag string, created time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO contracts (id, body, etag, created) VALUES (?, ?, ?, ?)`, id, body, etag, created.UnixNano())
	if isUnique(err) {
		return errExists
	}
	return err
}

func (s *sqliteStore) contract(ctx context.Context, id string) ([]byte, string, error) {
	var body []byte
	var etag string
	err := s.db.QueryRowContext(ctx, `SELECT body, etag FROM contracts WHERE id = ?`, id).Scan(&body, &etag)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, "", errNotFound
	}
	return body, etag, err
}

// termsEntries returns the log entries that hold the contract's terms
// versions, oldest first.
func (s *sqliteStore) termsEntries(ctx context.Context, contractID string) ([][]byte, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT e.body FROM terms_versions t JOIN entries e ON e.contract = t.contract AND e.seq = t.seq
		WHERE t.contract = ? ORDER BY t.seq`, contractID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

func (s *sqliteStore) contracts(ctx context.Context) ([][]byte, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT body FROM contracts ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

func (s *sqliteStore) logSize(ctx context.Context, contractID string) (uint64, error) {
	var n sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT MAX(seq) FROM entries WHERE contract = ?`, contractID).Scan(&n); err != nil {
		return 0, err
	}
	return uint64(n.Int64), nil
}

func (s *sqliteStore) entries(ctx context.Context, contractID string, since uint64, limit, maxBytes int) ([]contract.WireEntry, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, body FROM entries WHERE contract = ? AND seq > ? ORDER BY seq LIMIT ?`, contractID, since, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []contract.WireEntry{}
	total := 0
	for rows.Next() {
		var we contract.WireEntry
		if err := rows.Scan(&we.Seq, &we.Entry); err != nil {
			return nil, err
		}
		if total += len(we.Entry); len(out) > 0 && total > maxBytes {
			break
		}
		out = append(out, we)
	}
	return out, rows.Err()
}

// nodes reads the hashes of ids, in order, a few hundred per query (one
// round trip each: a head reload reads every node of the compact range).
func (s *sqliteStore) nodes(ctx context.Context, contractID string, ids []compact.NodeID) ([][]byte, error) {
	out := make([][]byte, len(ids))
	at := make(map[compact.NodeID][]int, len(ids))
	for i, id := range ids {
		at[id] = append(at[id], i)
	}
	for start := 0; start < len(ids); start += 200 {
		chunk := ids[start:min(start+200, len(ids))]
		args := make([]any, 0, 1+2*len(chunk))
		args = append(args, contractID)
		for _, id := range chunk {
			args = append(args, id.Level, id.Index)
		}
		rows, err := s.db.QueryContext(ctx, `SELECT level, idx, hash FROM nodes WHERE contract = ? AND (level, idx) IN ((?, ?)`+
			strings.Repeat(", (?, ?)", len(chunk)-1)+`)`, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id compact.NodeID
			var h []byte
			if err := rows.Scan(&id.Level, &id.Index, &h); err != nil {
				rows.Close()
				return nil, err
			}
			for _, i := range at[id] {
				out[i] = h
			}
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
	}
	for i, h := range out {
		if h == nil {
			return nil, fmt.Errorf("%w: node %d/%d missing", errCorrupted, ids[i].Level, ids[i].Index)
		}
	}
	return out, nil
}

func (s *sqliteStore) appendEntry(ctx context.Context, contractID string, rec *appendRecord) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO entries (contract, seq, body, time) VALUES (?, ?, ?, ?)`,
		contractID, rec.Seq, rec.Entry, rec.Time.UnixNano()); err != nil {
		if isUnique(err) {
			return fmt.Errorf("%w: seq %d taken", errConflict, rec.Seq)
		}
		return err
	}
	for id, h := range rec.Nodes {
		if _, err := tx.ExecContext(ctx, `INSERT INTO nodes (contract, level, idx, hash) VALUES (?, ?, ?, ?)`,
			contractID, id.Level, id.Index, h); err != nil {
			return fmt.Errorf("node %d/%d: %w", id.Level, id.Index, err)
		}
	}
	if err := insertCheckpoint(ctx, tx, contractID, rec.Seq, rec.Time, rec.CheckpointNote); err != nil {
		return err
	}
	if rec.JTI != "" {
		if _, err := tx.ExecContext(ctx, `INSERT INTO attestations (contract, issuer, jti, seq) VALUES (?, ?, ?, ?)`,
			contractID, rec.Issuer, rec.JTI, rec.Seq); err != nil {
			if isUnique(err) {
				return fmt.Errorf("%w: attestation %q of %q already in the log", errExists, rec.JTI, rec.Issuer)
			}
			return err
		}
	}
	if err := putObjects(ctx, tx, contractID, rec); err != nil {
		return err
	}
	if rec.Redact != "" {
		res, err := tx.ExecContext(ctx, `UPDATE objects SET redacted = ? WHERE contract = ? AND name = ? AND redacted = 0`, rec.Seq, contractID, rec.Redact)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("%w: object %q is not live", errNotFound, rec.Redact)
		}
	}
	if rec.Sender != "" {
		// The batch's signer: auditors need its key for as long as the log.
		if _, err := tx.ExecContext(ctx, `UPDATE sidecar_keys SET signed = 1 WHERE jkt = ? AND signed = 0`, rec.Sender); err != nil {
			return err
		}
	}
	if rec.RevokeKID != "" {
		if _, err := tx.ExecContext(ctx, `INSERT INTO revoked_keys (contract, issuer, kid, seq) VALUES (?, ?, ?, ?)`,
			contractID, rec.Issuer, rec.RevokeKID, rec.Seq); err != nil {
			if isUnique(err) {
				return fmt.Errorf("%w: key %q is already revoked", errConflict, rec.RevokeKID)
			}
			return err
		}
	}
	if len(rec.Events) > 0 {
		if err := insertEvents(ctx, tx, contractID, rec); err != nil {
			return err
		}
	}
	if len(rec.Events) > 0 {
		if err := addLeaseMetered(ctx, tx, contractID, rec.Sender, rec.Lease, rec.Events); err != nil {
			return err
		}
		if err := markEventSeqs(ctx, tx, contractID, rec.Sender, rec.Events); err != nil {
			return err
		}
	}
	if rec.Aggregate != nil {
		if err := insertAggregate(ctx, tx, contractID, rec); err != nil {
			return err
		}
	}
	if rec.IdemKey != "" {
		if err := putIdempotent(ctx, tx, contractID, rec.IdemKey, rec.IdemBodyHash, rec.IdemResponse); err != nil {
			return err
		}
	}
	if rec.ContractBody != nil {
		if _, err := tx.ExecContext(ctx, `UPDATE contracts SET body = ?, etag = ? WHERE id = ?`, rec.ContractBody, rec.ContractETag, contractID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO terms_versions (contract, seq) VALUES (?, ?)`, contractID, rec.Seq); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// insertEvents counts rec's new events and adds them to the contract's
// sums, refusing (errOverflow) events that would make a sum overflow: then
// every total, whatever its filter, fits in int64.
func insertEvents(ctx context.Context, tx *sqlTx, contractID string, rec *appendRecord) error {
	sums, err := txMeteringSums(ctx, tx, contractID)
	if err != nil {
		return err
	}
	ins, err := tx.PrepareContext(ctx, `INSERT INTO metering_events (contract, sender, id, seq, kind, outcome, licensee,
		bytes, samples, units, cost, epoch, job) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	defer ins.Close()
	for _, e := range rec.Events {
		if !sums.Add(e.Sums()) {
			return fmt.Errorf("%w: event %q would make the contract's metering totals overflow", errOverflow, e.ID)
		}
		outcome := ""
		if e.Kind == contract.EventAccess {
			outcome = e.Outcome
			if outcome == "" {
				outcome = contract.OutcomeServed
			}
		}
		// The primary key (contract, sender, id) is the durable guarantee
		// that a sender's event is counted once, whatever the batch it
		// arrives in.
		if _, err := ins.ExecContext(ctx, contractID, rec.Sender, e.ID, rec.Seq, e.Kind, outcome, rec.Licensee,
			e.Bytes, e.Samples, e.Units, e.CostNanoUSD, e.Epoch, e.Job); err != nil {
			if isUnique(err) {
				return fmt.Errorf("%w: metering event %q of %s already counted", errConflict, e.ID, rec.Sender)
			}
			return err
		}
	}
	return putMeteringSums(ctx, tx, contractID, sums)
}

func putIdempotent(ctx context.Context, tx *sqlTx, contractID, key, bodyHash string, response []byte) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO idempotency (contract, key, body_hash, response) VALUES (?, ?, ?, ?)`,
		contractID, key, bodyHash, response)
	if isUnique(err) {
		return fmt.Errorf("%w: idempotency key %q reused", errConflict, key)
	}
	return err
}

// putIdempotent records an idempotency key for a batch that appended
// nothing (every event was already counted).
func (s *sqliteStore) putIdempotent(ctx context.Context, contractID, key, bodyHash string, response []byte) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := putIdempotent(ctx, tx, contractID, key, bodyHash, response); err != nil {
		return err
	}
	return tx.Commit()
}

func (s *sqliteStore) addCheckpoint(ctx context.Context, contractID string, size uint64, at time.Time, note []byte) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := insertCheckpoint(ctx, tx, contractID, size, at, note); err != nil {
		return err
	}
	return tx.Commit()
}

// insertCheckpoint stores a checkpoint note, after claiming its body for
// its size: the primary key of checkpoint_bodies lets the first body
// signed for a size win (across replicas too); a later one must be the
// same, or it is refused as a fork.
func insertCheckpoint(ctx context.Context, tx *sqlTx, contractID string, size uint64, at time.Time, note []byte) error {
	// The body is the note's text, before its signature lines (which
	// differ between signings: a cosignature carries its time).
	body, _, _ := bytes.Cut(note, []byte("\n\n"))
	if _, err := tx.ExecContext(ctx, `INSERT INTO checkpoint_bodies (contract, size, body) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`,
		contractID, size, string(body)); err != nil {
		return err
	}
	var stored string
	if err := tx.QueryRowContext(ctx, `SELECT body FROM checkpoint_bodies WHERE contract = ? AND size = ?`, contractID, size).Scan(&stored); err != nil {
		return err
	}
	if stored != string(body) {
		return fmt.Errorf("%w: a checkpoint of size %d with another root was signed already (%q, now %q): refusing the fork",
			errCorrupted, size, stored, body)
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO checkpoints (contract, time, size, note) VALUES (?, ?, ?, ?)`, contractID, at.UnixNano(), size, note)
	return err
}

func (s *sqliteStore) latestCheckpoint(ctx context.Context, contractID string) ([]byte, error) {
	var note []byte
	err := s.db.QueryRowContext(ctx, `SELECT note FROM checkpoints WHERE contract = ? ORDER BY size DESC, time DESC LIMIT 1`, contractID).Scan(&note)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNotFound
	}
	return note, err
}

func (s *sqliteStore) checkpointAt(ctx context.Context, contractID string, at time.Time) ([]byte, error) {
	var note []byte
	err := s.db.QueryRowContext(ctx, `SELECT note FROM checkpoints WHERE contract = ? AND time <= ? ORDER BY time DESC, size DESC LIMIT 1`,
		contractID, at.UnixNano()).Scan(&note)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNotFound
	}
	return note, err
}

func (s *sqliteStore) object(ctx context.Context, contractID, name string) (*objectRow, error) {
	o := &objectRow{Name: name}
	err := s.db.QueryRowContext(ctx, `SELECT seq, redacted, stored_size FROM objects WHERE contract = ? AND name = ?`, contractID, name).Scan(&o.Seq, &o.Redacted, &o.StoredSize)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNotFound
	}
	return o, err
}

func (s *sqliteStore) owner(ctx context.Context, contractID, name string) (string, uint64, error) {
	var issuer string
	var seq uint64
	err := s.db.QueryRowContext(ctx, `SELECT issuer, seq FROM owners WHERE contract = ? AND name = ?`, contractID, name).Scan(&issuer, &seq)
	if errors.Is(err, sql.ErrNoRows) {
		return "", 0, errNotFound
	}
	return issuer, seq, err
}

func (s *sqliteStore) revoked(ctx context.Context, contractID, issuer, kid string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM revoked_keys WHERE contract = ? AND issuer = ? AND kid = ?`, contractID, issuer, kid).Scan(&n)
	return n > 0, err
}

func (s *sqliteStore) attestationSeen(ctx context.Context, contractID, issuer, jti string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM attestations WHERE contract = ? AND issuer = ? AND jti = ?`, contractID, issuer, jti).Scan(&n)
	return n > 0, err
}

func (s *sqliteStore) sidecarKey(ctx context.Context, jkt string) ([]byte, error) {
	var b []byte
	err := s.db.QueryRowContext(ctx, `SELECT jwk FROM sidecar_keys WHERE jkt = ?`, jkt).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNotFound
	}
	return b, err
}

func (s *sqliteStore) putSidecarKey(ctx context.Context, jkt string, jwk []byte) error {
	// A new key has signed nothing yet; a known one is seen again now.
	_, err := s.db.ExecContext(ctx, `INSERT INTO sidecar_keys (jkt, jwk, seen, signed) VALUES (?, ?, ?, 0)
		ON CONFLICT (jkt) DO UPDATE SET seen = excluded.seen`, jkt, jwk, s.now().UnixNano())
	return err
}

// pruneSidecarKeys deletes the keys that signed no log entry and were
// last seen (registered by a token request) before before.
func (s *sqliteStore) pruneSidecarKeys(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM sidecar_keys WHERE signed = 0 AND seen < ?`, before.UnixNano())
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (s *sqliteStore) useProofID(ctx context.Context, jti string, exp time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO proof_ids (jti, exp) VALUES (?, ?)`, jti, exp.UnixNano())
	if isUnique(err) {
		return errReplay
	}
	return err
}

func (s *sqliteStore) pruneProofIDs(ctx context.Context, before time.Time) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM proof_ids WHERE exp < ?`, before.UnixNano())
	return err
}

func (s *sqliteStore) knownEvents(ctx context.Context, contractID, sender string, ids []string) (map[string]bool, error) {
	known := map[string]bool{}
	for start := 0; start < len(ids); start += 500 {
		chunk := ids[start:min(start+500, len(ids))]
		args := make([]any, 0, len(chunk)+2)
		args = append(args, contractID, sender)
		for _, id := range chunk {
			args = append(args, id)
		}
		rows, err := s.db.QueryContext(ctx, `SELECT id FROM metering_events WHERE contract = ? AND sender = ? AND id IN (?`+strings.Repeat(",?", len(chunk)-1)+`)`, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, err
			}
			known[id] = true
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
	}
	var rest []string
	for _, id := range ids {
		if !known[id] {
			rest = append(rest, id)
		}
	}
	inRanges, err := s.inCountedRanges(ctx, contractID, sender, rest)
	if err != nil {
		return nil, err
	}
	for id := range inRanges {
		known[id] = true
	}
	return known, nil
}

func (s *sqliteStore) meteringSums(ctx context.Context, contractID string) (contract.Sums, error) {
	var sums contract.Sums
	err := s.db.QueryRowContext(ctx, `SELECT samples, bytes, units, cost FROM metering_sums WHERE contract = ?`, contractID).
		Scan(&sums.Samples, &sums.Bytes, &sums.Units, &sums.CostNanoUSD)
	if errors.Is(err, sql.ErrNoRows) {
		return contract.Sums{}, nil
	}
	return sums, err
}

func (s *sqliteStore) idempotent(ctx context.Context, contractID, key string) (string, []byte, error) {
	var h string
	var resp []byte
	err := s.db.QueryRowContext(ctx, `SELECT body_hash, response FROM idempotency WHERE contract = ? AND key = ?`, contractID, key).Scan(&h, &resp)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil, errNotFound
	}
	return h, resp, err
}

// meteringTotals sums the counted events matching f, by outcome and by
// licensee. No sum can overflow: every one is at most the contract's
// metering_sums, which insertEvents keeps within int64.
func (s *sqliteStore) meteringTotals(ctx context.Context, contractID string, f contract.TotalsFilter) (*contract.MeteringReport, error) {
	r := &contract.MeteringReport{
		MeteringTotals: contract.MeteringTotals{Contract: contractID, Licensee: f.Licensee},
		Outcomes:       map[string]contract.OutcomeTotals{},
		Licensees:      map[string]contract.MeteringTotals{},
	}
	// Events counted one by one, then the aggregates' events.
	if err := s.addMeteringTotals(ctx, r, `SELECT licensee, kind, outcome, COUNT(*), SUM(samples), SUM(bytes), SUM(units), SUM(cost)
		FROM metering_events WHERE contract = ?`, contractID, f); err != nil {
		return nil, err
	}
	if err := s.addMeteringTotals(ctx, r, `SELECT licensee, kind, outcome, SUM(events), SUM(samples), SUM(bytes), SUM(units), SUM(cost)
		FROM metering_aggregates WHERE contract = ?`, contractID, f); err != nil {
		return nil, err
	}
	return r, nil
}

// addMeteringTotals adds to r the sums of query q (grouped by licensee,
// kind and outcome) under the filter f.
func (s *sqliteStore) addMeteringTotals(ctx context.Context, r *contract.MeteringReport, q, contractID string, f contract.TotalsFilter) error {
	args := []any{contractID}
	if f.Job != "" {
		q += ` AND job = ?`
		args = append(args, f.Job)
	}
	if f.Epoch >= 0 {
		q += ` AND epoch = ?`
		args = append(args, f.Epoch)
	}
	if f.Licensee != "" {
		q += ` AND licensee = ?`
		args = append(args, f.Licensee)
	}
	q += ` GROUP BY licensee, kind, outcome ORDER BY licensee, kind, outcome`
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var licensee, kind, outcome string
		var n int64
		var sums contract.Sums
		if err := rows.Scan(&licensee, &kind, &outcome, &n, &sums.Samples, &sums.Bytes, &sums.Units, &sums.CostNanoUSD); err != nil {
			return err
		}
		lt := r.Licensees[licensee]
		lt.Contract, lt.Licensee = contractID, licensee
		addTotals(&r.MeteringTotals, kind, outcome, n, sums)
		addTotals(&lt, kind, outcome, n, sums)
		r.Licensees[licensee] = lt
		if kind == contract.EventAccess {
			o := r.Outcomes[outcome]
			o.Events += n
			o.Billed = contract.BillableOutcome(outcome)
			o.Sums.Add(sums)
			r.Outcomes[outcome] = o
		}
	}
	return rows.Err()
}

// addTotals adds n events of one kind and outcome, with their sums, to t.
func addTotals(t *contract.MeteringTotals, kind, outcome string, n int64, sums contract.Sums) {
	t.Events += n
	t.Units += sums.Units
	t.CostNanoUSD += sums.CostNanoUSD
	switch kind {
	case contract.EventEpoch:
		t.EpochEvents += n
		t.EpochSamples += sums.Samples
		t.EpochBytes += sums.Bytes
		return
	case contract.EventAccess:
		t.AccessEvents += n
		t.AccessBytes += sums.Bytes
	}
	if contract.BillableOutcome(outcome) {
		t.BilledEvents += n
		t.BilledSamples += sums.Samples
		t.BilledBytes += sums.Bytes
		t.BilledUnits += sums.Units
		t.BilledCostNanoUSD += sums.CostNanoUSD
	} else {
		t.UnbilledEvents += n
		t.UnbilledBytes += sums.Bytes
	}
}
