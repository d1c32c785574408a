package verify_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/verify/verifytest"
)

func tarOf(tb testing.TB, members ...string) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := 0; i+1 < len(members); i += 2 {
		if err := tw.WriteHeader(&tar.Header{Name: members[i], Mode: 0o644, Size: int64(len(members[i+1])), Typeflag: tar.TypeReg}); err != nil {
			tb.Fatal(err)
		}
		tw.Write([]byte(members[i+1]))
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func shardClaim(tb testing.TB, name string, b []byte) *contract.ObjectClaim {
	tb.Helper()
	o := verifytest.Object(name, b)
	x, err := contract.BuildShardIndex(bytes.NewReader(b), nil)
	if err != nil {
		tb.Fatal(err)
	}
	o.Shard = x
	return o
}

// A shard's member index, attested in a batch or a single contribution,
// is kept with the verified state and read back for the live version of
// the name, also after a restart; a plain object has none.
func TestFollowerKeepsShardIndex(t *testing.T) {
	fx := newFixture(t)
	s1 := shardClaim(t, "shard-000000.tar", tarOf(t, "k1.jpg", "one", "k1.cls", "1", "k2.jpg", "two"))
	s2 := shardClaim(t, "shard-000001.tar", tarOf(t, "k3.jpg", "three"))
	jws, manifest := fx.alice.Batch(t, cid, []contract.ObjectClaim{*s1, *verifytest.Object("plain.txt", []byte("p"))})
	fx.log.AppendBatch(t, jws, manifest)
	fx.log.AppendAttestation(t, fx.alice.Contribution(t, cid, s2))
	f := fx.follower(t, verify.WithTrustOnFirstUse())
	mustSync(t, f)
	check := func(f *verify.Follower) {
		t.Helper()
		for _, want := range []*contract.ObjectClaim{s1, s2} {
			e, err := f.Lookup(want.Name)
			if err != nil {
				t.Fatal(err)
			}
			x, err := f.ShardIndex(context.Background(), &e)
			if err != nil {
				t.Fatalf("ShardIndex(%s): %v", want.Name, err)
			}
			if err := want.Shard.Equal(x); err != nil {
				t.Fatalf("ShardIndex(%s): %v", want.Name, err)
			}
		}
		e, err := f.Lookup("plain.txt")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.ShardIndex(context.Background(), &e); !errors.Is(err, verify.ErrNotShard) {
			t.Fatalf("ShardIndex(plain.txt) = %v, want ErrNotShard", err)
		}
	}
	check(f)
	check(fx.follower(t))
}

// CheckShard: a shard whose bytes verify against their digest but not
// against the attested index (a member's sha256, offset, size or name
// differs, a member is missing or added, or the bytes are no tar) is a
// ShardMismatchError.
func TestCheckShardRefusesAnIndexThatIsNotTheTar(t *testing.T) {
	b := tarOf(t, "k1.jpg", "one", "k1.cls", "1", "k2.jpg", "two")
	good := shardClaim(t, "s.tar", b).Shard
	if err := verify.CheckShard(bytes.NewReader(b), "s.tar", good, nil); err != nil {
		t.Fatalf("the true index: %v", err)
	}
	other := tarOf(t, "k1.jpg", "ONE", "k1.cls", "1", "k2.jpg", "two") // same layout, other bytes
	for name, tc := range map[string]struct {
		tar  []byte
		edit func(x *contract.ShardIndex)
	}{
		"member sha mismatch":   {other, nil},
		"index sha edited":      {b, func(x *contract.ShardIndex) { x.Members[1].SHA256 = x.Members[0].SHA256 }},
		"offset shifted":        {b, func(x *contract.ShardIndex) { x.Members[2].Offset += 512 }},
		"size changed":          {b, func(x *contract.ShardIndex) { x.Members[0].Size-- }},
		"name changed":          {b, func(x *contract.ShardIndex) { x.Members[2].Name = "k9.jpg"; x.Samples = 2 }},
		"member left out":       {b, func(x *contract.ShardIndex) { x.Members = x.Members[:2]; x.Samples = 1 }},
		"not a tar":             {bytes.Repeat([]byte("x"), len(b)), nil},
		"duplicate member name": {tarOf(t, "k1.jpg", "one", "k1.jpg", "1", "k2.jpg", "two"), nil},
	} {
		t.Run(name, func(t *testing.T) {
			x := *good
			x.Members = append([]contract.ShardMember(nil), good.Members...)
			if tc.edit != nil {
				tc.edit(&x)
			}
			err := verify.CheckShard(bytes.NewReader(tc.tar), "s.tar", &x, nil)
			var me *verify.ShardMismatchError
			if !errors.As(err, &me) || !errors.Is(err, verify.ErrShardMismatch) {
				t.Fatalf("CheckShard = %v, want a ShardMismatchError", err)
			}
		})
	}
}

// A batch whose manifest carries a forged shard index (here: more samples
// than keys, which would overbill every licensee) is refused on replay
// even if a registry appended it: the shard is not served, the entries
// around it are.
func TestFollowerRefusesAForgedShardIndex(t *testing.T) {
	fx := newFixture(t)
	forged := shardClaim(t, "forged.tar", tarOf(t, "k1.jpg", "one", "k1.cls", "1"))
	forged.Shard.Samples = 2
	raw, err := json.Marshal(&contract.BatchManifest{V: contract.BatchManifestVersion, Contract: cid, Objects: []contract.ObjectClaim{*forged}})
	if err != nil {
		t.Fatal(err)
	}
	a := &contract.Attestation{Issuer: fx.alice.ID, Subject: cid, IssuedAt: time.Now().Unix(), ID: "forged-shard", Type: contract.Batch,
		Batch: &contract.BatchClaim{ManifestSHA256: contract.ManifestDigest(raw), ManifestSize: int64(len(raw)), Objects: 1}}
	fx.log.AppendBatch(t, fx.alice.Sign(t, a), raw)
	fx.log.AppendAttestation(t, fx.alice.Contribution(t, cid, verifytest.Object("after.txt", []byte("after"))))
	f := fx.follower(t, verify.WithTrustOnFirstUse())
	mustSync(t, f)
	if _, err := f.Lookup("forged.tar"); !errors.Is(err, verify.ErrNotFound) {
		t.Fatalf("Lookup(forged.tar) = %v, want not found", err)
	}
	if _, err := f.Lookup("after.txt"); err != nil {
		t.Fatalf("the entry after the forged one: %v", err)
	}
	if st := f.Status(); st.Rejected != 1 {
		t.Fatalf("status %+v: want 1 rejected entry", st)
	}
}
