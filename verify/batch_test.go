package verify_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/verify/verifytest"
)

func batchObjs(prefix string, n int) []contract.ObjectClaim {
	out := make([]contract.ObjectClaim, n)
	for i := range out {
		name := fmt.Sprintf("%s/%d", prefix, i)
		out[i] = *verifytest.Object(name, []byte(name))
	}
	return out
}

// Every object of a verified batch is in the manifest, introduced by the
// batch's entry; one member can be redacted alone, and a restarted
// follower reads the same from its state.
func TestFollowerBatchMembersAndRedactionOfOne(t *testing.T) {
	fx := newFixture(t)
	objs := batchObjs("b", 5)
	jws, manifest := fx.alice.Batch(t, cid, objs)
	seq := fx.log.AppendBatch(t, jws, manifest)
	fx.log.AppendAttestation(t, fx.alice.Redaction(t, cid, "b/3", seq))
	f := fx.follower(t, verify.WithTrustOnFirstUse())
	mustSync(t, f)
	check := func(f *verify.Follower) {
		t.Helper()
		for i, o := range objs {
			got, err := f.Lookup(o.Name)
			if i == 3 {
				if !errors.Is(err, verify.ErrRedacted) {
					t.Fatalf("Lookup(%s) = %v, want redacted", o.Name, err)
				}
				continue
			}
			if err != nil || got.ObjectClaim != o || got.Seq != seq || got.Issuer != fx.alice.ID {
				t.Fatalf("Lookup(%s) = %+v, %v; want %+v from entry %d", o.Name, got, err, o, seq)
			}
		}
		if st := f.Status(); st.Objects != 4 || st.Redacted != 1 {
			t.Fatalf("status %+v: want 4 objects, 1 redacted", st)
		}
	}
	check(f)
	if got := fx.purged(); !slices.Equal(got, []string{"b/3"}) {
		t.Fatalf("purged %v, want [b/3]", got)
	}
	check(fx.follower(t)) // restarted: from the persisted state
}

// The registry serves manifest bytes that are not the ones the batch
// attestation signs the digest of: the sync stops before the batch and
// none of its names is served; what was verified before stays served.
// Once the right bytes are served, the batch verifies.
func TestFollowerBatchManifestNotTheAttestedBytes(t *testing.T) {
	fx := newFixture(t)
	contribute(t, fx.log, fx.alice, "early", 1)
	f := fx.follower(t, verify.WithTrustOnFirstUse())
	mustSync(t, f)

	objs := batchObjs("b", 3)
	jws, manifest := fx.alice.Batch(t, cid, objs)
	fx.log.AppendBatch(t, jws, manifest)
	digest := contract.ManifestDigest(manifest)
	evil := slices.Clone(objs)
	evil[0] = *verifytest.Object("b/0", []byte("poisoned"))
	forged, err := contract.EncodeBatchManifest(&contract.BatchManifest{V: 1, Contract: cid, Objects: evil})
	if err != nil {
		t.Fatal(err)
	}
	if len(forged) != len(manifest) {
		t.Fatalf("test setup: forged manifest of another size (%d, %d)", len(forged), len(manifest))
	}
	for name, b := range map[string][]byte{"same size, other bytes": forged, "truncated": manifest[:len(manifest)-1]} {
		t.Run(name, func(t *testing.T) {
			fx.log.PutManifest(digest, b)
			if err := f.Sync(context.Background()); !errors.Is(err, contract.ErrManifestDigest) {
				t.Fatalf("sync = %v, want ErrManifestDigest", err)
			}
			if _, err := f.Lookup("b/0"); !errors.Is(err, verify.ErrNotFound) {
				t.Fatalf("Lookup(b/0) = %v, want not found", err)
			}
			if _, err := f.Lookup("early-0"); err != nil {
				t.Fatalf("earlier object: %v", err)
			}
		})
	}
	if n := counter(t, fx, "provgate_log_refusals_total", "reason", "batch_manifest_digest"); n < 2 {
		t.Errorf("refusals counted %v, want at least 2", n)
	}
	fx.log.PutManifest(digest, manifest)
	mustSync(t, f)
	if got, err := f.Lookup("b/0"); err != nil || got.DecodedSHA256 != objs[0].DecodedSHA256 {
		t.Fatalf("Lookup(b/0) = %+v, %v", got, err)
	}
}

