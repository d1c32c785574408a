package verify

import (
	"context"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
)

// VerifyCapabilityFor is VerifyCapability plus the binding a holder checks
// before using a token: it is for contractID, and bound (cnf.jkt, and sub
// when set) to the key whose thumbprint is jkt.
func VerifyCapabilityFor(token string, registryKeys *jose.JSONWebKeySet, now time.Time, contractID, jkt string) (*contract.CapabilityClaims, error) {
	c, err := VerifyCapability(token, registryKeys, now)
	if err != nil {
		return nil, err
	}
	if c.Contract != contractID {
		return nil, fmt.Errorf("%w: token is for %q, not %q", ErrWrongContract, c.Contract, contractID)
	}
	if c.Confirm.JKT != jkt || (c.Subject != "" && c.Subject != jkt) {
		return nil, fmt.Errorf("%w: token is bound to %q, not %q", ErrWrongKey, c.Confirm.JKT, jkt)
	}
	return c, nil
}

// NewCapabilityChecker returns the check a contract.TokenSource runs on
// every token it receives: signed by one of the registry's keys (from
// registryKeys, refreshed on an unknown kid), for contractID, bound to the
// sidecar's key. now may be nil (time.Now).
func NewCapabilityChecker(registryKeys *JWKSCache, contractID string, sidecar *jose.JSONWebKey, now func() time.Time) (func(context.Context, string) (*contract.CapabilityClaims, error), error) {
	jkt, err := Thumbprint(sidecar)
	if err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	return func(ctx context.Context, token string) (*contract.CapabilityClaims, error) {
		kid, err := PeekKeyID(token, contract.TypeCapability)
		if err != nil {
			return nil, err
		}
		keys, err := registryKeys.Keys(ctx, kid)
		if err != nil {
			return nil, err
		}
		return VerifyCapabilityFor(token, keys, now(), contractID, jkt)
	}, nil
}

// ProofFunc makes DPoP proofs with the sidecar's key for contract.Client.
func ProofFunc(key *jose.JSONWebKey) contract.ProofFunc {
	return func(method, url, token string) (string, error) {
		return NewDPoPProof(key, method, url, token, time.Now())
	}
}
