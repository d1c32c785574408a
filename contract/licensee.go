package contract

import (
	"errors"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Licensee is a party the contract lets use the data (the buyer). Its keys
// sign enrolments of its sidecars; they come inline (JWKS) or from JWKSURI,
// under the same rules as a contributor's.
type Licensee struct {
	ID         string               `json:"id"`
	JWKS       *jose.JSONWebKeySet  `json:"jwks,omitempty"`
	JWKSURI    string               `json:"jwks_uri,omitempty"`
	KeyWindows map[string]KeyWindow `json:"key_windows,omitempty"`
	Terms      LicenseTerms         `json:"terms"`
}

// LicenseTerms are one licensee's own terms under the contract. Its quota
// is shared by all of the licensee's tokens and sidecars.
type LicenseTerms struct {
	// Purposes is a subset of the contract's usage purposes; empty means
	// all of the contract's.
	Purposes   []string  `json:"purposes,omitempty"`
	MaxSamples int64     `json:"max_samples,omitempty"`
	MaxBytes   int64     `json:"max_bytes,omitempty"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
}

// TypeEnrolment is the JWS header typ of a licensee's enrolment of a
// sidecar key.
const TypeEnrolment = "provgate-enrolment+jwt"

// EnrolmentClaims are the claims of an enrolment: a JWS signed by one of
// the licensee's keys (kid required) binding a sidecar key thumbprint to a
// contract until Expiry.
type EnrolmentClaims struct {
	Issuer   string `json:"iss"` // licensee id
	Subject  string `json:"sub"` // the sidecar's JWK thumbprint (RFC 7638)
	Contract string `json:"contract_id"`
	IssuedAt int64  `json:"iat"`
	Expiry   int64  `json:"exp"`
	ID       string `json:"jti"`
}

// Licensee returns the licensee with id, or nil.
func (c *Contract) Licensee(id string) *Licensee {
	for i := range c.Licensees {
		if c.Licensees[i].ID == id {
			return &c.Licensees[i]
		}
	}
	return nil
}

// AllowsPurpose reports whether the terms let the licensee use the data
// for purpose under contract c: the contract must allow it, and the
// terms, when they list purposes, too.
func (t LicenseTerms) AllowsPurpose(c *Contract, purpose string) bool {
	if !c.Usage.AllowsPurpose(purpose) {
		return false
	}
	if len(t.Purposes) == 0 {
		return true
	}
	for _, p := range t.Purposes {
		if p == purpose {
			return true
		}
	}
	return false
}

// Expired reports whether the terms have expired at now.
func (t LicenseTerms) Expired(now time.Time) bool {
	return !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt)
}

// validateLicensees checks the licensees: unique valid ids, keys as for
// contributors, purposes within the contract's, non-negative limits. A
// contract without licensees is valid, but the registry issues no token
// for it (nobody is licensed).
func (c *Contract) validateLicensees() []error {
	var errs []error
	seen := map[string]bool{}
	for i, l := range c.Licensees {
		what := fmt.Sprintf("licensees[%d]", i)
		switch {
		case l.ID == "":
			errs = append(errs, fmt.Errorf("%s.id is required", what))
		case seen[l.ID]:
			errs = append(errs, fmt.Errorf("%s: duplicate id %q", what, l.ID))
		default:
			if err := ValidateID(l.ID); err != nil {
				errs = append(errs, fmt.Errorf("%s.id: %w", what, err))
			}
		}
		seen[l.ID] = true
		errs = append(errs, validateKeys(what, l.JWKS, l.JWKSURI)...)
		for _, p := range l.Terms.Purposes {
			if !c.Usage.AllowsPurpose(p) {
				errs = append(errs, fmt.Errorf("%s.terms.purposes: %q is not a purpose of the contract", what, p))
			}
		}
		if l.Terms.MaxSamples < 0 || l.Terms.MaxBytes < 0 {
			errs = append(errs, errors.New(what+".terms: limits must not be negative"))
		}
	}
	return errs
}