// A batch in the log that names another contributor's object: the
// registry must have refused it, so the log is quarantined.
func TestFollowerBatchClaimingAnothersNameQuarantines(t *testing.T) {
	bob := verifytest.NewContributor(t, "did:example:bob", jose.ES256)
	fx := newFixture(t, bob.Info())
	contribute(t, fx.log, fx.alice, "a", 2)
	objs := append(batchObjs("bob", 2), *verifytest.Object("a-1", []byte("poison")))
	bj, bm := bob.Batch(t, cid, objs)
	fx.log.AppendBatch(t, bj, bm)
	f := fx.follower(t, verify.WithTrustOnFirstUse())
	err := f.Sync(context.Background())
	var oe *verify.OwnershipError
	if !errors.Is(err, verify.ErrQuarantined) || !errors.As(err, &oe) || oe.Name != "a-1" || oe.Owner != fx.alice.ID {
		t.Fatalf("sync = %v, want a quarantine for a-1 owned by alice", err)
	}
	if _, err := f.Lookup("bob/0"); !errors.Is(err, verify.ErrQuarantined) {
		t.Fatalf("Lookup = %v, want quarantined", err)
	}
}

// Forged batch attestations in the log (another key under alice's kid,
// alg none, HS256 keyed with her public key) are refused entries: none of their names is served, and the
// entries after them verify.
func TestFollowerForgedBatchRefused(t *testing.T) {
	fx := newFixture(t)
	a, manifest, err := verify.NewBatch(fx.alice.ID, cid, batchObjs("f", 2))
	if err != nil {
		t.Fatal(err)
	}
	k, _ := verify.GenerateKey(jose.EdDSA)
	k.KeyID = fx.alice.Key.KeyID
	wrongKey, err := verify.Sign(k, contract.TypeAttestation, a, false)
	if err != nil {
		t.Fatal(err)
	}
	none := rawJWS(t, map[string]any{"alg": "none", "kid": fx.alice.Key.KeyID, "typ": contract.TypeAttestation}, a, nil)
	pub, _ := json.Marshal(fx.alice.Key.Public())
	hs, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: pub},
		(&jose.SignerOptions{}).WithType(contract.TypeAttestation).WithHeader("kid", fx.alice.Key.KeyID))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(a)
	obj, err := hs.Sign(body)
	if err != nil {
		t.Fatal(err)
	}
	hs256, _ := obj.CompactSerialize()
	fx.log.AppendBatch(t, wrongKey, manifest)
	fx.log.AppendBatch(t, none, manifest)
	fx.log.AppendBatch(t, hs256, manifest)
	contribute(t, fx.log, fx.alice, "after", 1)
	f := fx.follower(t, verify.WithTrustOnFirstUse())
	mustSync(t, f)
	if _, err := f.Lookup("f/0"); !errors.Is(err, verify.ErrNotFound) {
		t.Fatalf("Lookup(f/0) = %v, want not found", err)
	}
	if _, err := f.Lookup("after-0"); err != nil {
		t.Fatalf("Lookup(after-0): %v", err)
	}
	if st := f.Status(); st.Rejected != 3 {
		t.Fatalf("rejected %d, want 3", st.Rejected)
	}
}

// A manifest that is the attested bytes but not a valid manifest for the
// contract (the contributor signed it) refuses the entry, not the log.
func TestFollowerBatchInvalidManifestRefusesEntry(t *testing.T) {
	fx := newFixture(t)
	raw, err := contract.EncodeBatchManifest(&contract.BatchManifest{V: 1, Contract: "did:example:other", Objects: batchObjs("x", 1)})
	if err != nil {
		t.Fatal(err)
	}
	a := &contract.Attestation{Issuer: fx.alice.ID, Subject: cid, IssuedAt: time.Now().Unix(), ID: "j-batch", Type: contract.Batch,
		Batch: &contract.BatchClaim{ManifestSHA256: contract.ManifestDigest(raw), ManifestSize: int64(len(raw)), Objects: 1}}
	fx.log.AppendBatch(t, fx.alice.Sign(t, a), raw)
	contribute(t, fx.log, fx.alice, "after", 1)
	f := fx.follower(t, verify.WithTrustOnFirstUse())
	mustSync(t, f)
	if _, err := f.Lookup("x/0"); !errors.Is(err, verify.ErrNotFound) {
		t.Fatalf("Lookup(x/0) = %v, want not found", err)
	}
	if n := counter(t, fx, "provgate_log_entries_rejected_total", "reason", "batch_manifest_invalid"); n != 1 {
		t.Fatalf("rejections counted %v, want 1", n)
	}
}

