package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// handleAppendBatch appends a batch attestation: the manifest is the body
// (at most contract.MaxBatchManifestSize bytes: 413 beyond), the compact
// JWS the Provgate-Attestation header. The manifest must be the bytes the
// attestation signs the sha256 of; each object in it is then held to the
// rules of a single contribution (a valid claim, a name its issuer may
// write). The registry stores the manifest by digest with the entry, in
// one transaction, and serves it at GET /provenance/{id}/manifests/{sha256}.
func (s *Server) handleAppendBatch(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	c, err := s.loadContract(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	jws := strings.TrimSpace(r.Header.Get(contract.HeaderAttestation))
	if jws == "" {
		return contract.Errorf(http.StatusBadRequest, contract.CodeInvalidAttestation, "the batch attestation goes in the %s header", contract.HeaderAttestation)
	}
	if len(jws) > contract.MaxAttestationSize {
		return contract.Errorf(http.StatusRequestEntityTooLarge, contract.CodeTooLarge, "attestation over %d bytes", contract.MaxAttestationSize)
	}
	if r.ContentLength > contract.MaxBatchManifestSize {
		return contract.Errorf(http.StatusRequestEntityTooLarge, contract.CodeTooLarge,
			"a batch manifest is at most %d bytes; this one is %d", contract.MaxBatchManifestSize, r.ContentLength)
	}
	// The signature is checked before the body is read: a forged batch
	// costs the registry no 8 MiB read. appendAttestation checks it again
	// under the log's lock, with the revocations.
	peek, err := verify.PeekAttestation(jws)
	if err != nil {
		return attestationError(err)
	}
	ct := c.Contributor(peek.Issuer)
	if ct == nil {
		return attestationError(fmt.Errorf("%w: %q", verify.ErrNotContributor, peek.Issuer))
	}
	keys, err := s.contributorKeys(ctx, ct)
	if err != nil {
		return err
	}
	a, _, err := verify.VerifyAttestation(jws, c, keys)
	if err != nil {
		return attestationError(err)
	}
	raw, err := readBody(w, r, contract.MaxBatchManifestSize)
	if err != nil {
		return err
	}
	if a.Type != contract.Batch || a.Batch == nil {
		return contract.Errorf(http.StatusBadRequest, contract.CodeInvalidAttestation, "not a batch attestation (type %q)", a.Type)
	}
	m, err := a.Batch.Open(raw, c.ContractID)
	if err != nil {
		return contract.Errorf(http.StatusBadRequest, contract.CodeInvalidAttestation, "%v", err)
	}
	return s.appendAttestation(ctx, w, c, jws, &submittedBatch{raw: raw, m: m, claim: *a.Batch})
}

// checkBatch checks a verified batch attestation against its manifest and
// the log: the manifest is the one signed (again, now that the claim is
// verified), and the issuer may write every name in it. Callers hold s.mu.
func (s *Server) checkBatch(ctx context.Context, c *contract.Contract, a *contract.Attestation, b *submittedBatch) error {
	if *a.Batch != b.claim {
		// Not the claim the manifest was opened against before the lock:
		// open it against the verified one.
		m, err := a.Batch.Open(b.raw, c.ContractID)
		if err != nil {
			return contract.Errorf(http.StatusBadRequest, contract.CodeInvalidAttestation, "%v", err)
		}
		b.m, b.claim = m, *a.Batch
	}
	m := b.m
	names := make([]string, len(m.Objects))
	for i := range m.Objects {
		names[i] = m.Objects[i].Name
	}
	owners, err := s.st.owners(ctx, c.ContractID, names)
	if err != nil {
		return err
	}
	for _, name := range names {
		o, ok := owners[name]
		if !ok || c.MayRewrite(a.Issuer, o.Issuer) {
			continue
		}
		return contract.Errorf(http.StatusForbidden, contract.CodeForbidden,
			"%q may not replace %q: the name belongs to %q, who attested it first (entry %d); only its owner or a curator of the contract may",
			a.Issuer, name, o.Issuer, o.Seq)
	}
	return nil
}

var sha256Path = regexp.MustCompile(`^[0-9a-f]{64}$`)

// handleManifest serves a batch manifest by its sha256: the exact bytes
// the batch attestation signs the digest of. They are immutable.
func (s *Server) handleManifest(w http.ResponseWriter, r *http.Request) error {
	c, err := s.loadContract(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	digest := r.PathValue("sha256")
	if !sha256Path.MatchString(digest) {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "manifest digest %q: want 64 lowercase hex digits", digest)
	}
	b, err := s.st.manifest(r.Context(), c.ContractID, digest)
	if errors.Is(err, errNotFound) {
		return contract.Errorf(http.StatusNotFound, contract.CodeNotFound, "no batch manifest %s in %q", digest, c.ContractID)
	}
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", contract.BatchManifestMediaType)
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	w.Header().Set("ETag", `"`+digest+`"`)
	w.Write(b)
	return nil
}

// ownerRow is who owns a name.
type ownerRow struct {
	Issuer string
	Seq    uint64
}

// batchManifestsTable holds batch manifests by digest (pgMigrations step
// 4 is its PostgreSQL counterpart).
const batchManifestsTable = `CREATE TABLE IF NOT EXISTS batch_manifests (
	contract TEXT NOT NULL, sha256 TEXT NOT NULL, body BLOB NOT NULL,
	PRIMARY KEY (contract, sha256)) WITHOUT ROWID;`

func (s *sqliteStore) manifest(ctx context.Context, contractID, digest string) ([]byte, error) {
	var b []byte
	err := s.db.QueryRowContext(ctx, `SELECT body FROM batch_manifests WHERE contract = ? AND sha256 = ?`, contractID, digest).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNotFound
	}
	return b, err
}

