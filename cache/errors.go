package cache

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/provgate/provgate/verify"
)

// Sentinel errors. Verification failures wrap verify.ErrDigest (as a
// *verify.DigestMismatchError) or verify.ErrSize (as a *SizeError), or
// ErrDecode; FailureKind names them for metrics.
var (
	ErrClosed     = errors.New("cache closed")
	ErrNotMounted = errors.New("contract not mounted")
	ErrTooLarge   = errors.New("object larger than the cache")
	ErrNotFound   = errors.New("object not found at the origin")
	ErrPurged     = errors.New("object purged while it was fetched")
	ErrLocked     = errors.New("cache directory in use by another process")
	ErrDecode     = errors.New("cannot decode object")
	ErrOrigin     = errors.New("origin failed")
	// ErrOriginRedirect: the origin redirected a GET to another host.
	ErrOriginRedirect = errors.New("origin redirect to another host")
	ErrBadClaim       = errors.New("bad object claim")
	// ErrTokenCount: the decoded bytes' token count is not the claim's.
	ErrTokenCount = errors.New("token count mismatch")
)

// SizeError carries the evidence of a size mismatch: What is "stored" or
// "decoded"; Got is at least Want+1 when the stream ran long (it is cut
// there, so Got is a lower bound).
type SizeError struct {
	What string
	Want int64
	Got  int64
}

func (e *SizeError) Error() string {
	if e.Got > e.Want {
		return fmt.Sprintf("%s size: want %d bytes, got more than %d", e.What, e.Want, e.Want)
	}
	return fmt.Sprintf("%s size: want %d bytes, got %d", e.What, e.Want, e.Got)
}

// Unwrap makes errors.Is(err, verify.ErrSize) true.
func (e *SizeError) Unwrap() error { return verify.ErrSize }

// TokenCountError: the decoded bytes do not have the token count their
// claim attests (or cannot be counted: Err), under the contract's
// tokenizer. It is a verification failure; the object is not cached.
type TokenCountError struct {
	Tokenizer string
	Want, Got int64
	Err       error
}

func (e *TokenCountError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("decoded object has no %s token count (claimed %d): %v", e.Tokenizer, e.Want, e.Err)
	}
	return fmt.Sprintf("decoded object has %d %s tokens, its claim %d", e.Got, e.Tokenizer, e.Want)
}

// Unwrap makes errors.Is(err, ErrTokenCount) true.
func (e *TokenCountError) Unwrap() error { return ErrTokenCount }

// OriginError is a failed origin request. Status is the HTTP status, zero
// for a transport error (reset, timeout), which is retried like a 5xx.
type OriginError struct {
	Op         string
	Name       string
	Status     int
	RetryAfter time.Duration
	Err        error
}

func (e *OriginError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("origin %s %q: status %d: %v", e.Op, e.Name, e.Status, e.Err)
	}
	return fmt.Sprintf("origin %s %q: %v", e.Op, e.Name, e.Err)
}

// Unwrap returns ErrNotFound for a 404 and ErrOrigin otherwise, plus the
// cause.
func (e *OriginError) Unwrap() []error {
	if e.Status == http.StatusNotFound {
		return []error{ErrNotFound, e.Err}
	}
	return []error{ErrOrigin, e.Err}
}

// retryable reports whether a fetch may try again after err.
func (e *OriginError) retryable() bool {
	return e.Status == 0 || e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout || e.Status >= 500
}

// Failure kinds, as counted in Stats.Failures.
const (
	FailStoredDigest  = "stored_digest"
	FailStoredSize    = "stored_size"
	FailDecodedDigest = "decoded_digest"
	FailDecodedSize   = "decoded_size"
	FailDecode        = "decode"
	FailOrigin        = "origin"
	FailNotFound      = "not_found"
	FailScrub         = "scrub"
	FailOther         = "other"
	FailTokenCount    = "token_count"
)

// FailureKind names the kind of a fetch error for metrics.
func FailureKind(err error) string {
	var de *verify.DigestMismatchError
	var se *SizeError
	switch {
	case errors.As(err, &de):
		if de.What == "decoded" {
			return FailDecodedDigest
		}
		return FailStoredDigest
	case errors.As(err, &se):
		if se.What == "decoded" {
			return FailDecodedSize
		}
		return FailStoredSize
	case errors.Is(err, ErrDecode):
		return FailDecode
	case errors.Is(err, ErrTokenCount):
		return FailTokenCount
	case errors.Is(err, ErrNotFound):
		return FailNotFound
	case errors.Is(err, ErrOrigin):
		return FailOrigin
	default:
		return FailOther
	}
}

// IsVerification reports whether err means the origin's bytes failed
// verification (digest, size, decoding or token count): a 502 upstream
// problem.
func IsVerification(err error) bool {
	return errors.Is(err, verify.ErrDigest) || errors.Is(err, verify.ErrSize) || errors.Is(err, ErrDecode) || errors.Is(err, ErrTokenCount)
}

// parseRetryAfter reads a Retry-After header in seconds or HTTP date.
func parseRetryAfter(h http.Header) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return time.Until(t)
	}
	return 0
}