// A retroactive revocation of the key that signed a batch drops all its
// members; the name ownership stays.
func TestFollowerRetroactiveRevocationDropsBatch(t *testing.T) {
	fx := newFixture(t)
	jws, manifest := fx.alice.Batch(t, cid, batchObjs("r", 3))
	fx.log.AppendBatch(t, jws, manifest)
	f := fx.follower(t, verify.WithTrustOnFirstUse())
	mustSync(t, f)
	fx.log.AppendAttestation(t, fx.alice.Revocation(t, cid, fx.alice.Key.KeyID, true))
	mustSync(t, f)
	for i := range 3 {
		if _, err := f.Lookup(fmt.Sprintf("r/%d", i)); !errors.Is(err, verify.ErrNotFound) {
			t.Fatalf("Lookup(r/%d) = %v, want not found", i, err)
		}
	}
	if got := fx.purged(); len(got) != 3 || !strings.HasPrefix(got[0], "r/") {
		t.Fatalf("purged %v", got)
	}
}

// A later batch gives live names a new version (their old bytes are
// purged), brings a redacted name back, and adds new ones; the counts
// follow.
func TestFollowerBatchReplacesAndRestores(t *testing.T) {
	fx := newFixture(t)
	jws, manifest := fx.alice.Batch(t, cid, batchObjs("a", 3))
	fx.log.AppendBatch(t, jws, manifest)
	fx.log.AppendAttestation(t, fx.alice.Redaction(t, cid, "a/1", 0))
	f := fx.follower(t, verify.WithTrustOnFirstUse())
	mustSync(t, f)
	if st := f.Status(); st.Objects != 2 || st.Redacted != 1 {
		t.Fatalf("status %+v: want 2 objects, 1 redacted", st)
	}
	objs := []contract.ObjectClaim{*verifytest.Object("a/0", []byte("v2")), *verifytest.Object("a/1", []byte("back")), *verifytest.Object("a/9", []byte("new"))}
	jws, manifest = fx.alice.Batch(t, cid, objs)
	seq := fx.log.AppendBatch(t, jws, manifest)
	mustSync(t, f)
	for _, o := range objs {
		if got, err := f.Lookup(o.Name); err != nil || got.ObjectClaim != o || got.Seq != seq {
			t.Fatalf("Lookup(%s) = %+v, %v; want %+v from entry %d", o.Name, got, err, o, seq)
		}
	}
	if st := f.Status(); st.Objects != 4 || st.Redacted != 0 {
		t.Fatalf("status %+v: want 4 objects, 0 redacted", st)
	}
	if got := fx.purged(); !slices.Equal(got, []string{"a/1", "a/0"}) {
		t.Fatalf("purged %v, want [a/1 a/0]", got)
	}
}

// blockingManifests holds batch manifest fetches until released.
type blockingManifests struct {
	*verifytest.Log
	fetching chan struct{}
	release  chan struct{}
}

