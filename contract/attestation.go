package contract

import (
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// AttestationType is the kind of statement a contributor signs.
type AttestationType string

// Attestation types.
const (
	// Contribution: the contributor put an object into the dataset.
	Contribution AttestationType = "contribution"
	// Transformation: the contributor derived an object from earlier ones.
	Transformation AttestationType = "transformation"
	// Redaction: an earlier object must no longer be used.
	Redaction AttestationType = "redaction"
	// Revocation: one of the contributor's keys must no longer be trusted.
	Revocation AttestationType = "revocation"
)

// Encodings of stored objects.
const (
	EncodingIdentity = "identity"
	EncodingGzip     = "gzip"
	EncodingZstd     = "zstd"
)

// JWS header types.
const (
	TypeAttestation = "provgate-attestation+jws"
	TypeMetering    = "provgate-metering+jws"
	TypeCapability  = "provgate-cap+jwt"
	TypeDPoP        = "dpop+jwt"
)

// Attestation is the payload of a contributor's JWS.
type Attestation struct {
	// Issuer is the contributor id; it must be an allowed contributor.
	Issuer string `json:"iss"`
	// Subject is the contract id.
	Subject  string          `json:"sub"`
	IssuedAt int64           `json:"iat"`
	ID       string          `json:"jti"`
	Type     AttestationType `json:"type"`

	Object     *ObjectClaim     `json:"object,omitempty"`
	Sources    []string         `json:"sources,omitempty"` // transformation inputs
	Redaction  *RedactionClaim  `json:"redaction,omitempty"`
	Revocation *RevocationClaim `json:"revocation,omitempty"`
	// Batch is, for a batch attestation, the digest of its manifest.
	Batch *BatchClaim `json:"batch,omitempty"`
}

// ObjectClaim describes an object: how it is stored at the origin and what
// it decodes to.
type ObjectClaim struct {
	Name          string `json:"name"`
	StoredSHA256  string `json:"stored_sha256"`
	StoredSize    int64  `json:"stored_size"`
	Encoding      string `json:"encoding"`
	DecodedSHA256 string `json:"decoded_sha256"`
	DecodedSize   int64  `json:"decoded_size"`
	License       string `json:"license,omitempty"`
	MediaType     string `json:"media_type,omitempty"`
	// Tokens is the decoded object's token count under the contract's
	// pricing tokenizer, when it has one.
	Tokens int64 `json:"tokens,omitempty"`
	// Shard is, for a tar shard, its member index (contract/shard.go).
	Shard *ShardIndex `json:"shard,omitempty"`
}

// RedactionClaim names what is redacted: an object name, and optionally the
// seq of the entry that introduced it.
type RedactionClaim struct {
	Name   string `json:"name"`
	Seq    uint64 `json:"seq,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// RevocationClaim revokes one of the issuer's keys. From the revocation's
// own seq on, nothing signed by that key is trusted; with Retroactive,
// earlier entries signed by it are refused too.
type RevocationClaim struct {
	KeyID       string `json:"kid"`
	Reason      string `json:"reason,omitempty"`
	Retroactive bool   `json:"retroactive,omitempty"`
}

// Time is iat as a time.
func (a *Attestation) Time() time.Time { return time.Unix(a.IssuedAt, 0) }

// Validate checks that the claims are well-formed for their type. It does
// not check signatures or the contract.
func (a *Attestation) Validate() error {
	if a.Issuer == "" {
		return errors.New("attestation: iss is required")
	}
	if a.Subject == "" {
		return errors.New("attestation: sub is required")
	}
	if a.IssuedAt <= 0 {
		return errors.New("attestation: iat is required")
	}
	if a.ID == "" || len(a.ID) > 128 {
		return errors.New("attestation: jti must be 1 to 128 characters")
	}
	present := 0
	for _, p := range []bool{a.Object != nil, a.Redaction != nil, a.Revocation != nil, a.Batch != nil} {
		if p {
			present++
		}
	}
	if present != 1 {
		return errors.New("attestation: exactly one of object, redaction, revocation, batch is required")
	}
	switch a.Type {
	case Contribution, Transformation:
		if a.Object == nil {
			return fmt.Errorf("attestation: %s needs an object", a.Type)
		}
		if a.Type == Contribution && len(a.Sources) != 0 {
			return errors.New("attestation: sources are for transformations")
		}
		return a.Object.Validate()
	case Redaction:
		if a.Redaction == nil {
			return errors.New("attestation: redaction needs a redaction claim")
		}
		return ValidateName(a.Redaction.Name)
	case Batch:
		if a.Batch == nil {
			return errors.New("attestation: batch needs a batch claim")
		}
		if len(a.Sources) != 0 {
			return errors.New("attestation: sources are for transformations")
		}
		return a.Batch.Validate()
	case Revocation:
		if a.Revocation == nil || a.Revocation.KeyID == "" {
			return errors.New("attestation: revocation needs a kid")
		}
		return nil
	default:
		return fmt.Errorf("attestation: unknown type %q", a.Type)
	}
}

// Validate checks an object claim.
func (o *ObjectClaim) Validate() error {
	if err := ValidateName(o.Name); err != nil {
		return fmt.Errorf("attestation: %w", err)
	}
	for _, h := range []string{o.StoredSHA256, o.DecodedSHA256} {
		if b, err := hex.DecodeString(h); err != nil || len(b) != 32 || hex.EncodeToString(b) != h {
			return fmt.Errorf("attestation: object %q: sha256 must be 64 lowercase hex digits", o.Name)
		}
	}
	if o.StoredSize < 0 || o.DecodedSize < 0 {
		return fmt.Errorf("attestation: object %q: sizes must not be negative", o.Name)
	}
	switch o.Encoding {
	case EncodingIdentity:
		if o.StoredSHA256 != o.DecodedSHA256 || o.StoredSize != o.DecodedSize {
			return fmt.Errorf("attestation: object %q: identity encoding needs equal stored and decoded digests", o.Name)
		}
	case EncodingGzip, EncodingZstd:
	default:
		return fmt.Errorf("attestation: object %q: unknown encoding %q", o.Name, o.Encoding)
	}
	return o.validateShard()
}
