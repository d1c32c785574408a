package verify_test

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/verify"
)

// cosigner is a witness key: it cosigns checkpoint notes.
type cosigner struct {
	signer note.Signer
	vkey   string
}

func newCosigner(t testing.TB, name string) *cosigner {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := fnote.NewSignerForCosignatureV1(skey)
	if err != nil {
		t.Fatal(err)
	}
	cv, err := fnote.VKeyToCosignatureV1(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return &cosigner{signer: s, vkey: cv}
}

// cosign appends the cosigners' signatures to a signed note.
func cosign(t testing.TB, raw []byte, cs ...*cosigner) []byte {
	t.Helper()
	_, err := note.Open(raw, note.VerifierList())
	var u *note.UnverifiedNoteError
	if !errors.As(err, &u) {
		t.Fatalf("open: %v", err)
	}
	n := u.Note
	n.Sigs, n.UnverifiedSigs = n.UnverifiedSigs, nil
	signers := make([]note.Signer, len(cs))
	for i, c := range cs {
		signers[i] = c.signer
	}
	out, err := note.Sign(n, signers...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestWitnessPolicy(t *testing.T) {
	skey, vkey, err := verify.GenerateCheckpointKey("registry.test")
	if err != nil {
		t.Fatal(err)
	}
	const origin = "registry.test/log/c1"
	s, err := verify.NewCheckpointSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.Sign(origin, 3, make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	v, err := verify.NewCheckpointVerifier(origin, vkey)
	if err != nil {
		t.Fatal(err)
	}
	w1, w2, stranger := newCosigner(t, "w1.test"), newCosigner(t, "w2.test"), newCosigner(t, "w3.test")
	forged := cosign(t, raw, w1)
	// Same key name and hash as w1, another key: a line that names a trusted
	// witness but does not verify.
	impostor := &cosigner{signer: forgedSigner{w1.signer, stranger.signer}}
	now := time.Now()
	for _, tc := range []struct {
		name   string
		note   []byte
		keys   []string
		quorum int
		now    time.Time
		ok     bool
	}{
		{"no cosignature", raw, []string{w1.vkey}, 0, now, false},
		{"one of two, quorum all", cosign(t, raw, w1), []string{w1.vkey, w2.vkey}, 0, now, false},
		{"one of two, quorum 1", cosign(t, raw, w1), []string{w1.vkey, w2.vkey}, 1, now, true},
		{"both", cosign(t, raw, w1, w2), []string{w1.vkey, w2.vkey}, 0, now, true},
		{"an unknown witness does not count", cosign(t, raw, stranger), []string{w1.vkey}, 0, now, false},
		{"stale cosignature", cosign(t, raw, w1), []string{w1.vkey}, 0, now.Add(2 * time.Hour), false},
		{"cosignature from the future", cosign(t, raw, w1), []string{w1.vkey}, 0, now.Add(-time.Hour), false},
		{"invalid line for a trusted key", cosign(t, raw, impostor), []string{w1.vkey}, 0, now, false},
		{"fresh enough", forged, []string{w1.vkey}, 0, now.Add(30 * time.Minute), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := verify.NewWitnessPolicy(tc.keys, tc.quorum)
			if err != nil {
				t.Fatal(err)
			}
			cp, err := v.Parse(tc.note)
			if err != nil {
				t.Fatalf("the log's signatures must still verify with cosignatures appended: %v", err)
			}
			err = p.Check(cp, tc.now, time.Hour)
			if (err == nil) != tc.ok {
				t.Fatalf("Check: %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, verify.ErrWitnessQuorum) {
				t.Fatalf("error %v does not wrap ErrWitnessQuorum", err)
			}
		})
	}
	if _, err := verify.NewWitnessPolicy([]string{w1.vkey, w1.vkey}, 0); err == nil {
		t.Error("a witness listed twice must be refused (it would count twice)")
	}
	if _, err := verify.NewWitnessPolicy([]string{w1.vkey}, 2); err == nil {
		t.Error("a quorum above the number of witnesses must be refused")
	}
}

// forgedSigner signs with one key under another's name and key hash.
type forgedSigner struct{ as, with note.Signer }

func (f forgedSigner) Name() string                    { return f.as.Name() }
func (f forgedSigner) KeyHash() uint32                 { return f.as.KeyHash() }
func (f forgedSigner) Sign(msg []byte) ([]byte, error) { return f.with.Sign(msg) }

// cosigningSource serves a log's checkpoints with the cosigners'
// signatures appended, as a registry with witnesses does.
type cosigningSource struct {
	verify.LogSource
	t  testing.TB
	cs []*cosigner
}

func (s cosigningSource) Checkpoint(ctx context.Context, id string) ([]byte, error) {
	raw, err := s.LogSource.Checkpoint(ctx, id)
	if err != nil || len(s.cs) == 0 {
		return raw, err
	}
	return cosign(s.t, raw, s.cs...), nil
}

// TestFollowerWitnessQuorum: with witnesses required, an uncosigned
// checkpoint is refused (metric and status say why), a cosigned one is
// served, and a state persisted before witnesses were required is not
// served until a cosigned checkpoint is verified.
func TestFollowerWitnessQuorum(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	contribute(t, fx.log, fx.alice, "a", 3)
	w := newCosigner(t, "w1.test")
	policy, err := verify.NewWitnessPolicy([]string{w.vkey}, 0)
	if err != nil {
		t.Fatal(err)
	}

	// Persisted without witnesses.
	mustSync(t, fx.follower(t, verify.WithTrustOnFirstUse()))

	cfg := fx.config(fx.log)
	cfg.Witnesses = policy
	f := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	if st := f.Status(); st.State != verify.StateSyncing {
		t.Fatalf("state persisted before witnesses were required: %s, want syncing", st.State)
	}
	if err := f.Sync(ctx); !errors.Is(err, verify.ErrWitnessQuorum) {
		t.Fatalf("uncosigned checkpoint: Sync = %v, want ErrWitnessQuorum", err)
	}
	if _, err := f.Lookup("a-0"); !errors.Is(err, verify.ErrNotVerified) {
		t.Fatalf("lookup without a cosigned checkpoint: %v, want ErrNotVerified", err)
	}
	if n := counter(t, fx, "provgate_log_refusals_total", "contract", cid, "reason", "witness_quorum"); n != 1 {
		t.Errorf("refusals{reason=witness_quorum} = %v, want 1", n)
	}

	cfg.Source = cosigningSource{LogSource: fx.log, t: t, cs: []*cosigner{w}}
	f = mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	mustSync(t, f)
	if _, err := f.Lookup("a-0"); err != nil {
		t.Fatalf("lookup after a cosigned checkpoint: %v", err)
	}

	// The log's own key is not a witness.
	p, err := verify.NewWitnessPolicy([]string{strings.TrimSpace(fx.log.Contract.Log.CheckpointKey)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Witnesses = p
	if _, err := verify.NewFollower(ctx, cfg); err == nil {
		t.Fatal("a follower that counts the log's own key as a witness must be refused")
	}
}
