package registry

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/verify"
)

// vkeyOf derives the signed-note verifier key of an Ed25519 skey
// ("PRIVATE+KEY+<name>+<hash>+<base64(0x01||seed)>").
func vkeyOf(skey string) (string, error) {
	parts := strings.SplitN(skey, "+", 5)
	if len(parts) != 5 || parts[0] != "PRIVATE" || parts[1] != "KEY" {
		return "", errors.New("checkpoint key: not a signed-note private key")
	}
	raw, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != 1 {
		return "", errors.New("checkpoint key: not an Ed25519 signed-note key")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	return note.NewEd25519VerifierKey(parts[2], pub)
}

func (s *Server) initSigningKey(ctx context.Context) error {
	if s.cfg.SigningKey != nil {
		return s.RotateKey(ctx, s.cfg.SigningKey)
	}
	keys, err := s.st.signingKeys(ctx)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k.Retired.IsZero() {
			return nil
		}
	}
	k, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		return err
	}
	return s.RotateKey(ctx, k)
}

// RotateKey makes key the registry's active token signing key. The
// previous key stays in the JWKS for Config.KeyTransition, so that tokens
// it signed keep verifying until they expire. Making the active key active
// again changes nothing.
func (s *Server) RotateKey(ctx context.Context, key *jose.JSONWebKey) error {
	return rotateKey(ctx, s.st, key, s.now())
}

// RotateKey makes key the active signing key of the registry database at
// dbPath, while the registry may be running: the running server picks it
// up for the next token it signs, and keeps publishing the old key for its
// transition window.
func RotateKey(ctx context.Context, dbPath string, key *jose.JSONWebKey, now time.Time) error {
	st, err := openStore(ctx, dbPath, false)
	if err != nil {
		return fmt.Errorf("rotate key: %w", err)
	}
	defer st.close()
	return rotateKey(ctx, st, key, now)
}

func rotateKey(ctx context.Context, st store, key *jose.JSONWebKey, now time.Time) error {
	if key == nil || key.IsPublic() || key.KeyID == "" {
		return errors.New("rotate key: need a private key with a kid")
	}
	if err := verify.CheckKey(key, jose.SignatureAlgorithm(key.Algorithm)); err != nil {
		return fmt.Errorf("rotate key: %w", err)
	}
	keys, err := st.signingKeys(ctx)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k.KeyID == key.KeyID && k.Retired.IsZero() {
			return nil // already active
		}
	}
	b, err := json.Marshal(key)
	if err != nil {
		return fmt.Errorf("rotate key: %w", err)
	}
	return st.addSigningKey(ctx, signingKey{KeyID: key.KeyID, JWK: b, Created: now}, now)
}

func (s *Server) parseKey(k signingKey) (*jose.JSONWebKey, error) {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	if jk, ok := s.keyCache[k.KeyID]; ok {
		return jk, nil
	}
	var jk jose.JSONWebKey
	if err := json.Unmarshal(k.JWK, &jk); err != nil {
		return nil, fmt.Errorf("%w: signing key %s: %v", errCorrupted, k.KeyID, err)
	}
	s.keyCache[k.KeyID] = &jk
	return &jk, nil
}

// activeKey is the key that signs new tokens.
func (s *Server) activeKey(ctx context.Context) (*jose.JSONWebKey, error) {
	keys, err := s.st.signingKeys(ctx)
	if err != nil {
		return nil, err
	}
	for i := len(keys) - 1; i >= 0; i-- {
		if keys[i].Retired.IsZero() {
			return s.parseKey(keys[i])
		}
	}
	return nil, errors.New("no active signing key")
}

// publicJWKS is the active key plus the retired keys still in their
// transition window.
func (s *Server) publicJWKS(ctx context.Context) (*jose.JSONWebKeySet, error) {
	keys, err := s.st.signingKeys(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now()
	set := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	for _, k := range keys {
		if !k.Retired.IsZero() && now.Sub(k.Retired) > s.cfg.KeyTransition {
			continue
		}
		jk, err := s.parseKey(k)
		if err != nil {
			return nil, err
		}
		set.Keys = append(set.Keys, jk.Public())
	}
	return set, nil
}

func (s *Server) handleJWKS(w http.ResponseWriter, r *http.Request) error {
	set, err := s.publicJWKS(r.Context())
	if err != nil {
		return err
	}
	b, err := json.Marshal(set)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age=60")
	w.Write(b)
	return nil
}
