package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/provgate/provgate/contract"
)

// leaseRequest asks for a quota lease: a slice of a licensee's quota held
// by one sidecar key (JKT) under a contract, until Expires.
type leaseRequest struct {
	Contract, Licensee, JKT string
	// Asked is what the sidecar asked for; zero: all that is available.
	Asked contract.Quota
	// LicenseeMax bounds the sum of the licensee's leases; zero: no bound.
	LicenseeMax contract.Quota
	// NewID names the lease if a new one is made.
	NewID        string
	Now, Expires time.Time
}

// leaseRow is a granted lease. Grant is cumulative over every token of
// the lease; a zero limit is unlimited.
type leaseRow struct {
	ID       string
	Licensee string
	Grant    contract.Quota
	Expires  time.Time
	Reused   bool
}

// A lease is live until its latest token expires. A live lease reserves
// its whole grant (or what it used, if more); a dead one only what it
// used: the larger of the objects presigned under it and the samples and
// bytes metered for it.
func (s *sqlStore) leaseUsage() string {
	return `COALESCE(SUM(CASE WHEN expires > ?
		THEN ` + s.db.greatest("max_samples", "presigned_samples", "metered_samples") + ` ELSE ` + s.db.greatest("presigned_samples", "metered_samples") + ` END), 0),
	COALESCE(SUM(CASE WHEN expires > ?
		THEN ` + s.db.greatest("max_bytes", "presigned_bytes", "metered_bytes") + ` ELSE ` + s.db.greatest("presigned_bytes", "metered_bytes") + ` END), 0)
	FROM leases WHERE contract_id = ?`
}

// grantLease reuses the key's live lease (extending it to req.Expires), or
// grants a new one of min(asked, available) in each limited dimension, in
// one transaction holding the licensee's lease lock (SQLite: the database's
// write lock, taken at BEGIN; PostgreSQL: an advisory lock, which every
// replica takes), so that concurrent requests can never reserve more than
// the limits in total. A grant of nothing in a limited dimension is
// errQuota.
func (s *sqliteStore) grantLease(ctx context.Context, req *leaseRequest) (*leaseRow, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	if err := s.db.lockKey(ctx, tx, "leases "+req.Contract+" "+req.Licensee); err != nil {
		return nil, err
	}
	now, exp := req.Now.UnixNano(), req.Expires.UnixNano()
	l := &leaseRow{Licensee: req.Licensee}
	var lexp int64
	err = tx.QueryRowContext(ctx, `SELECT id, max_samples, max_bytes, expires FROM leases
		WHERE contract_id = ? AND licensee = ? AND jkt = ? AND expires > ? ORDER BY expires DESC LIMIT 1`,
		req.Contract, req.Licensee, req.JKT, now).Scan(&l.ID, &l.Grant.MaxSamples, &l.Grant.MaxBytes, &lexp)
	switch {
	case err == nil:
		lexp = max(lexp, exp)
		if _, err := tx.ExecContext(ctx, `UPDATE leases SET expires = ? WHERE id = ?`, lexp, l.ID); err != nil {
			return nil, err
		}
		l.Expires, l.Reused = time.Unix(0, lexp), true
		return l, tx.Commit()
	case !errors.Is(err, sql.ErrNoRows):
		return nil, err
	}
	var licS, licB int64
	if err := tx.QueryRowContext(ctx, `SELECT `+s.leaseUsage()+` AND licensee = ?`, now, now, req.Contract, req.Licensee).Scan(&licS, &licB); err != nil {
		return nil, err
	}
	l.Grant.MaxSamples, err = grantOf("samples", req.Asked.MaxSamples, req.LicenseeMax.MaxSamples, licS)
	if err != nil {
		return nil, err
	}
	l.Grant.MaxBytes, err = grantOf("bytes", req.Asked.MaxBytes, req.LicenseeMax.MaxBytes, licB)
	if err != nil {
		return nil, err
	}
	l.ID, l.Expires = req.NewID, req.Expires
	if _, err := tx.ExecContext(ctx, `INSERT INTO leases (id, contract_id, licensee, jkt, max_samples, max_bytes, created, expires)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, l.ID, req.Contract, req.Licensee, req.JKT, l.Grant.MaxSamples, l.Grant.MaxBytes, now, exp); err != nil {
		return nil, err
	}
	return l, tx.Commit()
}

// grantOf is one dimension of a grant: what is left under the licensee's
// limit, capped at asked (zero: all). With no limit the grant is asked
// (zero: unlimited).
func grantOf(what string, asked, licMax, licUsed int64) (int64, error) {
	if licMax == 0 {
		return asked, nil
	}
	avail := licMax - licUsed
	switch {
	case avail <= 0:
		return 0, fmt.Errorf("%w: no %s left to lease (the licensee's other sidecars hold or used them all)", errQuota, what)
	case asked == 0 || asked > avail:
		return avail, nil
	default:
		return asked, nil
	}
}

// presign records objects as presigned under a lease, refusing (and
// recording nothing) when the distinct objects presigned under it would
// exceed its max_samples, or their stored bytes its max_bytes (zero: no
// limit). Presigning a name again under the same lease counts once. The
// lease's row is locked for the transaction, so that concurrent presigns
// under one lease (from any replica) count one after the other.
func (s *sqliteStore) presign(ctx context.Context, leaseID string, objects []*objectRow) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := s.db.lockKey(ctx, tx, "lease "+leaseID); err != nil {
		return err
	}
	var maxS, maxB, usedS, usedB int64
	err = tx.QueryRowContext(ctx, `SELECT max_samples, max_bytes, presigned_samples, presigned_bytes FROM leases WHERE id = ?`, leaseID).
		Scan(&maxS, &maxB, &usedS, &usedB)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w: lease %q", errNotFound, leaseID)
	}
	if err != nil {
		return err
	}
	for _, o := range objects {
		res, err := tx.ExecContext(ctx, `INSERT INTO lease_objects (lease, name, size) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`, leaseID, o.Name, o.StoredSize)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 1 {
			usedS++
			usedB += o.StoredSize
		}
	}
	if maxS > 0 && usedS > maxS {
		return fmt.Errorf("%w: %d objects would exceed the lease's max_samples %d", errQuota, usedS, maxS)
	}
	if maxB > 0 && usedB > maxB {
		return fmt.Errorf("%w: %d bytes would exceed the lease's max_bytes %d", errQuota, usedB, maxB)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE leases SET presigned_samples = ?, presigned_bytes = ? WHERE id = ?`, usedS, usedB, leaseID); err != nil {
		return err
	}
	return tx.Commit()
}

