package verify_test

import (
	"context"
	"errors"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/verify"
)

// scripted is a key set endpoint whose answers the test sets.
type scripted struct {
	set   *jose.JSONWebKeySet
	err   error
	calls int
}

func (s *scripted) JWKS(context.Context, string) (*jose.JSONWebKeySet, error) {
	s.calls++
	return s.set, s.err
}

func TestJWKSCache(t *testing.T) {
	k1, _ := verify.GenerateKey(jose.EdDSA)
	k2, _ := verify.GenerateKey(jose.ES256)
	src := &scripted{set: verify.PublicJWKS(k1)}
	now := time.Unix(1768471200, 0)
	c := verify.NewJWKSCache("https://keys.example/jwks.json", src)
	c.Now = func() time.Time { return now }
	c.MaxAge, c.MinRefresh = time.Hour, time.Minute
	ctx := context.Background()

	step := func(name, kid string, wantErr error, wantCalls int) {
		t.Helper()
		_, err := c.Keys(ctx, kid)
		if !errors.Is(err, wantErr) || (err == nil) != (wantErr == nil) {
			t.Fatalf("%s: Keys = %v, want %v", name, err, wantErr)
		}
		if src.calls != wantCalls {
			t.Fatalf("%s: %d fetches, want %d", name, src.calls, wantCalls)
		}
	}
	step("first use fetches", k1.KeyID, nil, 1)
	step("cached", k1.KeyID, nil, 1)
	step("unknown kid just after a fetch: rate-limited", k2.KeyID, verify.ErrUnknownKey, 1)
	now = now.Add(time.Minute)
	step("unknown kid refreshes", k2.KeyID, verify.ErrUnknownKey, 2)
	step("unknown kid again: rate-limited", k2.KeyID, verify.ErrUnknownKey, 2)
	now = now.Add(2 * time.Minute)
	src.set = verify.PublicJWKS(k1, k2)
	step("after MinRefresh: refreshed, found", k2.KeyID, nil, 3)

	// Past MaxAge the set is refetched; a failed refetch keeps the old set.
	now = now.Add(2 * time.Hour)
	src.err = errors.New("connection refused")
	step("stale set, fetch fails: old set kept", k1.KeyID, nil, 4)
	// A key removed from the published set stops verifying at the next
	// successful fetch.
	src.err, src.set = nil, verify.PublicJWKS(k2)
	now = now.Add(2 * time.Hour)
	step("removed key", k1.KeyID, verify.ErrUnknownKey, 5)

	// A set holding a private key is refused, as is none at all.
	priv := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{*k1}}
	c2 := verify.NewJWKSCache("https://keys.example/jwks.json", &scripted{set: priv})
	if _, err := c2.Keys(ctx, k1.KeyID); !errors.Is(err, verify.ErrKeysUnavailable) || !errors.Is(err, verify.ErrMalformed) {
		t.Fatalf("private key set: %v", err)
	}
	c3 := verify.NewJWKSCache("https://keys.example/jwks.json", &scripted{err: errors.New("down")})
	if _, err := c3.Keys(ctx, k1.KeyID); !errors.Is(err, verify.ErrKeysUnavailable) {
		t.Fatalf("unreachable: %v", err)
	}
}
