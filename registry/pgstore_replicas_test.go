package registry_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	mcompact "github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// replicaPublicURL is the one URL the replicas are known by (as behind a
// load balancer): DPoP proofs name it, whichever replica they reach.
const replicaPublicURL = "http://registry.test"

// startReplicas starts n registries on one PostgreSQL database, each on
// its own loopback listener, presigning on the test MinIO; opts apply
// after the replicas' shared configuration.
func startReplicas(t *testing.T, n int, opts ...registrytest.Option) []*registrytest.Harness {
	t.Helper()
	db := testenv.Postgres(t).NewDatabase(t)
	mio := testenv.MinIO(t)
	var hs []*registrytest.Harness
	for range n {
		hs = append(hs, registrytest.Start(t, append([]registrytest.Option{
			registrytest.WithMinIO(mio.Endpoint, testenv.MinIOAccessKey, testenv.MinIOSecretKey),
			registrytest.WithConfig(func(c *registry.Config) {
				c.DBPath = db
				c.PublicURL = replicaPublicURL
				c.CheckpointInterval = 200 * time.Millisecond // replicas re-sign while others append
			})}, opts...)...))
	}
	return hs
}

// replicaClient is a client of one replica whose DPoP proofs (by key)
// name the public URL.
func replicaClient(t *testing.T, h *registrytest.Harness, key *jose.JSONWebKey) *contract.Client {
	t.Helper()
	c, err := contract.NewClient(h.URL)
	if err != nil {
		t.Fatal(err)
	}
	c.MaxAttempts = 1
	// Correctness, not latency, is checked: on a starved machine (the race
	// detector, other work) a request may queue for long behind the log.
	c.HTTP = &http.Client{Timeout: 3 * time.Minute}
	if key != nil {
		c.Proof = func(method, url, token string) (string, error) {
			return verify.NewDPoPProof(key, method, replicaPublicURL+strings.TrimPrefix(url, h.URL), token, time.Now())
		}
	}
	return c
}

// latencies records request durations by endpoint.
type latencies struct {
	mu sync.Mutex
	by map[string][]time.Duration
}

func (l *latencies) time(endpoint string, f func() error) error {
	start := time.Now()
	err := f()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.by == nil {
		l.by = map[string][]time.Duration{}
	}
	l.by[endpoint] = append(l.by[endpoint], time.Since(start))
	return err
}

