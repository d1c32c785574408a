package registry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
)

// TestLeaseStoreMethods checks the store calls other parts of the
// registry build on: enrolment (who enrolled a key, errNotFound when
// nobody did) and presignedTotals (per licensee, and for all).
func TestLeaseStoreMethods(t *testing.T) { backends(t, testLeaseStoreMethods) }

func testLeaseStoreMethods(t *testing.T, st *sqlStore) {
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	if _, _, err := st.enrolment(ctx, "c1", "jkt-a"); !errors.Is(err, errNotFound) {
		t.Fatalf("enrolment of an unknown key: %v, want errNotFound", err)
	}
	exp := now.Add(time.Hour)
	if err := st.putEnrolment(ctx, "c1", "jkt-a", "acme", exp, "jws-1"); err != nil {
		t.Fatal(err)
	}
	if err := st.putEnrolment(ctx, "c1", "jkt-a", "acme", exp.Add(time.Hour), "jws-2"); err != nil {
		t.Fatal(err)
	}
	if l, e, err := st.enrolment(ctx, "c1", "jkt-a"); err != nil || l != "acme" || !e.Equal(exp.Add(time.Hour)) {
		t.Fatalf("enrolment = %q %v %v, want acme until the renewed expiry", l, e, err)
	}
	if _, _, err := st.enrolment(ctx, "c2", "jkt-a"); !errors.Is(err, errNotFound) {
		t.Fatalf("enrolment under another contract: %v, want errNotFound", err)
	}

	lease := func(licensee, jkt, id string) *leaseRow {
		l, err := st.grantLease(ctx, &leaseRequest{Contract: "c1", Licensee: licensee, JKT: jkt, Asked: contract.Quota{MaxSamples: 5},
			LicenseeMax: contract.Quota{MaxSamples: 10}, NewID: id, Now: now, Expires: now.Add(5 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	a, b := lease("acme", "jkt-a", "la"), lease("globex", "jkt-b", "lb")
	objs := func(names ...string) []*objectRow {
		var out []*objectRow
		for _, n := range names {
			out = append(out, &objectRow{Name: n, StoredSize: 100})
		}
		return out
	}
	if err := st.presign(ctx, a.ID, objs("x", "y", "x")); err != nil {
		t.Fatal(err)
	}
	if err := st.presign(ctx, b.ID, objs("x")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		licensee      string
		samples, byts int64
	}{{"acme", 2, 200}, {"globex", 1, 100}, {"", 3, 300}, {"nobody", 0, 0}} {
		s, by, err := st.presignedTotals(ctx, "c1", tc.licensee)
		if err != nil || s != tc.samples || by != tc.byts {
			t.Errorf("presignedTotals(%q) = %d, %d, %v; want %d, %d", tc.licensee, s, by, err, tc.samples, tc.byts)
		}
	}
	if err := st.presign(ctx, "no-such-lease", objs("x")); !errors.Is(err, errNotFound) {
		t.Errorf("presign under an unknown lease: %v, want errNotFound", err)
	}
}

// Metered use is charged to the lease each row was served under (rows a
// sidecar syncs after its lease changed belong to the old one), falling
// back to the batch token's lease, and never to a lease of another key.
func TestLeaseMeteredPerRowLease(t *testing.T) { backends(t, testLeaseMeteredPerRowLease) }

func testLeaseMeteredPerRowLease(t *testing.T, st *sqlStore) {
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	for _, l := range []struct{ jkt, id string }{{"jkt-a", "old"}, {"jkt-a", "new"}, {"jkt-b", "other"}} {
		if _, err := st.db.ExecContext(ctx, `INSERT INTO leases (id, contract_id, licensee, jkt, max_samples, max_bytes, created, expires)
			VALUES (?, 'c1', 'acme', ?, 10, 0, ?, ?)`, l.id, l.jkt, now.UnixNano(), now.Add(time.Hour).UnixNano()); err != nil {
			t.Fatal(err)
		}
	}
	ev := func(lease string, samples int64) contract.MeteringEvent {
		return contract.MeteringEvent{Kind: contract.EventAccess, Lease: lease, Samples: samples, Bytes: 10 * samples}
	}
	tx, err := st.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := addLeaseMetered(ctx, tx, "c1", "jkt-a", "new", []contract.MeteringEvent{ev("old", 2), ev("", 3), ev("other", 4)}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]int64{"old": 2, "new": 3, "other": 0} {
		var got int64
		if err := st.db.QueryRowContext(ctx, `SELECT metered_samples FROM leases WHERE id = ?`, id).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("lease %s metered %d samples, want %d", id, got, want)
		}
	}
}
