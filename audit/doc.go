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
// Trust: a bundle proves that the registry holding the log key signed the
// checkpoint over these entries; whom that key belongs to is the
// auditor's to pin (VerifyOptions.CheckpointKey, from the contract as
// published), and witness cosignatures (VerifyOptions.Witnesses) are what
// make a split view detectable.
package audit
