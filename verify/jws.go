package verify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
)

// MaxJWSSize bounds every JWS this package parses.
const MaxJWSSize = 256 << 10

// Sign makes a compact JWS of payload (JSON-encoded) with key, header typ,
// and kid from the key. With embedJWK the public key goes in the header
// instead of the kid (DPoP proofs).
func Sign(key *jose.JSONWebKey, typ string, payload any, embedJWK bool) (string, error) {
	alg := jose.SignatureAlgorithm(key.Algorithm)
	if err := CheckKey(key, alg); err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	body, err := json.Marshal(payload)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	opts := (&jose.SignerOptions{}).WithType(jose.ContentType(typ))
	var sk jose.SigningKey
	if embedJWK {
		opts.EmbedJWK = true
		sk = jose.SigningKey{Algorithm: alg, Key: key.Key}
	} else {
		if key.KeyID == "" {
			return "", errors.New("sign: key has no kid")
		}
		sk = jose.SigningKey{Algorithm: alg, Key: key}
	}
	signer, err := jose.NewSigner(sk, opts)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	obj, err := signer.Sign(body)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	return obj.CompactSerialize()
}

// parsed is a compact JWS whose shape has been checked but whose signature
// has not.
type parsed struct {
	jws *jose.JSONWebSignature
	sig jose.Signature
	alg jose.SignatureAlgorithm
}

func parseCompact(compact, typ string) (*parsed, error) {
	if len(compact) > MaxJWSSize {
		return nil, fmt.Errorf("%w: JWS of %d bytes exceeds %d", ErrMalformed, len(compact), MaxJWSSize)
	}
	if strings.Count(compact, ".") != 2 {
		return nil, fmt.Errorf("%w: not a compact JWS", ErrMalformed)
	}
	obj, err := jose.ParseSignedCompact(compact, Algorithms)
	if err != nil {
		if strings.Contains(err.Error(), "algorithm") {
			return nil, fmt.Errorf("%w: %v", ErrAlgorithm, err)
		}
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(obj.Signatures) != 1 {
		return nil, fmt.Errorf("%w: want one signature", ErrMalformed)
	}
	sig := obj.Signatures[0]
	alg := jose.SignatureAlgorithm(sig.Protected.Algorithm)
	if alg != jose.ES256 && alg != jose.EdDSA {
		return nil, fmt.Errorf("%w: %q", ErrAlgorithm, alg)
	}
	if got, _ := sig.Protected.ExtraHeaders[jose.HeaderType].(string); got != typ {
		return nil, fmt.Errorf("%w: typ %q, want %q", ErrMalformed, got, typ)
	}
	if _, crit := sig.Protected.ExtraHeaders["crit"]; crit {
		return nil, fmt.Errorf("%w: crit header not supported", ErrMalformed)
	}
	return &parsed{jws: obj, sig: sig, alg: alg}, nil
}

// verifyWith checks key against the JWS's alg and verifies the signature.
func (p *parsed) verifyWith(key *jose.JSONWebKey) ([]byte, error) {
	if err := CheckKey(key, p.alg); err != nil {
		return nil, err
	}
	pub := key.Public()
	payload, err := p.jws.Verify(&pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	return payload, nil
}

// findKey returns the one key in set with kid.
func findKey(set *jose.JSONWebKeySet, kid string) (*jose.JSONWebKey, error) {
	if kid == "" {
		return nil, fmt.Errorf("%w: kid is required", ErrMalformed)
	}
	if set == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownKey, kid)
	}
	keys := set.Key(kid)
	switch len(keys) {
	case 0:
		return nil, fmt.Errorf("%w: %q", ErrUnknownKey, kid)
	case 1:
		return &keys[0], nil
	default:
		return nil, fmt.Errorf("%w: kid %q is not unique in the key set", ErrMalformed, kid)
	}
}

// decodeStrict decodes JSON into v, refusing unknown fields and trailing data.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: claims: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: claims: trailing data", ErrMalformed)
	}
	return nil
}

// UnverifiedAttestation is what can be read from an attestation before its
// signature is checked: enough to find the keys to check it with. Nothing
// in it may be trusted.
type UnverifiedAttestation struct {
	Issuer string
	KeyID  string
}

// PeekAttestation reads the issuer and kid of an attestation without
// verifying it, so that the caller can fetch the issuer's keys.
func PeekAttestation(compact string) (*UnverifiedAttestation, error) {
	p, err := parseCompact(compact, contract.TypeAttestation)
	if err != nil {
		return nil, err
	}
	iss, err := p.peekIssuer()
	if err != nil {
		return nil, err
	}
	if p.sig.Protected.KeyID == "" {
		return nil, fmt.Errorf("%w: kid is required", ErrMalformed)
	}
	return &UnverifiedAttestation{Issuer: iss, KeyID: p.sig.Protected.KeyID}, nil
}