func (l *latencies) report(t *testing.T, wall time.Duration) {
	keys := make([]string, 0, len(l.by))
	for k := range l.by {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	total := 0
	for _, k := range keys {
		d := l.by[k]
		slices.Sort(d)
		total += len(d)
		t.Logf("%-26s %5d requests %7.1f req/s  p50 %7.2fms  p99 %7.2fms", k, len(d), float64(len(d))/wall.Seconds(),
			ms(d[len(d)/2]), ms(d[min(len(d)-1, len(d)*99/100)]))
	}
	t.Logf("%-26s %5d requests %7.1f req/s  in %s", "all", total, float64(total)/wall.Seconds(), wall.Round(time.Millisecond))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// TestReplicasOnPostgres runs three registry replicas on one PostgreSQL
// database under ~200 sidecars (32 at a time) that each request a token
// (and replay its proof at another replica), presign two objects and send
// one metering batch to two replicas at once (mostly aggregate batches,
// half of them raced by a batch of overlapping rows at the third replica;
// every fourth sidecar sends events one by one), while three contributors
// append through all three. It checks what a deployment relies on:
// no DPoP proof is accepted twice, no token id repeats, the licensee's
// quota is never overrun (exactly the leases it holds are granted), every
// sidecar's use is counted by exactly one batch and the totals are exact,
// and the log is one log whose
// every checkpoint (served, or in a receipt) verifies and is a prefix of
// it. The log output reports req/s and p99 per endpoint.
func TestReplicasOnPostgres(t *testing.T) { replicaLoad(t, startReplicas(t, 3)) }

// TestReplicaLoadOnOneSQLiteRegistry is the same load on one registry on
// SQLite (each "replica" is the one server): the same guarantees, and the
// baseline for the figures of the replicated run.
func TestReplicaLoadOnOneSQLiteRegistry(t *testing.T) {
	mio := testenv.MinIO(t)
	h := registrytest.Start(t, registrytest.WithMinIO(mio.Endpoint, testenv.MinIOAccessKey, testenv.MinIOSecretKey),
		registrytest.WithConfig(func(c *registry.Config) {
			c.PublicURL = replicaPublicURL
			c.CheckpointInterval = 200 * time.Millisecond
		}))
	replicaLoad(t, []*registrytest.Harness{h, h, h})
}

func replicaLoad(t *testing.T, hs []*registrytest.Harness) {
	const (
		sidecars    = 200
		concurrency = 32
		askSamples  = 4
		quota       = 700 // samples: 175 leases of 4
		eventsEach  = 4   // metered samples, the lease's grant
		preObjects  = 20
		appendsEach = 10
	)
	ctx := context.Background()
	contributors := []*registrytest.Contributor{
		hs[0].NewContributor(t, "did:example:alice"), hs[1].NewContributor(t, "did:example:bob"), hs[2].NewContributor(t, "did:example:carol")}
	spec := registrytest.NewContract("did:example:replicated", "bucket", contributors...)
	spec.Usage.MaxSamples = quota
	c := hs[0].CreateContract(t, spec)
	var names []string
	for i := range preObjects {
		name := fmt.Sprintf("pre/%d.bin", i)
		contributors[0].Attest(t, c.ContractID, registrytest.Object(name, []byte(name)))
		names = append(names, name)
	}
	clients := make([]*contract.Client, len(hs))
	for i, h := range hs {
		clients[i] = replicaClient(t, h, nil)
	}

	var (
		lat       latencies
		mu        sync.Mutex
		tokenIDs  = map[string]bool{}
		granted   int64
		leases    int
		refused   int
		replays   int
		accepted  int
		conflicts int
		receipts  []*contract.MeteringReceipt
		served    [][]byte // checkpoints served while the run went on
		presigned int
	)
	start := time.Now()
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() { // readers: each replica's checkpoint, as clients poll it
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			var cp []byte
			err := lat.time("GET checkpoint", func() (err error) {
				cp, err = clients[i%3].Checkpoint(ctx, c.ContractID)
				return err
			})
			if err != nil {
				t.Errorf("checkpoint from replica %d: %v", i%3, err)
				return
			}
			mu.Lock()
			served = append(served, cp)
			mu.Unlock()
		}
	})
	var work sync.WaitGroup
	for ci, ct := range contributors { // contributors append through every replica
		work.Go(func() {
			for k := range appendsEach {
				name := fmt.Sprintf("%s/%d.bin", strings.TrimPrefix(ct.ID, "did:example:"), k)
				obj := registrytest.Object(name, []byte(name))
				jws := ct.Sign(t, c.ContractID, &contract.Attestation{Type: contract.Contribution, Object: &obj})
				if err := lat.time("POST events (append)", func() error {
					_, err := clients[(ci+k)%3].AppendAttestation(ctx, c.ContractID, jws)
					return err
				}); err != nil {
					t.Errorf("append %s: %v", name, err)
					return
				}
			}
		})
	}
	sem := make(chan struct{}, concurrency)
	for i := range sidecars {
		sem <- struct{}{}
		work.Go(func() {
			defer func() { <-sem }()
			key, err := verify.GenerateKey(jose.EdDSA)
			if err != nil {
				t.Error(err)
				return
			}
			jkt, _ := verify.Thumbprint(key)
			a, b := hs[i%3], hs[(i+1)%3]

			// The token request, then the same request (its proof) at another replica.
			body, _ := json.Marshal(contract.TokenRequest{Purpose: "training", Usage: contract.Quota{MaxSamples: askSamples},
				JWK: key.Public(), Enrolment: registrytest.DefaultLicensee().Enrol(t, c.ContractID, key)})
			proofJWS, err := verify.NewDPoPProof(key, http.MethodPost, replicaPublicURL+"/contracts/"+c.ContractID+"/request", "", time.Now())
			if err != nil {
				t.Error(err)
				return
			}
			send := func(h *registrytest.Harness) (*http.Response, error) {
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.URL+"/contracts/"+c.ContractID+"/request", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set(contract.HeaderDPoP, proofJWS)
				return http.DefaultClient.Do(req)
			}
			var resp *http.Response
			if err := lat.time("POST request (token)", func() (err error) { resp, err = send(a); return err }); err != nil {
				t.Error(err)
				return
			}
			var tok contract.TokenResponse
			var eb contract.ErrorBody
			status := resp.StatusCode
			if status == http.StatusOK {
				err = json.NewDecoder(resp.Body).Decode(&tok)
			} else {
				err = json.NewDecoder(resp.Body).Decode(&eb)
			}
			resp.Body.Close()
			if err != nil {
				t.Error(err)
				return
			}
			again, err := send(b)
			if err != nil {
				t.Error(err)
				return
			}
			var againBody contract.ErrorBody
			json.NewDecoder(again.Body).Decode(&againBody)
			again.Body.Close()
			mu.Lock()
			if again.StatusCode != http.StatusUnauthorized || againBody.Error.Code != contract.CodeReplay {
				replays++
			}
			mu.Unlock()
			if status != http.StatusOK {
				mu.Lock()
				defer mu.Unlock()
				if status == http.StatusForbidden && eb.Error.Code == contract.CodeQuotaExceeded {
					refused++
				} else {
					t.Errorf("token: %d %+v", status, eb)
				}
				return
			}
			claims := tokenClaims(t, tok.Token)
			mu.Lock()
			if tokenIDs[tok.ID] {
				t.Errorf("token id %s issued twice", tok.ID)
			}
			tokenIDs[tok.ID] = true
			granted += claims.Quota.MaxSamples
			leases++
			mu.Unlock()

			// Two objects presigned through the next replica.
			sc := replicaClient(t, b, key)
			var pr *contract.PresignResponse
			if err := lat.time("POST objects/presign", func() (err error) {
				pr, err = sc.Presign(ctx, c.ContractID, tok.Token, []string{names[i%preObjects], names[(i+7)%preObjects]})
				return err
			}); err != nil {
				t.Errorf("presign: %v", err)
				return
			}
			for _, u := range pr.URLs {
				if u.URL == "" {
					t.Errorf("presign %s: %+v", u.Name, u.Error)
				}
			}

			// Its use, sent to two replicas at once under two idempotency
			// keys: an aggregate batch of its ledger rows (0, 4] (the
			// default), or from every fourth sidecar the events one by one
			// (an older sidecar). Every other aggregate sender races, at
			// the third replica, a batch of rows (2, 6] under another root
			// (a sidecar whose ledger was rebuilt): of the two, exactly one
			// counts, the other is a 409 conflict.
			bt := &contract.MeteringBatch{Contract: c.ContractID, BatchID: fmt.Sprintf("b%d", i), Sidecar: jkt, IssuedAt: time.Now().Unix()}
			aggregate := i%4 != 3
			if aggregate {
				bt.Rows, bt.Aggregates = replicaRows(i, 0, eventsEach, "x"), []contract.MeteringAggregate{replicaAggregate(eventsEach)}
			} else {
				for k := range eventsEach {
					bt.Events = append(bt.Events, contract.MeteringEvent{ID: fmt.Sprintf("e%d-%d", i, k), Time: time.Now().UTC(),
						Kind: contract.EventAccess, Name: names[k], Bytes: 100, Samples: 1, Units: 1, CostNanoUSD: 500000, Epoch: 1, Job: "job1"})
				}
			}
			jws, err := verify.SignMeteringBatch(key, bt)
			if err != nil {
				t.Error(err)
				return
			}
			sends := []struct {
				h   *registrytest.Harness
				jws string
			}{{hs[(i+2)%3], jws}, {a, jws}}
			if aggregate && i%2 == 0 {
				rival := &contract.MeteringBatch{Contract: c.ContractID, BatchID: fmt.Sprintf("r%d", i), Sidecar: jkt, IssuedAt: time.Now().Unix(),
					Rows: replicaRows(i, 2, 2+eventsEach, "y"), Aggregates: []contract.MeteringAggregate{replicaAggregate(eventsEach)}}
				rjws, err := verify.SignMeteringBatch(key, rival)
				if err != nil {
					t.Error(err)
					return
				}
				sends = append(sends, struct {
					h   *registrytest.Harness
					jws string
				}{b, rjws})
			}
			var twice sync.WaitGroup
			var counted, dups, refused int
			for r, send := range sends {
				twice.Go(func() {
					var mr *contract.MeteringResponse
					err := lat.time("POST metering", func() (err error) {
						mr, err = replicaClient(t, send.h, key).PostMetering(ctx, c.ContractID, tok.Token, fmt.Sprintf("idem-%d-%d", i, r), send.jws)
						return err
					})
					mu.Lock()
					defer mu.Unlock()
					switch {
					case err == nil && mr.Accepted == eventsEach && mr.Receipt != nil:
						counted++
						accepted += mr.Accepted
						receipts = append(receipts, mr.Receipt)
					case err == nil && mr.Accepted == 0 && mr.Duplicates == eventsEach:
						dups++
					case len(sends) == 3 && contract.StatusOf(err) == http.StatusConflict && contract.CodeOf(err) == contract.CodeConflict:
						refused++ // the rival lost, or won over the batch
					default:
						t.Errorf("sidecar %d's metering batch %d: %+v, %v; want all %d rows counted, all duplicates, or a conflict",
							i, r, mr, err, eventsEach)
					}
				})
			}
			twice.Wait()
			mu.Lock()
			// Exactly one batch counts; with a rival, the losers are refused
			// (the batch's copy after it is a duplicate when it won).
			if counted != 1 || len(sends) == 2 && dups != 1 || len(sends) == 3 && (refused == 0 || refused+dups != 2) {
				t.Errorf("sidecar %d: of %d batches %d counted, %d duplicates, %d refused; want exactly one counted", i, len(sends), counted, dups, refused)
			}
			conflicts += refused
			mu.Unlock()
			mu.Lock()
			presigned += len(pr.URLs)
			mu.Unlock()
		})
	}
	work.Wait()
	wall := time.Since(start)
	close(stop)
	bg.Wait()
	lat.report(t, wall)
	if t.Failed() {
		t.FailNow()
	}

	// Proofs: none accepted twice. Quota: exactly the leases it holds.
	if replays != 0 {
		t.Errorf("%d replayed DPoP proofs were accepted by another replica", replays)
	}
	if granted != quota || leases != quota/askSamples || refused != sidecars-quota/askSamples {
		t.Errorf("leases: %d granted %d samples, %d refused; want %d leases of %d (%d samples), %d refused",
			leases, granted, refused, quota/askSamples, askSamples, quota, sidecars-quota/askSamples)
	}
	// Metering: every event counted once, on every replica's totals.
	want := int64(leases * eventsEach)
	if int64(accepted) != want {
		t.Errorf("metering answers accepted %d events, want %d", accepted, want)
	}
	t.Logf("metering: %d events counted once, %d rival batches refused", accepted, conflicts)
	for i, cl := range clients {
		tot, err := cl.MeteringTotals(ctx, c.ContractID, "", -1)
		if err != nil {
			t.Fatal(err)
		}
		if tot.Events != want || tot.AccessBytes != 100*want || tot.CostNanoUSD != 500000*want || tot.PresignedObjects != int64(presigned) {
			t.Errorf("replica %d totals: %d events, %d bytes, %d nano-USD, %d presigned; want %d, %d, %d, %d",
				i, tot.Events, tot.AccessBytes, tot.CostNanoUSD, tot.PresignedObjects, want, 100*want, 500000*want, presigned)
		}
	}

	// The log: one chain, and every checkpoint a prefix of it.
	var entries [][]byte
	for since := uint64(0); ; {
		page, err := clients[1].Events(ctx, c.ContractID, since, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Entries) == 0 {
			break
		}
		for _, we := range page.Entries {
			if we.Seq != uint64(len(entries))+1 {
				t.Fatalf("entry %d after %d entries: the log has a gap or a repeat", we.Seq, len(entries))
			}
			entries = append(entries, we.Entry)
			since = we.Seq
		}
	}
	wantSize := 1 + preObjects + len(contributors)*appendsEach + leases
	if len(entries) != wantSize {
		t.Errorf("log has %d entries, want %d (terms, %d objects, %d metering batches)", len(entries), wantSize, preObjects+len(contributors)*appendsEach, leases)
	}
	roots := map[uint64][]byte{0: rfc6962.DefaultHasher.EmptyRoot()}
	rng := (&mcompact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	prev := contract.ZeroHash
	for i, raw := range entries {
		e, err := contract.DecodeEntry(raw)
		if err != nil {
			t.Fatal(err)
		}
		if e.PrevHash != hex.EncodeToString(prev) {
			t.Fatalf("entry %d does not chain to entry %d", i+1, i)
		}
		prev = contract.LeafHash(raw)
		if err := rng.Append(prev, nil); err != nil {
			t.Fatal(err)
		}
		if roots[rng.End()], err = rng.GetRootHash(nil); err != nil {
			t.Fatal(err)
		}
	}
	v, err := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, raw []byte) *verify.Checkpoint {
		cp, err := v.Parse(raw)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if root, ok := roots[cp.Size]; !ok || !bytes.Equal(root, cp.Hash) {
			t.Fatalf("%s of size %d is not a prefix of the log", what, cp.Size)
		}
		return cp
	}
	for i, cl := range clients {
		cp, err := cl.Checkpoint(ctx, c.ContractID)
		if err != nil {
			t.Fatal(err)
		}
		if check(fmt.Sprintf("replica %d's checkpoint", i), cp).Size != uint64(len(entries)) {
			t.Errorf("replica %d serves a checkpoint behind the log", i)
		}
	}
	var sizes []uint64
	for i, raw := range served {
		sizes = append(sizes, check(fmt.Sprintf("served checkpoint %d", i), raw).Size)
	}
	// Consecutive served checkpoints: the later extends the earlier, by
	// the consistency proof a replica serves.
	for i := 1; i < len(sizes); i += max(1, len(sizes)/20) {
		from, to := min(sizes[i-1], sizes[i]), max(sizes[i-1], sizes[i])
		if from == 0 || from == to {
			continue
		}
		p, err := clients[i%3].ConsistencyProof(ctx, c.ContractID, from, to)
		if err != nil {
			t.Fatal(err)
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, from, to, p.Hashes, roots[from], roots[to]); err != nil {
			t.Fatalf("checkpoint %d → %d: %v", from, to, err)
		}
	}
	for _, r := range receipts {
		cp := check("receipt checkpoint", []byte(r.Checkpoint))
		if !bytes.Equal(r.Leaf, contract.LeafHash(entries[r.Index])) {
			t.Fatalf("receipt of entry %d names another leaf", r.Index+1)
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, r.Index, cp.Size, r.Leaf, r.Inclusion, cp.Hash); err != nil {
			t.Fatalf("receipt of entry %d: %v", r.Index+1, err)
		}
	}
	if len(receipts) != leases {
		t.Errorf("%d receipts for %d metering entries", len(receipts), leases)
	}
	t.Logf("log: %d entries, %d served checkpoints and %d receipts verified", len(entries), len(served), len(receipts))
}

// replicaRows are sidecar i's ledger rows (after, last], whose root tag
// names.
func replicaRows(i int, after, last int64, tag string) *contract.RowCommitment {
	root := sha256.Sum256(fmt.Appendf(nil, "%s-%d", tag, i))
	return &contract.RowCommitment{Ledger: fmt.Sprintf("ledger-%d", i), AfterSeq: after, LastSeq: last, Count: last - after, Root: root[:]}
}

// replicaAggregate sums n served reads of one 100-byte sample each.
func replicaAggregate(n int64) contract.MeteringAggregate {
	now := time.Now().UTC()
	return contract.MeteringAggregate{Kind: contract.EventAccess, Outcome: contract.OutcomeServed, Job: "job1", Epoch: 1,
		Events: n, Samples: n, Bytes: 100 * n, Units: n, CostNanoUSD: 500000 * n, FirstTime: now.Add(-time.Second), LastTime: now}
}

// tokenClaims reads a capability token's claims (the registry signed
// them; this test only reads the grant).
func tokenClaims(t *testing.T, tok string) *contract.CapabilityClaims {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatal(errors.New("token is no JWS"))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c contract.CapabilityClaims
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return &c
}
