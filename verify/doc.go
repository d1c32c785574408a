// Package verify is provgate's trust engine. It is pure and offline: it
// never touches the network; callers inject what it needs (key sets,
// entries, checkpoints, proofs).
//
// It verifies JWS contributor attestations, capability tokens, proofs of
// possession and metering batches (ES256 and EdDSA only, kid required, the
// key's alg and use checked), signed C2SP checkpoints with a signed time,
// and the provenance log itself: hash chain, RFC 6962 Merkle root and
// consistency between checkpoints. Every refusal wraps one of the sentinel
// errors in errors.go, and typed errors carry their evidence.
package verify