// VerifyAttestation checks a contributor's attestation against the
// contract and the contributor's key set: ES256/EdDSA only, typ, kid
// present and unique in keys, the key's alg/use/type, the signature, strict
// claims, sub = the contract, iss = an allowed contributor, and the key's
// validity window (if the contract gives one) around iat. Revocation is the
// caller's: it knows the log position. It returns the claims and the kid.
func VerifyAttestation(compact string, c *contract.Contract, keys *jose.JSONWebKeySet) (*contract.Attestation, string, error) {
	p, err := parseCompact(compact, contract.TypeAttestation)
	if err != nil {
		return nil, "", err
	}
	return p.verifyAttestation(c, keys)
}

// peekIssuer reads the unverified issuer of a parsed attestation.
func (p *parsed) peekIssuer() (string, error) {
	var claims struct {
		Issuer string `json:"iss"`
	}
	if err := json.Unmarshal(p.jws.UnsafePayloadWithoutVerification(), &claims); err != nil || claims.Issuer == "" {
		return "", fmt.Errorf("%w: attestation has no issuer", ErrMalformed)
	}
	return claims.Issuer, nil
}

func (p *parsed) verifyAttestation(c *contract.Contract, keys *jose.JSONWebKeySet) (*contract.Attestation, string, error) {
	kid := p.sig.Protected.KeyID
	key, err := findKey(keys, kid)
	if err != nil {
		return nil, kid, err
	}
	payload, err := p.verifyWith(key)
	if err != nil {
		return nil, kid, err
	}
	var a contract.Attestation
	if err := decodeStrict(payload, &a); err != nil {
		return nil, kid, err
	}
	if err := a.Validate(); err != nil {
		return nil, kid, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if a.Subject != c.ContractID {
		return nil, kid, fmt.Errorf("%w: attestation is for %q, not %q", ErrWrongContract, a.Subject, c.ContractID)
	}
	ct := c.Contributor(a.Issuer)
	if ct == nil {
		return nil, kid, fmt.Errorf("%w: %q", ErrNotContributor, a.Issuer)
	}
	if w, ok := ct.KeyWindows[kid]; ok && !w.Contains(a.Time()) {
		return nil, kid, fmt.Errorf("%w: key %q at %s", ErrKeyWindow, kid, a.Time().UTC().Format(time.RFC3339))
	}
	return &a, kid, nil
}

// SignCapability signs a capability token with the registry's key.
func SignCapability(key *jose.JSONWebKey, claims *contract.CapabilityClaims) (string, error) {
	return Sign(key, contract.TypeCapability, claims, false)
}

// DefaultSkew is the clock skew tolerated on iat, nbf and exp.
const DefaultSkew = 30 * time.Second

// VerifyCapability checks a capability token against the registry's key
// set at time now: algorithm, typ, kid, signature, strict claims, nbf and
// exp (with DefaultSkew), and a non-empty cnf.jkt.
func VerifyCapability(token string, registryKeys *jose.JSONWebKeySet, now time.Time) (*contract.CapabilityClaims, error) {
	p, err := parseCompact(token, contract.TypeCapability)
	if err != nil {
		return nil, err
	}
	key, err := findKey(registryKeys, p.sig.Protected.KeyID)
	if err != nil {
		return nil, err
	}
	payload, err := p.verifyWith(key)
	if err != nil {
		return nil, err
	}
	var c contract.CapabilityClaims
	if err := decodeStrict(payload, &c); err != nil {
		return nil, err
	}
	if c.Contract == "" || c.ID == "" || c.Confirm.JKT == "" || c.Expiry == 0 {
		return nil, fmt.Errorf("%w: token lacks contract_id, jti, cnf.jkt or exp", ErrMalformed)
	}
	if now.Add(-DefaultSkew).Unix() >= c.Expiry {
		return nil, fmt.Errorf("%w: token expired at %s", ErrExpired, time.Unix(c.Expiry, 0).UTC().Format(time.RFC3339))
	}
	if c.NotBefore != 0 && now.Add(DefaultSkew).Unix() < c.NotBefore {
		return nil, fmt.Errorf("%w: token", ErrNotYetValid)
	}
	return &c, nil
}

// AccessTokenHash is the DPoP ath of a token: base64url(sha256(token)).
func AccessTokenHash(token string) string {
	h := sha256.Sum256([]byte(token))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// NewDPoPProof makes a proof of possession of key for one request.
func NewDPoPProof(key *jose.JSONWebKey, method, rawURL, token string, now time.Time) (string, error) {
	claims := contract.DPoPClaims{
		Method:   method,
		URL:      htu(rawURL),
		IssuedAt: now.Unix(),
		ID:       randomID(),
	}
	if token != "" {
		claims.AccessTokenHash = AccessTokenHash(token)
	}
	return Sign(key, contract.TypeDPoP, claims, true)
}

// DefaultProofMaxAge is how old a DPoP proof may be.
const DefaultProofMaxAge = 2 * time.Minute

// VerifyDPoPProof checks a proof for a request (method, URL) carrying token
// (empty on a token request) at time now. It returns the claims and the
// thumbprint of the key that signed it; the caller checks that thumbprint
// against the token's cnf.jkt and keeps seen jtis to refuse replays.
func VerifyDPoPProof(proof, method, rawURL, token string, now time.Time) (*contract.DPoPClaims, string, error) {
	p, err := parseCompact(proof, contract.TypeDPoP)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrProof, err)
	}
	jwk := p.sig.Protected.JSONWebKey
	if jwk == nil || !jwk.IsPublic() {
		return nil, "", fmt.Errorf("%w: header jwk must be a public key", ErrProof)
	}
	payload, err := p.verifyWith(jwk)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrProof, err)
	}
	var c contract.DPoPClaims
	if err := decodeStrict(payload, &c); err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrProof, err)
	}
	if c.ID == "" || len(c.ID) > 128 {
		return nil, "", fmt.Errorf("%w: jti is required", ErrProof)
	}
	if !strings.EqualFold(c.Method, method) {
		return nil, "", fmt.Errorf("%w: htm %q, request is %s", ErrProof, c.Method, method)
	}
	if c.URL != htu(rawURL) {
		return nil, "", fmt.Errorf("%w: htu %q, request is %q", ErrProof, c.URL, htu(rawURL))
	}
	iat := time.Unix(c.IssuedAt, 0)
	if iat.After(now.Add(DefaultSkew)) || iat.Before(now.Add(-DefaultProofMaxAge)) {
		return nil, "", fmt.Errorf("%w: iat %s is outside the accepted window", ErrProof, iat.UTC().Format(time.RFC3339))
	}
	if token != "" && c.AccessTokenHash != AccessTokenHash(token) {
		return nil, "", fmt.Errorf("%w: ath does not match the token", ErrProof)
	}
	if token == "" && c.AccessTokenHash != "" {
		return nil, "", fmt.Errorf("%w: ath without a token", ErrProof)
	}
	tp, err := Thumbprint(jwk)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrProof, err)
	}
	return &c, tp, nil
}

