// Package meter is the sidecar's metering ledger: a local SQLite file
// (github.com/mattn/go-sqlite3, WAL mode) that records every access to a
// contract's objects and every epoch summary before anything leaves the
// machine, and an outbox that ships the rows to the registry exactly once.
//
// # Rows
//
// An access row records one served, partial, refused or failed access:
// time, contract, name, bytes, samples, tokens, decoded sha256, epoch, job,
// token jti, quota lease and outcome, with the units and the cost (integer
// nano-USD) that the contract's pricing gives it (per sample, per token, per
// byte; a subscription bills nothing per use). The outcomes served, partial,
// range and aborted bill their samples, tokens and bytes (the data path
// decides them by the pass rule, README "Billing"); refusals and
// verification failures bill nothing. An epoch row summarises one (contract, job, epoch): the
// access events, served samples, bytes, distinct objects, units and cost
// of its access rows. The bill is the sum of access rows; an epoch row is
// a report and is sent with units and cost zero, so that nothing is ever
// counted twice (its own figures stay in the ledger and in
// `provgate meter report`).
//
// Every row gets a sequence number and an event id when it is written
// (ledger id + "-" + seq; the ledger id is 128 random bits minted when the
// file is created), so any number of retries of a row count it once at the
// registry.
//
// # Durability policy
//
// Writes go through one writer goroutine that commits whatever is queued
// as one transaction (group commit). An event is acknowledged when Record
// (or Pending.Wait) returns nil: its transaction has committed. What an
// acknowledged event survives depends on Config.Sync:
//
//   - SyncNormal (the default): WAL with synchronous=NORMAL. A commit has
//     reached the operating system before it is acknowledged, so an
//     acknowledged event survives the process being killed (kill -9, OOM,
//     panic). An operating-system crash or power loss may lose the last
//     commits since the last WAL checkpoint. It costs no fsync on the data
//     path, which is why it is the default for a sidecar whose pod dies
//     with its node anyway.
//   - SyncFull: synchronous=FULL. Every group commit is fsynced before it
//     is acknowledged, so acknowledged events survive power loss too; the
//     fsync is shared by every event in the group.
//
// Submit queues an event without waiting. The writer lets a group that
// nobody waits for grow for up to Config.CommitDelay (20 ms by default)
// before committing it, and commits at once when someone waits (Record,
// Pending.Wait, EndEpoch) or the group is large. A kill loses the
// submitted events that were not yet committed: at most the last
// CommitDelay plus one commit. They were never acknowledged.
//
// The two ways to use it on a data path, measured in BenchmarkHit: Submit
// after the body costs a few per cent of a 64 KiB loopback hit (a commit
// every CommitDelay); Record after the body acknowledges every event but
// costs about one commit per request when few requests are in flight
// (group commit shares a commit among concurrent callers only).
//
// # When the buffer is full
//
// The queue is bounded (Config.BufferSize events). A Submit that finds it
// full waits up to Config.FullWait for room, then fails with an error
// wrapping ErrBusy, which the sidecar maps to 503: no event is ever
// dropped silently, the request is refused instead and the client retries.
// Refusals are counted in Stats.
//
// # Tamper evidence
//
// Each row stores hash = SHA-256(previous row's hash || seq || record),
// starting from SHA-256("provgate-meter-v1" || ledger id). The ledger's
// head (a seq and its hash) is recorded at least every 100 ms and on
// Stop. Verify walks the chain and names the first row that was edited,
// deleted or inserted; rows deleted from the end are caught up to the
// recorded head. Someone who can rewrite the file and recompute every
// hash after the edited row (and the head) is not caught locally; rows
// already synced are also anchored in the registry's signed log.
//
// # Commits
//
// A commit writes the group's rows only (one page for a small group).
// The quota totals (per lease, or per token without one, and per
// contract) and the head are written with
// the first commit after every 100 ms; on open, the rows after that snapshot are
// replayed into the totals, so they survive a kill too.
//
// # Outbox
//
// Per contract, the ledger keeps a cursor: every row up to acked_seq has
// been accepted by the registry. The Syncer takes the next unsynced rows
// (at most DefaultAggregateRows rows, contract.MaxBatchAggregates keys and
// DefaultMaxBatchBytes of JSON), sums them per key (kind, outcome, job,
// epoch, lease, terms version) and commits to them with the RFC 6962 root of
// their leaves (rowtree.go: RowLeaf, RowsRoot, DiscloseRows), derives the
// batch id from the rows it covers, signs the batch with the sidecar key and
// stores the signed batch with the cursor, and its range and root in the
// batches table, before sending it, so a retry after a crash sends the same
// bytes with the same Idempotency-Key; the registry counts a range once.
// With SyncConfig.PerEvent (and for the rows of an aggregate batch the
// registry refused with 409) rows go one event each, at most
// DefaultBatchSize per batch, the batch id derived from their event ids. The registry's answer must say it counted exactly the
// batch sent (see checkAnswer); otherwise the batch is recorded as
// disputed, its rows are kept from pruning, and the dispute is logged,
// counted and shown per contract (DisputeStatus). An acknowledged batch
// moves the cursor. A registry
// outage only grows the outbox; a restart resumes from the cursor. Synced
// rows are kept for the retention period, then pruned from the front; the
// chain is anchored at the last pruned row.
//
// # Receipts
//
// A batch the registry counted is an entry of the contract's log, and the
// answer carries its receipt (contract.MeteringReceipt). Before the batch
// is acknowledged the Syncer checks the receipt (verify.VerifyMeteringReceipt:
// signature, leaf, inclusion; then that the entry is the batch sent with
// the events counted, and that its checkpoint and the checked one are one
// log) and stores it in the receipts table; the contract's log_checkpoint
// is the latest checkpoint every receipt was checked consistent with.
// CheckLog moves that checkpoint forward along the log. A refused receipt
// or a checkpoint that does not extend the checked one is a dispute, like
// a batch not counted as sent. Reconcile compares the receipts with the
// registry's log.
//
// # Export schema (provgate.meter.export/v1)
//
// `provgate meter export` writes one JSON object per row, in seq order,
// with the fields of ExportRow: seq, id, kind ("access" or "epoch"), time
// (RFC 3339, UTC), contract_id, name, bytes, samples, tokens, distinct,
// units, cost_nano_usd, epoch, job, token_jti, decoded_sha256, outcome,
// hash (hex chain hash) and synced. Fields are only ever added.
package meter
