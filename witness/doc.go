// Package witness is a C2SP tlog-witness (https://c2sp.org/tlog-witness):
// it cosigns the checkpoints of the logs it is configured for, once it has
// checked that each one extends, consistently, the last one it cosigned.
// Sidecars that require a quorum of witness cosignatures
// (verify.WitnessPolicy) cannot be shown a split view: a registry that
// forks its log for some clients cannot get the fork cosigned by a witness
// that has seen the other branch.
//
// The protocol is one call, POST /add-checkpoint: an "old <size>" line, a
// consistency proof from that size, a blank line and the log's signed
// checkpoint note. The witness checks the log's Ed25519 signature against
// the key configured for the checkpoint's origin (404 unknown origin, 403 no
// valid signature), that old is the size it last cosigned (409 with its
// size as text/x.tlog.size otherwise), and the proof (422), then answers
// with a cosignature/v1 signature line (C2SP tlog-cosignature: Ed25519 over
// "cosignature/v1\ntime <t>\n" and the checkpoint body). GET
// /<sha256(origin) hex>/checkpoint serves the last cosigned checkpoint.
//
// What it stores: one row per log in a SQLite file (mattn/go-sqlite3,
// synchronous=FULL): the size, root and note of the last checkpoint it
// cosigned. The check against the stored size and the update are one
// critical section, and the row is committed (fsynced) before the
// cosignature leaves the process.
//
// What a crash can lose: nothing it has answered. A crash after the commit
// but before the answer leaves the witness one checkpoint ahead of what the
// log knows; the log's next request gets a 409 with the new size and
// proceeds from there. Losing the database file itself forgets the log's
// history: the witness would then cosign whatever it is shown next, which is
// why the file must be backed up like a key.
package witness
