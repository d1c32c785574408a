package contract

import (
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// TokenRequest is the body of POST /contracts/{id}/request. The request
// also carries a DPoP proof signed by JWK's private key.
type TokenRequest struct {
	Purpose string          `json:"purpose"`
	Usage   Quota           `json:"usage"`
	JWK     jose.JSONWebKey `json:"jwk"`
	// Enrolment is the licensee-signed enrolment (JWS compact) of JWK's
	// thumbprint under the contract.
	Enrolment string `json:"enrolment,omitempty"`
}

// Quota is what a token may consume; zero means the contract's own limit.
type Quota struct {
	MaxSamples int64 `json:"max_samples,omitempty"`
	MaxBytes   int64 `json:"max_bytes,omitempty"`
}

// TokenResponse answers a token request.
type TokenResponse struct {
	Token     string    `json:"token"`
	TokenType string    `json:"token_type"` // "DPoP"
	ExpiresAt time.Time `json:"expires_at"`
	ExpiresIn int64     `json:"expires_in"` // seconds
	ID        string    `json:"jti"`
}

// CapabilityClaims are the claims of a capability token (a JWT signed by
// the registry, header typ TypeCapability).
type CapabilityClaims struct {
	Issuer   string `json:"iss"`
	Subject  string `json:"sub"` // the holder's JWK thumbprint
	Contract string `json:"contract_id"`
	Purpose  string `json:"purpose"`
	Licensee string `json:"licensee,omitempty"`
	// Lease identifies the slice of the licensee's quota this sidecar key
	// holds: Quota is that slice, cumulative over every token of the lease
	// (refreshes keep the lease), not per token.
	Lease     string       `json:"lease,omitempty"`
	Quota     Quota        `json:"quota"`
	Confirm   Confirmation `json:"cnf"`
	IssuedAt  int64        `json:"iat"`
	NotBefore int64        `json:"nbf"`
	Expiry    int64        `json:"exp"`
	ID        string       `json:"jti"`
}

// Confirmation binds a token to a key (RFC 7800, RFC 9449).
type Confirmation struct {
	// JKT is the base64url SHA-256 JWK thumbprint (RFC 7638) of the key.
	JKT string `json:"jkt"`
}

// DPoPClaims are the claims of a proof of possession (RFC 9449): a JWS with
// header typ TypeDPoP and the public jwk, signed by the token's key.
type DPoPClaims struct {
	Method   string `json:"htm"`
	URL      string `json:"htu"`
	IssuedAt int64  `json:"iat"`
	ID       string `json:"jti"`
	// AccessTokenHash is base64url(sha256(token)); absent on a token request.
	AccessTokenHash string `json:"ath,omitempty"`
}

// HTTP headers.
const (
	HeaderDPoP           = "DPoP"
	HeaderIdempotencyKey = "Idempotency-Key"
	// AuthSchemeDPoP is the Authorization scheme: "DPoP <token>".
	AuthSchemeDPoP = "DPoP"
)