// ownersChunk bounds the names of one owners query (SQLite's default limit
// on host parameters is far above it).
const ownersChunk = 500

func (s *sqliteStore) owners(ctx context.Context, contractID string, names []string) (map[string]ownerRow, error) {
	out := map[string]ownerRow{}
	for len(names) > 0 {
		n := min(len(names), ownersChunk)
		args := make([]any, 0, n+1)
		args = append(args, contractID)
		for _, name := range names[:n] {
			args = append(args, name)
		}
		q := `SELECT name, issuer, seq FROM owners WHERE contract = ? AND name IN (?` + strings.Repeat(", ?", n-1) + `)`
		rows, err := s.db.QueryContext(ctx, q, args...)
		if err != nil {
			return nil, fmt.Errorf("owners: %w", err)
		}
		for rows.Next() {
			var name string
			var o ownerRow
			if err := rows.Scan(&name, &o.Issuer, &o.Seq); err != nil {
				rows.Close()
				return nil, fmt.Errorf("owners: %w", err)
			}
			out[name] = o
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("owners: %w", err)
		}
		names = names[n:]
	}
	return out, nil
}

// insertChunk is the rows of one multi-row insert (4 parameters a row).
const insertChunk = 500

// putObjects records the objects an attestation adds (one, or a batch's):
// the first attester of a name owns it for good; the object row is its
// live version. It runs in appendEntry's transaction.
func putObjects(ctx context.Context, tx *sqlTx, contractID string, rec *appendRecord) error {
	if rec.Manifest != nil {
		if _, err := tx.ExecContext(ctx, `INSERT INTO batch_manifests (contract, sha256, body) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`,
			contractID, rec.ManifestSHA256, rec.Manifest); err != nil {
			return err
		}
	}
	objs := rec.Batch
	if rec.Object != nil {
		objs = []contract.ObjectClaim{*rec.Object}
	}
	if len(objs) == 0 {
		return nil
	}
	// Multi-row inserts, a chunk of rows per statement: a batch of ten
	// thousand objects is a few dozen statements.
	ownStmts, putStmts := map[int]*sql.Stmt{}, map[int]*sql.Stmt{}
	defer func() {
		for _, st := range ownStmts {
			st.Close()
		}
		for _, st := range putStmts {
			st.Close()
		}
	}()
	prep := func(cache map[int]*sql.Stmt, n int, head, row, tail string) (*sql.Stmt, error) {
		if st, ok := cache[n]; ok {
			return st, nil
		}
		st, err := tx.PrepareContext(ctx, head+strings.TrimSuffix(strings.Repeat(row+", ", n), ", ")+tail)
		if err != nil {
			return nil, err
		}
		cache[n] = st
		return st, nil
	}
	for start := 0; start < len(objs); start += insertChunk {
		chunk := objs[start:min(len(objs), start+insertChunk)]
		// The first attester of a name owns it for good.
		own, err := prep(ownStmts, len(chunk), `INSERT INTO owners (contract, name, issuer, seq) VALUES `, "(?, ?, ?, ?)", ` ON CONFLICT DO NOTHING`)
		if err != nil {
			return err
		}
		put, err := prep(putStmts, len(chunk), `INSERT INTO objects (contract, name, seq, redacted, stored_size) VALUES `, "(?, ?, ?, 0, ?)",
			` ON CONFLICT (contract, name) DO UPDATE SET seq = excluded.seq, redacted = 0, stored_size = excluded.stored_size`)
		if err != nil {
			return err
		}
		ownArgs := make([]any, 0, 4*len(chunk))
		putArgs := make([]any, 0, 4*len(chunk))
		for i := range chunk {
			o := &chunk[i]
			ownArgs = append(ownArgs, contractID, o.Name, rec.Issuer, rec.Seq)
			putArgs = append(putArgs, contractID, o.Name, rec.Seq, o.StoredSize)
		}
		if _, err := own.ExecContext(ctx, ownArgs...); err != nil {
			return err
		}
		if _, err := put.ExecContext(ctx, putArgs...); err != nil {
			return err
		}
	}
	return nil
}
