package verify

import (
	"encoding/json"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
)

// MaxEnrolmentTTL bounds how long an enrolment may be valid for: a
// licensee re-enrols its sidecars at least this often.
const MaxEnrolmentTTL = 366 * 24 * time.Hour

// SignEnrolment signs an enrolment with one of a licensee's keys (kid
// required).
func SignEnrolment(key *jose.JSONWebKey, c *contract.EnrolmentClaims) (string, error) {
	if c.Issuer == "" || c.Subject == "" || c.Contract == "" || c.ID == "" || c.Expiry <= c.IssuedAt {
		return "", fmt.Errorf("sign enrolment: iss, sub, contract_id, jti and exp after iat are required")
	}
	return Sign(key, contract.TypeEnrolment, c, false)
}

// UnverifiedEnrolment is what can be read from an enrolment before its
// signature is checked: enough to find the licensee and its keys. Nothing
// in it may be trusted.
type UnverifiedEnrolment struct {
	Issuer   string
	Subject  string
	Contract string
	KeyID    string
	Expiry   time.Time
}

// PeekEnrolment reads the issuer, contract and kid of an enrolment
// without verifying it, so that the caller can find the licensee's keys
// (or, on a sidecar, pick the enrolment for a contract).
func PeekEnrolment(compact string) (*UnverifiedEnrolment, error) {
	p, err := parseCompact(compact, contract.TypeEnrolment)
	if err != nil {
		return nil, err
	}
	var c struct {
		Issuer   string `json:"iss"`
		Subject  string `json:"sub"`
		Contract string `json:"contract_id"`
		Expiry   int64  `json:"exp"`
	}
	if err := json.Unmarshal(p.jws.UnsafePayloadWithoutVerification(), &c); err != nil || c.Issuer == "" || c.Contract == "" {
		return nil, fmt.Errorf("%w: enrolment has no issuer or contract_id", ErrMalformed)
	}
	if p.sig.Protected.KeyID == "" {
		return nil, fmt.Errorf("%w: kid is required", ErrMalformed)
	}
	return &UnverifiedEnrolment{Issuer: c.Issuer, Subject: c.Subject, Contract: c.Contract, KeyID: p.sig.Protected.KeyID,
		Expiry: time.Unix(c.Expiry, 0)}, nil
}

// VerifyEnrolment checks a licensee's enrolment of the sidecar key whose
// thumbprint is jkt under contract c at time now: ES256/EdDSA only, typ,
// kid present and unique in keys (the key set of licensee, inline or from
// its jwks_uri), the key's alg/use/type, the signature, strict claims,
// iss = licensee, a licensee of c, contract_id = c, sub = jkt, the key's validity
// window (if the contract gives one) around iat, iat not in the future,
// and exp after now and at most MaxEnrolmentTTL after iat. It returns the
// claims and the licensee. The licensee's terms (expiry, purposes) are
// the caller's to check.
func VerifyEnrolment(compact string, c *contract.Contract, licensee string, keys *jose.JSONWebKeySet, jkt string, now time.Time) (*contract.EnrolmentClaims, *contract.Licensee, error) {
	p, err := parseCompact(compact, contract.TypeEnrolment)
	if err != nil {
		return nil, nil, err
	}
	kid := p.sig.Protected.KeyID
	key, err := findKey(keys, kid)
	if err != nil {
		return nil, nil, err
	}
	payload, err := p.verifyWith(key)
	if err != nil {
		return nil, nil, err
	}
	var e contract.EnrolmentClaims
	if err := decodeStrict(payload, &e); err != nil {
		return nil, nil, err
	}
	if e.Issuer == "" || e.Subject == "" || e.Contract == "" || e.ID == "" || e.IssuedAt == 0 || e.Expiry == 0 {
		return nil, nil, fmt.Errorf("%w: enrolment lacks iss, sub, contract_id, iat, exp or jti", ErrMalformed)
	}
	if e.Contract != c.ContractID {
		return nil, nil, fmt.Errorf("%w: enrolment is for %q, not %q", ErrWrongContract, e.Contract, c.ContractID)
	}
	l := c.Licensee(e.Issuer)
	if l == nil || e.Issuer != licensee {
		return nil, nil, fmt.Errorf("%w: %q", ErrNotLicensee, e.Issuer)
	}
	if e.Subject != jkt {
		return nil, nil, fmt.Errorf("%w: enrolment is for key %s, not %s", ErrNotEnrolled, e.Subject, jkt)
	}
	iat, exp := time.Unix(e.IssuedAt, 0), time.Unix(e.Expiry, 0)
	if w, ok := l.KeyWindows[kid]; ok && !w.Contains(iat) {
		return nil, nil, fmt.Errorf("%w: key %q at %s", ErrKeyWindow, kid, iat.UTC().Format(time.RFC3339))
	}
	if iat.After(now.Add(DefaultSkew)) {
		return nil, nil, fmt.Errorf("%w: enrolment iat %s", ErrNotYetValid, iat.UTC().Format(time.RFC3339))
	}
	if !exp.After(iat) || exp.Sub(iat) > MaxEnrolmentTTL {
		return nil, nil, fmt.Errorf("%w: enrolment exp must be after iat and within %s of it", ErrMalformed, MaxEnrolmentTTL)
	}
	if !now.Before(exp) {
		return nil, nil, fmt.Errorf("%w: enrolment expired at %s", ErrExpired, exp.UTC().Format(time.RFC3339))
	}
	return &e, l, nil
}
