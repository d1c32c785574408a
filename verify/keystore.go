package verify

import (
	"context"
	"fmt"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
)

// JWKSFetcher fetches a JSON Web Key Set from a URL. *contract.Client
// satisfies it; verify itself never touches the network.
type JWKSFetcher interface {
	JWKS(ctx context.Context, url string) (*jose.JSONWebKeySet, error)
}

var _ JWKSFetcher = (*contract.Client)(nil)

// Key set cache defaults.
const (
	// DefaultJWKSMaxAge is how long a fetched key set is used before it is
	// fetched again.
	DefaultJWKSMaxAge = 15 * time.Minute
	// DefaultJWKSMinRefresh rate-limits refreshes triggered by an unknown
	// kid: at most one fetch per interval per URL.
	DefaultJWKSMinRefresh = 30 * time.Second
	// MaxJWKSKeys bounds a fetched key set.
	MaxJWKSKeys = 64
)

// JWKSCache holds the key set served at one URL. It refetches it when it is
// older than MaxAge, and when asked for a kid it does not hold, at most once
// per MinRefresh. When a refetch fails it keeps using the set it has.
type JWKSCache struct {
	url   string
	fetch JWKSFetcher
	// MaxAge and MinRefresh are read on each call; set them before use.
	MaxAge     time.Duration
	MinRefresh time.Duration
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time

	mu      sync.Mutex // held across a fetch: one fetch at a time per URL
	set     *jose.JSONWebKeySet
	fetched time.Time
	tried   time.Time
}

// NewJWKSCache makes a cache for the key set at url.
func NewJWKSCache(url string, fetch JWKSFetcher) *JWKSCache {
	return &JWKSCache{url: url, fetch: fetch, MaxAge: DefaultJWKSMaxAge, MinRefresh: DefaultJWKSMinRefresh}
}

func (c *JWKSCache) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Keys returns a key set holding kid. It fails with ErrUnknownKey when the
// (refreshed) set has no such kid, and with ErrKeysUnavailable when no set
// could be fetched at all.
func (c *JWKSCache) Keys(ctx context.Context, kid string) (*jose.JSONWebKeySet, error) {
	return c.KeysAt(ctx, kid, time.Time{})
}

// KeysAt is Keys for a signature made at time at (a log entry's time): a
// kid is declared unknown only by a set fetched after at. When the refresh
// that would settle it is rate-limited, it fails with ErrKeysUnavailable
// (try again later), so that a freshly rotated key is never refused for
// good.
func (c *JWKSCache) KeysAt(ctx context.Context, kid string, at time.Time) (*jose.JSONWebKeySet, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	old := c.set == nil || now.Sub(c.fetched) > c.MaxAge
	unknown := c.set != nil && len(c.set.Key(kid)) == 0
	if old || (unknown && now.Sub(c.tried) >= c.MinRefresh) {
		c.tried = now
		set, err := c.fetch.JWKS(ctx, c.url)
		if err == nil {
			err = checkKeySet(set)
		}
		switch {
		case err == nil:
			c.set, c.fetched = set, now
		case c.set == nil:
			return nil, fmt.Errorf("%w: %s: %w", ErrKeysUnavailable, c.url, err)
		}
		// A failed refresh keeps the set we have.
	}
	if len(c.set.Key(kid)) == 0 {
		if !at.IsZero() && !c.fetched.After(at) {
			return nil, fmt.Errorf("%w: kid %q is not in the set fetched from %s at %s, before the signature; next refresh after %s",
				ErrKeysUnavailable, kid, c.url, c.fetched.UTC().Format(time.RFC3339), c.MinRefresh)
		}
		return nil, fmt.Errorf("%w: %q at %s", ErrUnknownKey, kid, c.url)
	}
	return c.set, nil
}

// checkKeySet refuses a key set that is too large, holds a private key, or
// a key without kid.
func checkKeySet(set *jose.JSONWebKeySet) error {
	if set == nil {
		return fmt.Errorf("%w: empty key set", ErrMalformed)
	}
	if len(set.Keys) > MaxJWKSKeys {
		return fmt.Errorf("%w: key set of %d keys exceeds %d", ErrMalformed, len(set.Keys), MaxJWKSKeys)
	}
	for _, k := range set.Keys {
		if k.KeyID == "" {
			return fmt.Errorf("%w: key set has a key without kid", ErrMalformed)
		}
		if !k.IsPublic() {
			return fmt.Errorf("%w: key set holds a private key (%q)", ErrMalformed, k.KeyID)
		}
	}
	return nil
}

// KeyStore finds the keys of a contract's contributors: the inline JWKS
// from the contract, else the contributor's jwks_uri through a JWKSCache.
// Key windows are checked by VerifyAttestation; revocations by the log
// replay, which knows the log position.
type KeyStore struct {
	c      *contract.Contract
	inline map[string]*jose.JSONWebKeySet
	remote map[string]*JWKSCache
}

// NewKeyStore makes the key store of contract c. fetch may be nil when
// every contributor has inline keys.
func NewKeyStore(c *contract.Contract, fetch JWKSFetcher) (*KeyStore, error) {
	s := &KeyStore{c: c, inline: map[string]*jose.JSONWebKeySet{}, remote: map[string]*JWKSCache{}}
	for _, ct := range c.Contributors {
		if ct.JWKS != nil && len(ct.JWKS.Keys) > 0 {
			if err := checkKeySet(ct.JWKS); err != nil {
				return nil, fmt.Errorf("contributor %q: %w", ct.ID, err)
			}
			s.inline[ct.ID] = ct.JWKS
		}
		if ct.JWKSURI != "" {
			if fetch == nil {
				return nil, fmt.Errorf("contributor %q: jwks_uri needs a fetcher", ct.ID)
			}
			s.remote[ct.ID] = NewJWKSCache(ct.JWKSURI, fetch)
		}
	}
	return s, nil
}

// Cache returns the remote key cache of a contributor (nil when its keys
// are inline), so that callers can tune it.
func (s *KeyStore) Cache(contributor string) *JWKSCache { return s.remote[contributor] }

// Keys returns a key set of contributor that holds kid.
func (s *KeyStore) Keys(ctx context.Context, contributor, kid string) (*jose.JSONWebKeySet, error) {
	return s.KeysAt(ctx, contributor, kid, time.Time{})
}

// KeysAt is Keys for a signature made at time at (see JWKSCache.KeysAt).
func (s *KeyStore) KeysAt(ctx context.Context, contributor, kid string, at time.Time) (*jose.JSONWebKeySet, error) {
	if s.c.Contributor(contributor) == nil {
		return nil, fmt.Errorf("%w: %q", ErrNotContributor, contributor)
	}
	if set := s.inline[contributor]; set != nil && len(set.Key(kid)) > 0 {
		return set, nil
	}
	if cache := s.remote[contributor]; cache != nil {
		return cache.KeysAt(ctx, kid, at)
	}
	return nil, fmt.Errorf("%w: %q of %q", ErrUnknownKey, kid, contributor)
}
