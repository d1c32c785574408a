package verify_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/verify/verifytest"
)

// fixedEntries is a deterministic 4-entry log of fuzzContract by the fixed
// sidecar key acting as contributor "did:example:alice" (Ed25519 signatures
// are deterministic): three contributions and a redaction of the second.
func fixedEntries(tb testing.TB) [][]byte {
	k := jwk(tb, fuzzSidecarJWK)
	var raws [][]byte
	prev := hex.EncodeToString(contract.ZeroHash)
	for i := 1; i <= 4; i++ {
		a := &contract.Attestation{Issuer: "did:example:alice", Subject: fuzzContract, IssuedAt: fuzzIAT, ID: fmt.Sprintf("j%d", i), Type: contract.Contribution}
		if i == 4 {
			a.Type, a.Redaction = contract.Redaction, &contract.RedactionClaim{Name: "f/2"}
		} else {
			a.Object = verifytest.Object(fmt.Sprintf("f/%d", i), []byte{byte(i)})
		}
		jws, err := verify.SignAttestation(k, a)
		if err != nil {
			tb.Fatal(err)
		}
		raw, err := contract.EncodeEntry(&contract.Entry{V: 1, Seq: uint64(i), PrevHash: prev, Time: time.Unix(fuzzIAT, 0).UTC(),
			Contract: fuzzContract, Kind: contract.EntryAttestation, JWS: jws})
		if err != nil {
			tb.Fatal(err)
		}
		prev = hex.EncodeToString(contract.LeafHash(raw))
		raws = append(raws, raw)
	}
	return raws
}

func stateSeeds(tb testing.TB) [][]byte {
	c, _ := verify.NewChain(fuzzContract, nil)
	var out [][]byte
	for i, raw := range fixedEntries(tb) {
		if _, err := c.Append(uint64(i+1), raw); err != nil {
			tb.Fatal(err)
		}
		b, _ := json.Marshal(c.State())
		out = append(out, b)
	}
	return append(out, []byte(`{"size":0}`), []byte(`{"size":3,"last_leaf":"AAAA","range":[]}`), []byte(`{"size":18446744073709551615}`), []byte(`null`))
}

// FuzzLogState: a persisted log state either restores a chain whose State
// round-trips, or is refused; it never panics, and the restored chain goes
// on appending (or refusing) without panicking.
func FuzzLogState(f *testing.F) {
	for _, s := range stateSeeds(f) {
		f.Add(s)
	}
	next := fixedEntries(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var st verify.LogState
		if json.Unmarshal(data, &st) != nil {
			return
		}
		c, err := verify.NewChain(fuzzContract, &st)
		if err != nil {
			return
		}
		root := c.Root()
		again := c.State()
		c2, err := verify.NewChain(fuzzContract, &again)
		if err != nil || !slices.Equal(c2.Root(), root) || c2.Size() != c.Size() {
			t.Fatalf("state does not round-trip: %v", err)
		}
		if c.Size() < uint64(len(next)) {
			c.Append(c.Size()+1, next[c.Size()])
		}
	})
}

func jwksSeeds() [][]byte {
	reg, _ := json.Marshal(verify.PublicJWKS(mustJWK(fuzzRegistryJWK), mustJWK(fuzzRegistryES)))
	priv, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{*mustJWK(fuzzRegistryJWK)}})
	return [][]byte{reg, priv, []byte(`{"keys":[]}`), []byte(`{"keys":[{"kty":"oct","k":"AAAA","kid":"x"}]}`), []byte(`{}`)}
}

func mustJWK(s string) *jose.JSONWebKey {
	var k jose.JSONWebKey
	if err := json.Unmarshal([]byte(s), &k); err != nil {
		panic(err)
	}
	return &k
}

type setFetcher struct{ set *jose.JSONWebKeySet }

func (f setFetcher) JWKS(context.Context, string) (*jose.JSONWebKeySet, error) { return f.set, nil }

