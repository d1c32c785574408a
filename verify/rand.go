package verify

import (
	"crypto/rand"
	"encoding/base64"
)

// randomID returns 128 random bits, base64url.
func randomID() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// NewID returns a fresh random identifier (128 bits, base64url).
func NewID() string { return randomID() }
