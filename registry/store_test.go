package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/compact"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
)

// testNote is a checkpoint-shaped note: body (origin, size, root) and a
// signature line.
func testNote(size uint64, root, sig string) []byte {
	return fmt.Appendf(nil, "test/log\n%d\n%s\n\n— test %s\n", size, root, sig)
}

// testRecord is an append of entry seq with a checkpoint over it.
func testRecord(seq uint64) *appendRecord {
	return &appendRecord{Seq: seq, Entry: fmt.Appendf(nil, `{"seq":%d}`, seq), Time: time.Unix(1_800_000_000+int64(seq), 0),
		Nodes:          map[compact.NodeID][]byte{compact.NewNodeID(0, seq-1): fmt.Appendf(nil, "leaf-%d", seq)},
		CheckpointNote: testNote(seq, fmt.Sprintf("root-%d", seq), "s")}
}

// A DPoP proof id is accepted once, by one of any number of concurrent
// requests (replicas share the proof_ids table), and again only after it
// was pruned.
func TestStoreProofIDReplay(t *testing.T) {
	backends(t, func(t *testing.T, st *sqlStore) {
		ctx := context.Background()
		exp := time.Unix(1_800_000_000, 0)
		var wg sync.WaitGroup
		var mu sync.Mutex
		accepted, replays := 0, 0
		for range 20 {
			wg.Go(func() {
				err := st.useProofID(ctx, "jkt/proof-1", exp)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					accepted++
				case errors.Is(err, errReplay):
					replays++
				default:
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if accepted != 1 || replays != 19 {
			t.Fatalf("one proof id used 20 times: %d accepted, %d replays; want 1 and 19", accepted, replays)
		}
		if err := st.pruneProofIDs(ctx, exp.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		if err := st.useProofID(ctx, "jkt/proof-1", exp.Add(time.Hour)); err != nil {
			t.Fatalf("after its expiry was pruned: %v", err)
		}
	})
}

// Concurrent lease requests of one licensee's sidecars never reserve more
// than the licensee's quota, and concurrent presigns under one lease never
// count more objects than it grants.
func TestStoreLeasesNeverOverrunTheQuota(t *testing.T) {
	backends(t, func(t *testing.T, st *sqlStore) {
		ctx := context.Background()
		now := time.Unix(1_800_000_000, 0)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var granted int64
		var full string // a lease granted its whole ask of 4
		refused := 0
		for i := range 30 {
			wg.Go(func() {
				l, err := st.grantLease(ctx, &leaseRequest{Contract: "c1", Licensee: "acme", JKT: fmt.Sprintf("jkt-%d", i),
					Asked: contract.Quota{MaxSamples: 4}, LicenseeMax: contract.Quota{MaxSamples: 50},
					NewID: fmt.Sprintf("lease-%d", i), Now: now, Expires: now.Add(time.Hour)})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					granted += l.Grant.MaxSamples
					if l.Grant.MaxSamples == 4 && full == "" {
						full = fmt.Sprintf("lease-%d", i)
					}
				case errors.Is(err, errQuota):
					refused++
				default:
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if granted != 50 || refused != 30-13 {
			t.Fatalf("30 sidecars asking 4 of 50 samples: %d granted, %d refused; want 50 granted (12×4 + 2), 17 refused", granted, refused)
		}

		objects := make([]*objectRow, 20)
		for i := range objects {
			objects[i] = &objectRow{Name: fmt.Sprintf("o%d", i), StoredSize: 10}
		}
		ok := 0
		for _, o := range objects {
			wg.Go(func() {
				err := st.presign(ctx, full, []*objectRow{o})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					ok++
				case !errors.Is(err, errQuota):
					t.Error(err)
				}
			})
		}
		wg.Wait()
		s, b, err := st.presignedTotals(ctx, "c1", "acme")
		if err != nil {
			t.Fatal(err)
		}
		if ok != 4 || s != 4 || b != 40 {
			t.Fatalf("20 concurrent presigns under a lease of 4: %d accepted, %d objects (%d bytes) counted; want 4, 4 (40)", ok, s, b)
		}
	})
}

// A sender's event is counted once: a later append carrying it again is
// refused whole (and leaves the log as it was); another sender's event of
// the same id is its own. Sums and totals count what was appended.
func TestStoreMeteringDedupe(t *testing.T) {
	backends(t, func(t *testing.T, st *sqlStore) {
		ctx := context.Background()
		ev := func(id string, samples int64) contract.MeteringEvent {
			return contract.MeteringEvent{ID: id, Kind: contract.EventAccess, Samples: samples, Bytes: 100 * samples, Units: samples, Job: "j"}
		}
		r1 := testRecord(1)
		r1.Sender, r1.Licensee, r1.Events = "alice", "acme", []contract.MeteringEvent{ev("e1", 1), ev("e2", 2)}
		if err := st.appendEntry(ctx, "c1", r1); err != nil {
			t.Fatal(err)
		}
		r2 := testRecord(2)
		r2.Sender, r2.Licensee, r2.Events = "alice", "acme", []contract.MeteringEvent{ev("e3", 3), ev("e2", 2)}
		if err := st.appendEntry(ctx, "c1", r2); !errors.Is(err, errConflict) {
			t.Fatalf("alice's e2 again: %v, want errConflict", err)
		}
		if n, _ := st.logSize(ctx, "c1"); n != 1 {
			t.Fatalf("log size %d after the refused append, want 1", n)
		}
		r2.Sender, r2.Events = "bob", []contract.MeteringEvent{ev("e2", 5)}
		if err := st.appendEntry(ctx, "c1", r2); err != nil {
			t.Fatalf("bob's e2: %v", err)
		}
		known, err := st.knownEvents(ctx, "c1", "alice", []string{"e1", "e2", "e3"})
		if err != nil || !known["e1"] || !known["e2"] || known["e3"] {
			t.Fatalf("alice's known events %v, %v; want e1 and e2", known, err)
		}
		sums, err := st.meteringSums(ctx, "c1")
		if err != nil || sums.Samples != 8 || sums.Bytes != 800 {
			t.Fatalf("sums %+v, %v; want 8 samples, 800 bytes", sums, err)
		}
		tot, err := st.meteringTotals(ctx, "c1", contract.TotalsFilter{Epoch: -1})
		if err != nil || tot.Events != 3 || tot.AccessBytes != 800 || tot.Licensees["acme"].Events != 3 {
			t.Fatalf("totals %+v, %v; want 3 events, 800 bytes, all acme's", tot, err)
		}
	})
}

// Of one size there is one checkpoint body, whichever replica signs it:
// re-signing the same body is kept (a fresh signature), another body is
// refused, also when they race.
func TestStoreCheckpointsNeverFork(t *testing.T) {
	backends(t, func(t *testing.T, st *sqlStore) {
		ctx := context.Background()
		at := time.Unix(1_800_000_000, 0)
		if err := st.addCheckpoint(ctx, "c1", 3, at, testNote(3, "R", "first")); err != nil {
			t.Fatal(err)
		}
		if err := st.addCheckpoint(ctx, "c1", 3, at.Add(time.Second), testNote(3, "R", "fresh")); err != nil {
			t.Fatalf("re-signing the same checkpoint: %v", err)
		}
		if err := st.addCheckpoint(ctx, "c1", 3, at.Add(2*time.Second), testNote(3, "FORK", "x")); !errors.Is(err, errCorrupted) {
			t.Fatalf("another root at size 3: %v, want errCorrupted", err)
		}
		latest, err := st.latestCheckpoint(ctx, "c1")
		if err != nil || string(latest) != string(testNote(3, "R", "fresh")) {
			t.Fatalf("latest checkpoint %q, %v; want the fresh signature of R", latest, err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		won := map[string]bool{}
		for i := range 10 {
			wg.Go(func() {
				root := fmt.Sprintf("root-%d", i)
				err := st.addCheckpoint(ctx, "c1", 5, at.Add(time.Minute), testNote(5, root, "s"))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					won[root] = true
				case !errors.Is(err, errCorrupted):
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if len(won) != 1 {
			t.Fatalf("10 racing checkpoints of size 5 with different roots: %d stored, want 1", len(won))
		}
	})
}

// The first attester of a name owns it; a later contribution of the name
// by another issuer does not take it.
func TestStoreOwners(t *testing.T) {
	backends(t, func(t *testing.T, st *sqlStore) {
		ctx := context.Background()
		for _, a := range []struct {
			seq    uint64
			issuer string
		}{{1, "did:a"}, {2, "did:b"}} {
			r := testRecord(a.seq)
			r.Issuer, r.JTI, r.Object = a.issuer, fmt.Sprintf("jti-%d", a.seq), &contract.ObjectClaim{Name: "x/1", StoredSize: 7}
			if err := st.appendEntry(ctx, "c1", r); err != nil {
				t.Fatal(err)
			}
		}
		issuer, since, err := st.owner(ctx, "c1", "x/1")
		if err != nil || issuer != "did:a" || since != 1 {
			t.Fatalf("owner %q since %d, %v; want did:a since 1", issuer, since, err)
		}
		if o, err := st.object(ctx, "c1", "x/1"); err != nil || o.Seq != 2 {
			t.Fatalf("object %+v, %v; want the latest contribution (seq 2)", o, err)
		}
		if seen, err := st.attestationSeen(ctx, "c1", "did:b", "jti-2"); err != nil || !seen {
			t.Fatalf("attestation seen: %v, %v", seen, err)
		}
	})
}

// The log transaction is one sequencer across replicas: three stores on
// one database append 20 entries each, every one at the size it read in
// its transaction, and none collides; an fn that fails leaves nothing.
func TestStoreLogTransactionSequencesReplicas(t *testing.T) {
	backendURLs(t, func(t *testing.T, db string) {
		ctx := context.Background()
		var replicas []*sqlStore
		for range 3 {
			st, err := openStore(ctx, db, true)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.close() })
			replicas = append(replicas, st)
		}
		err := replicas[0].inLogTx(ctx, "c1", func(ctx context.Context) error {
			if err := replicas[0].appendEntry(ctx, "c1", testRecord(1)); err != nil {
				return err
			}
			return errors.New("refused after the append")
		})
		if err == nil || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("inLogTx: %v", err)
		}
		if n, _ := replicas[1].logSize(ctx, "c1"); n != 0 {
			t.Fatalf("a failed log transaction left %d entries", n)
		}
		var wg sync.WaitGroup
		for _, st := range replicas {
			for range 4 {
				wg.Go(func() {
					for range 5 {
						err := st.inLogTx(ctx, "c1", func(ctx context.Context) error {
							n, err := st.logSize(ctx, "c1")
							if err != nil {
								return err
							}
							time.Sleep(time.Millisecond) // widen the window between read and write
							return st.appendEntry(ctx, "c1", testRecord(n+1))
						})
						if err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
		}
		wg.Wait()
		if n, err := replicas[2].logSize(ctx, "c1"); err != nil || n != 60 {
			t.Fatalf("log size %d, %v; want 60", n, err)
		}
	})
}

// Replicas starting together on a fresh PostgreSQL database migrate it
// once (the migration lock makes the later ones find nothing to do); a
// database a newer registry migrated is refused.
func TestPostgresMigrationsOnceAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	db := testenv.Postgres(t).NewDatabase(t)
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			st, err := openStore(ctx, db, false)
			if err != nil {
				t.Error(err)
				return
			}
			st.close()
		})
	}
	wg.Wait()
	st, err := openStore(ctx, db, false)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	var n, latest int
	if err := st.db.QueryRowContext(ctx, `SELECT COUNT(*), MAX(version) FROM schema_migrations`).Scan(&n, &latest); err != nil {
		t.Fatal(err)
	}
	if n != len(pgMigrations) || latest != pgMigrations[len(pgMigrations)-1].version {
		t.Fatalf("schema_migrations: %d rows up to version %d; want each of %d migrations once", n, latest, len(pgMigrations))
	}
	if _, err := st.db.ExecContext(ctx, `INSERT INTO schema_migrations (version, name) VALUES (?, 'from the future')`, latest+1); err != nil {
		t.Fatal(err)
	}
	if _, err := openStore(ctx, db, false); err == nil || !strings.Contains(err.Error(), "newer than this registry") {
		t.Fatalf("opening a database of a newer schema: %v, want refused", err)
	}
}

// initMeta keeps the first value set: replicas starting together on a
// fresh database all use the log key that one of them stored.
func TestStoreInitMetaFirstValueWins(t *testing.T) {
	backends(t, func(t *testing.T, st *sqlStore) {
		ctx := context.Background()
		if v, err := st.initMeta(ctx, "checkpoint_skey", "first"); err != nil || v != "first" {
			t.Fatalf("initMeta on a fresh database = %q, %v; want first", v, err)
		}
		if v, err := st.initMeta(ctx, "checkpoint_skey", "second"); err != nil || v != "first" {
			t.Fatalf("initMeta of a set key = %q, %v; want the stored first", v, err)
		}
		if v, err := st.meta(ctx, "checkpoint_skey"); err != nil || v != "first" {
			t.Fatalf("meta = %q, %v; want first", v, err)
		}
	})
}

// aggRecord is an append of entry seq counting an aggregate batch of
// sender's ledger rows (after, last] (tag names their root) that served
// last-after samples.
func aggRecord(seq uint64, sender string, after, last int64, tag string) *appendRecord {
	r := testRecord(seq)
	n := last - after
	r.Sender, r.Licensee = sender, "acme"
	r.Aggregate = &aggregateRecord{
		Rows: contract.RowCommitment{Ledger: "L", AfterSeq: after, LastSeq: last, Count: n, Root: []byte(tag)},
		Aggregates: []contract.MeteringAggregate{{Kind: contract.EventAccess, Outcome: contract.OutcomeServed, Job: "j", Epoch: 1,
			Events: n, Samples: n, Bytes: 100 * n, Units: n}},
	}
	return r
}

// Replicas given the same rows of a sender's ledger at once, or
// overlapping rows, count them once: each checks the counted ranges and
// inserts its own in the log transaction, so the later ones see the
// first's range (the same rows: a duplicate; others: a conflict).
func TestStoreAggregateRangeCountedOnceAcrossReplicas(t *testing.T) {
	backendURLs(t, func(t *testing.T, db string) {
		ctx := context.Background()
		var replicas []*sqlStore
		for range 3 {
			st, err := openStore(ctx, db, true)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.close() })
			replicas = append(replicas, st)
		}
		const senders = 8
		var mu sync.Mutex
		counted, dups, conflicts := map[string]int{}, 0, 0
		var wg sync.WaitGroup
		for s := range senders {
			sender := fmt.Sprintf("sc%d", s)
			// The batch twice (a retry at another replica), and rows
			// overlapping it under another root.
			for k, b := range []struct {
				after, last int64
				tag         string
			}{{0, 4, "a"}, {0, 4, "a"}, {2, 6, "b"}} {
				st := replicas[(s+k)%len(replicas)]
				wg.Go(func() {
					err := st.inLogTx(ctx, "c1", func(ctx context.Context) error {
						n, err := st.logSize(ctx, "c1")
						if err != nil {
							return err
						}
						rec := aggRecord(n+1, sender, b.after, b.last, b.tag)
						prev, err := st.countedRange(ctx, "c1", sender, &rec.Aggregate.Rows)
						switch {
						case err == nil && prev.Same(&rec.Aggregate.Rows):
							mu.Lock()
							dups++
							mu.Unlock()
							return nil
						case err == nil:
							mu.Lock()
							conflicts++
							mu.Unlock()
							return nil
						case !errors.Is(err, errNotFound):
							return err
						}
						time.Sleep(time.Millisecond) // widen the window between check and insert
						if err := st.appendEntry(ctx, "c1", rec); err != nil {
							return err
						}
						mu.Lock()
						counted[sender]++
						mu.Unlock()
						return nil
					})
					if err != nil {
						t.Error(err)
					}
				})
			}
		}
		wg.Wait()
		for s := range senders {
			if n := counted[fmt.Sprintf("sc%d", s)]; n != 1 {
				t.Errorf("sender sc%d: %d batches counted, want 1", s, n)
			}
		}
		// Per sender: the first counted; the retry a duplicate or a
		// conflict (when the overlapping rows won); the overlap a conflict
		// when it lost.
		if dups+conflicts != 2*senders {
			t.Errorf("%d duplicates and %d conflicts, want %d refusals in all", dups, conflicts, 2*senders)
		}
		sums, err := replicas[1].meteringSums(ctx, "c1")
		if err != nil || sums.Samples != 4*senders || sums.Bytes != 400*senders {
			t.Errorf("sums %+v, %v; want %d samples counted once each", sums, err, 4*senders)
		}
		tot, err := replicas[2].meteringTotals(ctx, "c1", contract.TotalsFilter{Epoch: -1})
		if err != nil || tot.Events != 4*senders || tot.Licensees["acme"].Events != 4*senders {
			t.Errorf("totals %+v, %v; want %d events", tot, err, 4*senders)
		}
		if n, _ := replicas[0].logSize(ctx, "c1"); n != senders {
			t.Errorf("log size %d, want one metering entry per sender (%d)", n, senders)
		}
	})
}

// A counted range is refused (errConflict) by the store itself, also when
// two appends of the same rows run at once outside any log lock: the
// range's primary key admits one.
func TestStoreAggregateRangeUniqueWithoutTheLogLock(t *testing.T) {
	backendURLs(t, func(t *testing.T, db string) {
		ctx := context.Background()
		a, err := openStore(ctx, db, true)
		if err != nil {
			t.Fatal(err)
		}
		defer a.close()
		b, err := openStore(ctx, db, true)
		if err != nil {
			t.Fatal(err)
		}
		defer b.close()
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i, st := range []*sqlStore{a, b} {
			wg.Go(func() { errs[i] = st.appendEntry(ctx, "c1", aggRecord(uint64(i+1), "sc", 0, 4, "a")) })
		}
		wg.Wait()
		ok, refused := 0, 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, errConflict):
				refused++
			default:
				t.Errorf("append: %v", err)
			}
		}
		if ok != 1 || refused != 1 {
			t.Fatalf("the same rows appended twice at once: %d counted, %d refused; want 1 and 1 (%v)", ok, refused, errs)
		}
		if err := a.appendEntry(ctx, "c1", aggRecord(3, "sc", 3, 8, "c")); !errors.Is(err, errConflict) {
			t.Errorf("rows (3, 8] over counted (0, 4]: %v, want errConflict", err)
		}
		if sums, err := b.meteringSums(ctx, "c1"); err != nil || sums.Samples != 4 {
			t.Errorf("sums %+v, %v; want the 4 samples once", sums, err)
		}
	})
}