func (b *blockingManifests) BatchManifest(ctx context.Context, id, digest string) ([]byte, error) {
	select {
	case b.fetching <- struct{}{}:
	default:
	}
	select {
	case <-b.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return b.Log.BatchManifest(ctx, id, digest)
}

// While a sync is in the middle of a batch (its transaction open on the
// state database, waiting for the registry), lookups answer from the last
// committed state at once, and the new names appear when it commits.
func TestFollowerLookupsDuringALongSync(t *testing.T) {
	fx := newFixture(t)
	contribute(t, fx.log, fx.alice, "early", 1)
	src := &blockingManifests{Log: fx.log, fetching: make(chan struct{}, 1), release: make(chan struct{})}
	f := mustFollower(t, fx.config(src), verify.WithTrustOnFirstUse())
	mustSync(t, f)
	jws, manifest := fx.alice.Batch(t, cid, batchObjs("b", 100))
	fx.log.AppendBatch(t, jws, manifest)
	done := make(chan error, 1)
	go func() { done <- f.Sync(context.Background()) }()
	select {
	case <-src.fetching:
	case <-time.After(10 * time.Second):
		t.Fatal("the sync never fetched the manifest")
	}
	looked := make(chan error, 1)
	go func() {
		_, err := f.Lookup("early-0")
		if err == nil {
			_, err = f.Lookup("b/0")
			if errors.Is(err, verify.ErrNotFound) {
				err = nil
			}
		}
		looked <- err
	}()
	select {
	case err := <-looked:
		if err != nil {
			t.Fatalf("lookups during the sync: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a lookup waited for the sync")
	}
	close(src.release)
	if err := <-done; err != nil {
		t.Fatalf("sync: %v", err)
	}
	if _, err := f.Lookup("b/99"); err != nil {
		t.Fatalf("after the sync: %v", err)
	}
}

// A batch that gives live names of its contributor new versions, in a
// state where no name was ever redacted (so no owner is kept apart from
// the manifest rows): the new versions replace the old (purged), the
// counts count each name once, the names stay their owner's, and a
// restart sees the same.
func TestFollowerBatchReplacesLiveNames(t *testing.T) {
	bob := verifytest.NewContributor(t, "did:example:bob", jose.ES256)
	fx := newFixture(t, bob.Info())
	jws, manifest := fx.alice.Batch(t, cid, batchObjs("a", 3))
	first := fx.log.AppendBatch(t, jws, manifest)
	f := fx.follower(t, verify.WithTrustOnFirstUse())
	mustSync(t, f)
	objs := []contract.ObjectClaim{*verifytest.Object("a/0", []byte("v2")), *verifytest.Object("a/2", []byte("v2")), *verifytest.Object("a/7", []byte("new"))}
	jws, manifest = fx.alice.Batch(t, cid, objs)
	seq := fx.log.AppendBatch(t, jws, manifest)
	mustSync(t, f)
	for _, o := range objs {
		if got, err := f.Lookup(o.Name); err != nil || got.ObjectClaim != o || got.Seq != seq {
			t.Fatalf("Lookup(%s) = %+v, %v; want %+v from entry %d", o.Name, got, err, o, seq)
		}
	}
	if got, err := f.Lookup("a/1"); err != nil || got.Seq != first {
		t.Fatalf("Lookup(a/1) = %+v, %v; want the first batch's", got, err)
	}
	if st := f.Status(); st.Objects != 4 || st.Redacted != 0 {
		t.Fatalf("status %+v: want 4 objects, 0 redacted", st)
	}
	if got := fx.purged(); !slices.Equal(got, []string{"a/0", "a/2"}) {
		t.Fatalf("purged %v, want [a/0 a/2]", got)
	}
	// A replaced name is still alice's: bob's batch naming it is one the
	// registry must have refused.
	bj, bm := bob.Batch(t, cid, []contract.ObjectClaim{*verifytest.Object("b/0", []byte("b")), *verifytest.Object("a/2", []byte("poison"))})
	bseq := fx.log.AppendBatch(t, bj, bm)
	g := fx.follower(t, verify.WithTrustOnFirstUse())
	if st := g.Status(); st.Objects != 4 {
		t.Fatalf("after restart: status %+v, want 4 objects", st)
	}
	err := g.Sync(t.Context())
	var oe *verify.OwnershipError
	if !errors.Is(err, verify.ErrQuarantined) || !errors.As(err, &oe) || oe.Seq != bseq || oe.Name != "a/2" || oe.Owner != fx.alice.ID || oe.OwnedSince != first {
		t.Fatalf("sync = %v (%+v), want a quarantine for a/2 owned by alice since entry %d", err, oe, first)
	}
}
