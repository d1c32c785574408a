package contract

// MeteringReceipt is the registry's proof that it committed a metering
// batch to the contract's log. Metering batches are entries of the
// contract's provenance log (EntryMetering), so the receipt is an RFC 6962
// inclusion proof of that entry in the one log the witnesses cosign:
//
//   - Entry is the exact bytes committed (the log entry, whose JWS is the
//     batch as sent and whose Accepted lists the event ids counted);
//   - Leaf is LeafHash(Entry), Index its 0-based leaf index (Seq-1);
//   - Checkpoint is a C2SP signed-note checkpoint of the log, signed with
//     the contract's checkpoint key, of size at least Index+1;
//   - Inclusion is the audit path of Leaf up to Checkpoint's root
//     (transparency-dev/merkle proof.VerifyInclusion with rfc6962).
//
// Anyone holding the receipt and the contract's log origin and checkpoint
// key can check it with golang.org/x/mod/sumdb/note and
// transparency-dev/merkle alone.
type MeteringReceipt struct {
	Entry      []byte   `json:"entry"`
	Leaf       []byte   `json:"leaf"`
	Index      uint64   `json:"index"`
	Checkpoint string   `json:"checkpoint"`
	Inclusion  [][]byte `json:"inclusion"`
}
