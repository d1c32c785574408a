package verify

import (
	"encoding/hex"
	"errors"
	"fmt"
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
)

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