// FuzzKeySet: a contributor's key set, inline or fetched, is used only if
// it holds public keys with kids; nothing panics.
func FuzzKeySet(f *testing.F) {
	for _, s := range jwksSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var set jose.JSONWebKeySet
		if json.Unmarshal(data, &set) != nil {
			return
		}
		kid := ""
		if len(set.Keys) > 0 {
			kid = set.Keys[0].KeyID
		}
		check := func(got *jose.JSONWebKeySet, err error) {
			if err != nil {
				return
			}
			for _, k := range got.Keys {
				if !k.IsPublic() || k.KeyID == "" {
					t.Fatalf("key set with a private or kid-less key accepted: %+v", k)
				}
			}
			if len(got.Key(kid)) == 0 {
				t.Fatalf("returned a set without kid %q", kid)
			}
		}
		c := &contract.Contract{ContractID: fuzzContract, Contributors: []contract.Contributor{{ID: "a", JWKS: &set}}}
		if ks, err := verify.NewKeyStore(c, nil); err == nil {
			check(ks.Keys(context.Background(), "a", kid))
		}
		check(verify.NewJWKSCache("https://keys.example/jwks.json", setFetcher{&set}).Keys(context.Background(), kid))
	})
}

func pageSeeds(tb testing.TB) [][]byte {
	raws := fixedEntries(tb)
	var out [][]byte
	page := func(ws ...contract.WireEntry) []byte {
		b, _ := json.Marshal(contract.EventsPage{Entries: ws, TreeSize: 4})
		return b
	}
	var all []contract.WireEntry
	for i, raw := range raws {
		all = append(all, contract.WireEntry{Seq: uint64(i + 1), Entry: raw})
	}
	out = append(out, page(all...), page(all[:2]...), page(all[1:]...), page(all[0], all[2], all[1], all[3]))
	bad := slices.Clone(all)
	bad[2] = contract.WireEntry{Seq: 3, Entry: []byte(`{"v":1}`)}
	out = append(out, page(bad...), []byte(`{"entries":null}`), []byte(`[]`))
	return out
}

// FuzzReplayPage: whatever page the registry serves for an honest signed
// checkpoint, the follower never panics, and when it accepts the page its
// manifest is exactly the honest one.
func FuzzReplayPage(f *testing.F) {
	for _, s := range pageSeeds(f) {
		f.Add(s)
	}
	alice := verifytest.NewContributor(f, "did:example:alice", jose.EdDSA)
	alice.Key = jwk(f, fuzzSidecarJWK)
	log := verifytest.NewLog(f, fuzzContract, alice.Info())
	for _, raw := range fixedEntries(f) {
		log.AppendRaw(raw)
	}
	store, err := verify.OpenStore(filepath.Join(f.TempDir(), verify.StateFile))
	if err != nil {
		f.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, data []byte) {
		var p contract.EventsPage
		if json.Unmarshal(data, &p) != nil {
			return
		}
		if err := store.Reset(ctx, fuzzContract); err != nil {
			t.Fatal(err)
		}
		src := &tamper{LogSource: log, page: func(got *contract.EventsPage) { *got = p }}
		fl, err := verify.NewFollower(ctx, verify.FollowerConfig{Contract: log.Contract, Source: src, Store: store,
			Now: func() time.Time { return time.Now() }}, verify.WithTrustOnFirstUse())
		if err != nil {
			t.Fatal(err)
		}
		if err := fl.Sync(ctx); err != nil {
			if fl.Ready() == nil {
				t.Fatalf("ready after a failed sync: %v", err)
			}
			return
		}
		var names []string
		for _, e := range fl.Manifest().Entries() {
			names = append(names, e.Name)
		}
		if !slices.Equal(names, []string{"f/1", "f/3"}) {
			t.Fatalf("accepted page gives manifest %v", names)
		}
		if _, err := fl.Lookup("f/2"); !errors.Is(err, verify.ErrRedacted) {
			t.Fatalf("f/2: %v", err)
		}
	})
}
