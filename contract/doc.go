// Package contract holds the wire types that the registry and the sidecar
// share, and the sidecar's HTTP client for the registry.
//
// A contract is a licensed dataset: its metadata (pricing, license, usage
// constraints, allowed contributors, origin bucket) and its provenance log.
// The log is a sequence of entries; each entry is served as the exact bytes
// that were hashed into the log's RFC 6962 Merkle tree, so a verifier never
// has to canonicalise JSON: it decodes the bytes it hashed and trusts only
// the fields inside them.
package contract
