package verify

import (
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/provgate/provgate/contract"
)

// Sentinel errors. Every refusal wraps one of them, so that callers can
// count refusals by kind (errors.Is) and map them to status codes.
var (
	ErrAlgorithm      = errors.New("signature algorithm not allowed")
	ErrMalformed      = errors.New("malformed")
	ErrUnknownKey     = errors.New("unknown key")
	ErrKeyMismatch    = errors.New("key does not fit the algorithm")
	ErrRevokedKey     = errors.New("revoked key")
	ErrKeyWindow      = errors.New("key outside its validity window")
	ErrSignature      = errors.New("bad signature")
	ErrNotContributor = errors.New("issuer is not a contributor of the contract")
	ErrNotLicensee    = errors.New("issuer is not a licensee of the contract")
	ErrNotEnrolled    = errors.New("enrolment does not bind this key")
	ErrWrongContract  = errors.New("wrong contract")
	ErrExpired        = errors.New("expired")
	ErrNotYetValid    = errors.New("not yet valid")
	ErrWrongKey       = errors.New("proof key does not match the token")
	ErrProof          = errors.New("bad proof of possession")
	ErrReplay         = errors.New("replayed proof")
	ErrChain          = errors.New("hash chain broken")
	ErrRoot           = errors.New("merkle root mismatch")
	ErrInconsistent   = errors.New("inconsistent checkpoints")
	ErrStale          = errors.New("checkpoint too old")
	ErrRollback       = errors.New("log rolled back")
	ErrCheckpoint     = errors.New("bad checkpoint")
	ErrDigest         = errors.New("digest mismatch")
	ErrSize           = errors.New("size mismatch")
	ErrDuplicate      = errors.New("duplicate")
	ErrNotOwner       = errors.New("name owned by another contributor")
	ErrTerms          = errors.New("bad contract terms")
	// ErrQuarantined: the contract's log forked or rolled back; nothing
	// from it is served until an operator clears the state.
	ErrQuarantined = errors.New("contract quarantined")
	// ErrNotVerified: no verified state yet (503 until the first sync).
	ErrNotVerified = errors.New("log not verified yet")
	// ErrNoTrustAnchor: first contact needs a pinned checkpoint or an
	// explicit trust-on-first-use.
	ErrNoTrustAnchor = errors.New("no trusted checkpoint: pin one or enable trust on first use")
	// ErrKeysUnavailable: a key set could not be fetched; the entries that
	// need it are retried later, not refused.
	ErrKeysUnavailable = errors.New("keys unavailable")
	// ErrRedacted and ErrNotFound answer manifest lookups.
	ErrRedacted = errors.New("redacted")
	ErrNotFound = errors.New("not in the verified manifest")
	// ErrState: the persisted trusted state is unreadable or does not match
	// its own checkpoint.
	ErrState = errors.New("bad persisted state")
)

// RevokedKeyError carries the evidence of a refusal for a revoked key: the
// contributor, the kid, the seq of the revocation entry and the seq of the
// refused entry.
type RevokedKeyError struct {
	Contributor string
	KeyID       string
	RevokedAt   uint64
	Seq         uint64
	Retroactive bool
}

func (e *RevokedKeyError) Error() string {
	how := "after"
	if e.Seq < e.RevokedAt {
		how = "before (retroactive)"
	}
	return fmt.Sprintf("key %q of %q revoked by entry %d; entry %d is %s it", e.KeyID, e.Contributor, e.RevokedAt, e.Seq, how)
}

// Unwrap makes errors.Is(err, ErrRevokedKey) true.
func (e *RevokedKeyError) Unwrap() error { return ErrRevokedKey }

// QuarantineError is why a contract was quarantined, with its evidence
// (an *InconsistentError, *RootMismatchError or *EntryError as Err).
type QuarantineError struct {
	Contract string
	At       time.Time
	Err      error
}

