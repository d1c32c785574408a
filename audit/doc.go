// Package audit makes and checks offline audit bundles of a contract, and
// finds compliance problems in a sidecar's metering.
//
// A bundle (Bundle, format provgate-audit-bundle/v1, docs/AUDIT.md) is one
// JSON document that lets anyone settle a bill without the registry: the
// contract's whole provenance log up to a signed checkpoint (so its
// completeness is proved, not claimed: the entries must hash to the
// checkpoint's root), earlier checkpoints with consistency proofs to it,
// the keys the log does not carry itself (contributors' keys served from a
// jwks_uri, sidecars' self-certifying keys), a ledger's metering batches
// with the registry's receipts (C2SP tlog-proof text) and, optionally, some
// ledger rows disclosed with inclusion proofs against their batch.
//
// Export builds a bundle from a registry (any Source, which
// *contract.Client is) and a ledger's receipts and rows; it checks what it
// writes with Verify before returning it. Verify is pure and offline like
// package verify: no network, no clock but the one given, every input
// bounded by Parse. It does not stop at the first problem: it checks
// everything and returns every Problem, each naming what broke (the
// checkpoint, entry N, batch B, attestation for name X, row seq S), so that
// one tampered byte is reported where it was made and where it shows.
//
// Check (compliance) reads a verified log and a ledger's rows and reports
// findings: reads of a name after its redaction, reads under terms not yet
// in force, purposes the terms do not allow, quotas exceeded, cached data
// kept past retention_days. Findings are not bundle errors: the bundle can
// be perfectly genuine and show a licensee breaking the terms.
//
// # Trust
//
// A bundle proves that the holder of the log key signed a checkpoint over
// exactly these entries, and what the entries say; whom that key belongs
// to is the auditor's to pin (VerifyOptions.CheckpointKey, from the
// contract as published: unpinned, Report.Pinned is false and a bundle
// only proves it is self-consistent), and witness cosignatures
// (VerifyOptions.Witnesses) are what make a split view detectable. Keys
// fetched from a jwks_uri are as the exporter saw them; sidecar keys prove
// themselves (RFC 7638 thumbprint = kid). For a batch that lists its
// events, the row tree root is the exporter's: disclosed rows are also
// checked field by field against the signed events.
//
// # Cost
//
// Both Export and Verify hold the whole log in memory (the bundle is the
// whole log: completeness is proved, not claimed) and are linear in it:
// one pass hashing the entries and checking each signature (about 50
// microseconds per Ed25519 signature, so a 100k-entry log takes seconds on
// one core), plus one RFC 6962 proof per batch and per disclosed row.
// Parse bounds the input (MaxBundleSize, MaxEntries, ...) before anything
// is checked. Nothing is written but the bundle (atomically, by the CLI).
package audit
