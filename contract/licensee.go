package contract

import (
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