func (e *QuarantineError) Error() string {
	return fmt.Sprintf("contract %q quarantined at %s: %v", e.Contract, e.At.UTC().Format(time.RFC3339), e.Err)
}

// Unwrap makes errors.Is(err, ErrQuarantined) true, and the evidence
// reachable with errors.As.
func (e *QuarantineError) Unwrap() []error { return []error{ErrQuarantined, e.Err} }

// Reason is a short, stable label for err, for metrics: the sentinel it
// wraps ("signature", "unknown_key", "revoked_key", "fork", ...).
func Reason(err error) string {
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.label
		}
	}
	return "other"
}

var reasons = []struct {
	err   error
	label string
}{
	{ErrQuarantined, "quarantined"},
	{ErrRollback, "rollback"},
	{ErrInconsistent, "fork"},
	{ErrRoot, "root_mismatch"},
	{ErrChain, "chain"},
	{ErrStale, "stale_checkpoint"},
	{ErrWitnessQuorum, "witness_quorum"},
	{ErrCheckpoint, "bad_checkpoint"},
	{ErrAlgorithm, "algorithm"},
	{ErrRevokedKey, "revoked_key"},
	{ErrUnknownKey, "unknown_key"},
	{ErrKeyMismatch, "key_mismatch"},
	{ErrKeyWindow, "key_window"},
	{ErrSignature, "signature"},
	{ErrNotContributor, "not_contributor"},
	{ErrWrongContract, "wrong_contract"},
	{ErrWrongKey, "wrong_key"},
	{ErrExpired, "expired"},
	{ErrNotYetValid, "not_yet_valid"},
	{ErrProof, "proof"},
	{ErrReplay, "replay"},
	{ErrDuplicate, "duplicate"},
	{ErrNotOwner, "not_owner"},
	{contract.ErrManifestDigest, "batch_manifest_digest"},
	{contract.ErrManifestInvalid, "batch_manifest_invalid"},
	{ErrDigest, "digest"},
	{ErrSize, "size"},
	{ErrKeysUnavailable, "keys_unavailable"},
	{ErrNoTrustAnchor, "no_trust_anchor"},
	{ErrNotVerified, "not_verified"},
	{ErrState, "state"},
	{ErrMalformed, "malformed"},
}

// DigestMismatchError carries the evidence of a hash mismatch.
type DigestMismatchError struct {
	What string
	Want []byte
	Got  []byte
}

func (e *DigestMismatchError) Error() string {
	return fmt.Sprintf("%s: digest mismatch: want %s, got %s", e.What, hex.EncodeToString(e.Want), hex.EncodeToString(e.Got))
}

// Unwrap makes errors.Is(err, ErrDigest) true.
func (e *DigestMismatchError) Unwrap() error { return ErrDigest }

// EntryError names the log entry at which verification failed.
type EntryError struct {
	Seq uint64
	Err error
}

func (e *EntryError) Error() string { return fmt.Sprintf("entry %d: %v", e.Seq, e.Err) }

// Unwrap returns the cause.
func (e *EntryError) Unwrap() error { return e.Err }

// OwnershipError is the evidence that a log holds an entry by which a
// contributor replaced or redacted a name another one owns (attested
// first), without being a curator of the contract: entry Seq, by Issuer,
// of Name, owned by Owner since entry OwnedSince.
type OwnershipError struct {
	Seq        uint64
	Issuer     string
	Action     string // "replaces" or "redacts"
	Name       string
	Owner      string
	OwnedSince uint64
}

func (e *OwnershipError) Error() string {
	return fmt.Sprintf("entry %d: %q %s %q, owned by %q since entry %d, and is not a curator of the contract",
		e.Seq, e.Issuer, e.Action, e.Name, e.Owner, e.OwnedSince)
}

// Unwrap makes errors.Is(err, ErrNotOwner) true.
func (e *OwnershipError) Unwrap() error { return ErrNotOwner }
