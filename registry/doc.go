// Package registry is provgate's reference contract and provenance API
// server, backed by one SQLite file, or by PostgreSQL for several replicas.
//
// It holds data contracts, issues DPoP-bound capability tokens signed with
// its JWK (with rotation: a retired key stays in the JWKS for a transition
// window), keeps one append-only provenance log per contract, and ingests
// metering. An entry is appended only after its attestation verifies
// against the contributor's keys; the registry builds the entry, stores its
// exact bytes, its RFC 6962 Merkle nodes and a C2SP checkpoint signed over
// the new size, all in one transaction, and re-signs each log's checkpoint
// every CheckpointInterval so that a quiet log stays fresh. Proofs are
// built from the stored nodes (transparency-dev/merkle proof.Nodes).
//
// Metering is taken only from sidecars enrolled for the contract and
// trusts no amount in it: every event's units and cost are recomputed from
// the contract's price and bounded, and the contract's sums are kept within
// int64. Events are counted once each per sender, by a durable unique
// constraint on (contract, sending key, event id), so that no sender can
// claim another's ids; the answer to a batch says exactly what was counted.
// Presigned URLs are issued only for live objects of the log and within the
// token's quota.
//
// Each log is also served as static C2SP tlog-tiles at /logs/{id}/
// (checkpoint, Merkle tiles, entry bundles; tiles.go), and PublishTiles
// writes the same layout to an S3 bucket, incrementally and checkpoint
// last (tiles_publish.go). GET /metrics serves the registry's Prometheus
// metrics (metrics.go).
//
// Persistence sits behind the unexported store interface, implemented once
// (sqlStore) over SQLite (WAL, synchronous=FULL) and PostgreSQL (pgx's
// database/sql driver): queries are written with ? placeholders, which
// sqlDB rebinds to $n for PostgreSQL. Appends run in Server.withLog: one
// transaction under the log's lock (SQLite's write lock, or a per-contract
// pg_advisory_xact_lock shared by every replica), in which the cached
// Merkle state is checked against the stored size. The wire contract is in package
// contract; registry/registrytest starts a real server for tests.
package registry