// addLeaseMetered adds the access events' samples and bytes to the leases
// they were served under: each event's own lease (rows synced after a
// token refresh belong to the lease that served them), or fallback (the
// lease of the token the batch came with) when it names none. Only leases
// of the sending key under this contract are charged: a sender cannot
// move its use onto another's lease.
func addLeaseMetered(ctx context.Context, tx *sqlTx, contractID, sender, fallback string, events []contract.MeteringEvent) error {
	type sums struct{ samples, bytes int64 }
	by := map[string]*sums{}
	for _, e := range events {
		if e.Kind != contract.EventAccess {
			continue
		}
		id := e.Lease
		if id == "" {
			id = fallback
		}
		if id == "" {
			continue
		}
		if by[id] == nil {
			by[id] = &sums{}
		}
		by[id].samples += e.Samples
		by[id].bytes += e.Bytes
	}
	for id, u := range by {
		if _, err := tx.ExecContext(ctx, `UPDATE leases SET metered_samples = metered_samples + ?, metered_bytes = metered_bytes + ?
			WHERE id = ? AND contract_id = ? AND jkt = ?`, u.samples, u.bytes, id, contractID, sender); err != nil {
			return err
		}
	}
	return nil
}

// presignedTotals sums the distinct objects presigned, and their stored
// bytes, over the leases of a contract's licensee ("" = all licensees).
func (s *sqliteStore) presignedTotals(ctx context.Context, contractID, licensee string) (samples, bytes int64, err error) {
	err = s.db.QueryRowContext(ctx, `SELECT COALESCE(SUM(presigned_samples), 0), COALESCE(SUM(presigned_bytes), 0)
		FROM leases WHERE contract_id = ? AND (? = '' OR licensee = ?)`, contractID, licensee, licensee).Scan(&samples, &bytes)
	return samples, bytes, err
}

// putEnrolment records the enrolment a token was issued on; a newer one
// for the same key replaces it.
func (s *sqliteStore) putEnrolment(ctx context.Context, contractID, jkt, licensee string, expires time.Time, jws string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO enrolments (contract_id, jkt, licensee, expires, jws) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (contract_id, jkt) DO UPDATE SET licensee = excluded.licensee, expires = excluded.expires, jws = excluded.jws`,
		contractID, jkt, licensee, expires.UnixNano(), jws)
	return err
}

// enrolment returns the licensee that enrolled the sidecar key jkt under a
// contract, and until when; errNotFound when none did.
func (s *sqliteStore) enrolment(ctx context.Context, contractID, jkt string) (licensee string, expires time.Time, err error) {
	var exp int64
	err = s.db.QueryRowContext(ctx, `SELECT licensee, expires FROM enrolments WHERE contract_id = ? AND jkt = ?`, contractID, jkt).Scan(&licensee, &exp)
	if errors.Is(err, sql.ErrNoRows) {
		return "", time.Time{}, errNotFound
	}
	if err != nil {
		return "", time.Time{}, err
	}
	return licensee, time.Unix(0, exp), nil
}
