// Package verify is provgate's trust engine. It is pure and offline: it
// never touches the network; callers inject what it needs (key sets,
// entries, checkpoints, proofs) through small interfaces that
// *contract.Client satisfies (LogSource, StreamSource, JWKSFetcher).
//
// It verifies JWS contributor attestations, capability tokens, proofs of
// possession and metering batches (ES256 and EdDSA only, kid required, the
// key's alg and use checked), signed C2SP checkpoints with a signed time,
// and the provenance log itself: hash chain, RFC 6962 Merkle root and
// consistency between checkpoints. Every refusal wraps one of the sentinel
// errors in errors.go, and typed errors carry their evidence
// (InconsistentError, RootMismatchError, EntryError, RevokedKeyError,
// QuarantineError); Reason maps an error to a metric label.
//
// The sidecar side:
//
//   - Follower follows one contract's log (Start/Stop, or Sync on demand):
//     cursor replay plus the live feed, the chain and root against the
//     signed checkpoint, a consistency proof from the last trusted
//     checkpoint, a freshness window, attestation signatures verified in
//     parallel. A fork or rollback quarantines the contract for good (until
//     Store.Reset). First contact is WithPinnedCheckpoint or
//     WithTrustOnFirstUse; nothing is trusted without one of them.
//   - TileSource is a LogSource that reads the log as static C2SP
//     tlog-tiles (a CDN, a bucket, the registry's /logs/) through an
//     injected TileFetcher: each entry bundle, with the tile nodes left and
//     right of it, must hash to the verified checkpoint's root and match
//     its level-0 tile; consistency proofs are built from tiles and checked
//     by the follower as before. A tampered tile or bundle is ErrTiles (a
//     root mismatch): refused, never served, not a quarantine.
//   - WitnessPolicy (FollowerConfig.Witnesses) is the split-view defence:
//     every checkpoint needs a quorum of fresh cosignature/v1 signatures
//     from the given witnesses (C2SP tlog-witness, see package witness),
//     checked with x/mod's note.Open; without it the checkpoint is refused
//     with ErrWitnessQuorum and nothing is served from it.
//   - Manifest is the verified result: name -> claim + seq. Lookup answers
//     an entry, ErrRedacted (451) or ErrNotFound (404); the follower's
//     Lookup also answers ErrNotVerified, ErrStale or ErrQuarantined (503).
//     Any contributor of the contract may redact a name; a redaction calls
//     FollowerConfig.OnRedact once it is persisted.
//   - KeyStore and JWKSCache find contributors' keys (inline, or jwks_uri
//     with a max age and a rate-limited refresh on an unknown kid).
//     Revocations come from the log's revocation attestations and apply
//     from their seq on, and to earlier entries when the claim is
//     retroactive or WithRetroactiveRevocations is set.
//   - Store persists the trusted state in SQLite (StateFile in the state
//     dir), one transaction per sync, so that a restart is ready at once
//     and still catches a rollback or fork that happened while it was down.
//   - Metrics are Prometheus counters for the followers.
//
// verifytest builds signed logs in-process for tests.
package verify
