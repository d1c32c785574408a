package verify

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	jose "github.com/go-jose/go-jose/v4"
)

// Algorithms is the only set of signature algorithms provgate accepts,
// anywhere: ES256 and EdDSA (Ed25519).
var Algorithms = []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA}

// GenerateKey makes a private signing key as a JWK with alg and use set and
// kid = its RFC 7638 thumbprint.
func GenerateKey(alg jose.SignatureAlgorithm) (*jose.JSONWebKey, error) {
	var priv crypto.Signer
	var err error
	switch alg {
	case jose.EdDSA:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	case jose.ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		return nil, fmt.Errorf("generate key: %w: %q", ErrAlgorithm, alg)
	}
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	k := &jose.JSONWebKey{Key: priv, Algorithm: string(alg), Use: "sig"}
	kid, err := Thumbprint(k)
	if err != nil {
		return nil, err
	}
	k.KeyID = kid
	return k, nil
}

// Thumbprint is the base64url (unpadded) SHA-256 JWK thumbprint of k's
// public part (RFC 7638). It is the sidecar's id and a token's cnf.jkt.
func Thumbprint(k *jose.JSONWebKey) (string, error) {
	pub := k.Public()
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// LoadKey reads a private JWK file and checks it is an ES256 or EdDSA
// signing key with a kid.
func LoadKey(path string) (*jose.JSONWebKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load key: %w", err)
	}
	var k jose.JSONWebKey
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("load key %s: %w", path, err)
	}
	if k.IsPublic() {
		return nil, fmt.Errorf("load key %s: not a private key", path)
	}
	if err := CheckKey(&k, jose.SignatureAlgorithm(k.Algorithm)); err != nil {
		return nil, fmt.Errorf("load key %s: %w", path, err)
	}
	if k.KeyID == "" {
		return nil, fmt.Errorf("load key %s: kid is required", path)
	}
	return &k, nil
}

// SaveKey writes a private JWK atomically with mode 0600.
func SaveKey(path string, k *jose.JSONWebKey) error {
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return fmt.Errorf("save key: %w", err)
	}
	return WriteFileAtomic(path, append(b, '\n'), 0o600)
}

// WriteFileAtomic writes data to a temp file in path's directory, fsyncs
// it, renames it over path and fsyncs the directory.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// PublicJWKS returns the public key set of keys.
func PublicJWKS(keys ...*jose.JSONWebKey) *jose.JSONWebKeySet {
	set := &jose.JSONWebKeySet{}
	for _, k := range keys {
		set.Keys = append(set.Keys, k.Public())
	}
	return set
}

// CheckKey checks that k may verify (or make) a signature with alg: alg is
// ES256 or EdDSA, the key's own alg (when set) is alg, its use (when set) is
// "sig", and its type fits alg (P-256 for ES256, Ed25519 for EdDSA). A kid
// match alone is never enough.
func CheckKey(k *jose.JSONWebKey, alg jose.SignatureAlgorithm) error {
	if alg != jose.ES256 && alg != jose.EdDSA {
		return fmt.Errorf("%w: %q", ErrAlgorithm, alg)
	}
	if k.Algorithm != "" && k.Algorithm != string(alg) {
		return fmt.Errorf("%w: key %q is for %s, not %s", ErrKeyMismatch, k.KeyID, k.Algorithm, alg)
	}
	if k.Use != "" && k.Use != "sig" {
		return fmt.Errorf("%w: key %q has use %q", ErrKeyMismatch, k.KeyID, k.Use)
	}
	switch key := k.Key.(type) {
	case ed25519.PublicKey, ed25519.PrivateKey:
		if alg != jose.EdDSA {
			return fmt.Errorf("%w: key %q is Ed25519, alg is %s", ErrKeyMismatch, k.KeyID, alg)
		}
	case *ecdsa.PublicKey:
		if alg != jose.ES256 || key.Curve != elliptic.P256() {
			return fmt.Errorf("%w: key %q is not a P-256 key for ES256", ErrKeyMismatch, k.KeyID)
		}
	case *ecdsa.PrivateKey:
		if alg != jose.ES256 || key.Curve != elliptic.P256() {
			return fmt.Errorf("%w: key %q is not a P-256 key for ES256", ErrKeyMismatch, k.KeyID)
		}
	default:
		return fmt.Errorf("%w: key %q has unsupported type %T", ErrKeyMismatch, k.KeyID, k.Key)
	}
	return nil
}
