package contract

import (
	"errors"
	"fmt"
	"net/http"
)

// Error codes carried in ErrorBody.
const (
	CodeBadRequest         = "bad_request"
	CodeUnauthorized       = "unauthorized"
	CodeForbidden          = "forbidden"
	CodeNotFound           = "not_found"
	CodeConflict           = "conflict"
	CodeQuotaExceeded      = "quota_exceeded"
	CodeNotEnrolled        = "not_enrolled"
	CodeInvalidAttestation = "invalid_attestation"
	CodeRevokedKey         = "revoked_key"
	CodeReplay             = "replay"
	CodeTooLarge           = "payload_too_large"
	CodeRedacted           = "redacted"
	CodeVerification       = "verification_failed"
	CodeUnavailable        = "unavailable"
	CodeRateLimited        = "rate_limited"
	CodeInternal           = "internal"
)

// ErrorBody is every error response: {"error":{"code":..,"message":..}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// APIError is an error response from the registry or the sidecar, or an
// error a handler returns to be written as one.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
}

// Errorf makes an APIError.
func Errorf(status int, code, format string, args ...any) *APIError {
	return &APIError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// StatusForCode is the HTTP status that goes with an error code, for
// errors carried inside a 200 response (a presign response's per-name
// refusals); an unknown code is 500.
func StatusForCode(code string) int {
	switch code {
	case CodeBadRequest:
		return http.StatusBadRequest
	case CodeUnauthorized:
		return http.StatusUnauthorized
	case CodeForbidden, CodeQuotaExceeded:
		return http.StatusForbidden
	case CodeNotFound:
		return http.StatusNotFound
	case CodeConflict:
		return http.StatusConflict
	case CodeRedacted:
		return http.StatusUnavailableForLegalReasons
	case CodeRateLimited:
		return http.StatusTooManyRequests
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// ErrNotModified is returned by a conditional GET whose ETag still matches.
var ErrNotModified = errors.New("not modified")

// StatusOf returns the HTTP status of err if it is (or wraps) an APIError,
// else 0.
func StatusOf(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

// CodeOf returns the error code of err if it is (or wraps) an APIError.
func CodeOf(err error) string {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Code
	}
	return ""
}

// IsRetryable reports whether a request that failed with status may succeed
// if repeated.
func IsRetryable(status int) bool {
	return status == http.StatusTooManyRequests || status == http.StatusBadGateway ||
		status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout ||
		status == http.StatusInternalServerError
}