// htu normalises a URL for DPoP: scheme and host lower-cased, no query or
// fragment (RFC 9449 section 4.3).
func htu(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	u.Scheme = strings.ToLower(u.Scheme)
	u.Host = strings.ToLower(u.Host)
	u.RawQuery, u.Fragment, u.RawFragment = "", "", ""
	return u.String()
}

// SignMeteringBatch signs a metering batch with the sidecar key (kid =
// thumbprint).
func SignMeteringBatch(key *jose.JSONWebKey, b *contract.MeteringBatch) (string, error) {
	return Sign(key, contract.TypeMetering, b, false)
}

// VerifyMeteringBatch checks a metering batch's signature against the
// sidecar's public key (which the caller took from the token's cnf.jkt
// binding) and decodes it strictly.
func VerifyMeteringBatch(compact string, sidecarKey *jose.JSONWebKey) (*contract.MeteringBatch, error) {
	p, err := parseCompact(compact, contract.TypeMetering)
	if err != nil {
		return nil, err
	}
	payload, err := p.verifyWith(sidecarKey)
	if err != nil {
		return nil, err
	}
	var b contract.MeteringBatch
	if err := decodeStrict(payload, &b); err != nil {
		return nil, err
	}
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return &b, nil
}

// PeekKeyID returns the kid of a compact JWS of header type typ without
// verifying anything.
func PeekKeyID(compact string, typ string) (string, error) {
	p, err := parseCompact(compact, typ)
	if err != nil {
		return "", err
	}
	return p.sig.Protected.KeyID, nil
}

// SignAttestation signs an attestation with a contributor's key.
func SignAttestation(key *jose.JSONWebKey, a *contract.Attestation) (string, error) {
	if err := a.Validate(); err != nil {
		return "", err
	}
	return Sign(key, contract.TypeAttestation, a, false)
}

// AttestationUnverified decodes an attestation's payload without checking
// its signature: for entries a log already verified at append (backfills,
// idempotent re-runs), never to decide trust.
func AttestationUnverified(compact string) (*contract.Attestation, error) {
	parts := strings.Split(compact, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: not a compact JWS", ErrMalformed)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	var a contract.Attestation
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	return &a, nil
}

// KeyAlgorithm is the signature algorithm a key is for: its alg, or the one
// its type implies (empty when neither says).
func KeyAlgorithm(k *jose.JSONWebKey) jose.SignatureAlgorithm {
	if k.Algorithm != "" {
		return jose.SignatureAlgorithm(k.Algorithm)
	}
	switch k.Key.(type) {
	case ed25519.PublicKey, ed25519.PrivateKey:
		return jose.EdDSA
	case *ecdsa.PublicKey, *ecdsa.PrivateKey:
		return jose.ES256
	}
	return ""
}
