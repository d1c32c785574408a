package verify

import (
	"bytes"
	"fmt"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/provgate/provgate/contract"
)

// VerifyMeteringReceipt checks a metering receipt against the contract's
// log: the checkpoint is signed by the log's key for its origin, the leaf
// is the hash of the entry bytes, the entry is a metering entry of the
// contract at seq Index+1, and the inclusion proof takes the leaf to the
// checkpoint's root. It returns the checkpoint and the decoded entry; the
// caller checks that the entry carries the batch it sent.
func VerifyMeteringReceipt(cpv *CheckpointVerifier, contractID string, r *contract.MeteringReceipt) (*Checkpoint, *contract.Entry, error) {
	if r == nil {
		return nil, nil, fmt.Errorf("%w: no metering receipt", ErrMalformed)
	}
	cp, err := cpv.Parse([]byte(r.Checkpoint))
	if err != nil {
		return nil, nil, fmt.Errorf("metering receipt: %w", err)
	}
	if !bytes.Equal(r.Leaf, contract.LeafHash(r.Entry)) {
		return nil, nil, fmt.Errorf("%w: metering receipt: leaf %x is not the hash of the entry", ErrRoot, r.Leaf)
	}
	e, err := contract.DecodeEntry(r.Entry)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: metering receipt: %v", ErrMalformed, err)
	}
	if e.Kind != contract.EntryMetering || e.Contract != contractID || e.Seq != r.Index+1 {
		return nil, nil, fmt.Errorf("%w: metering receipt: entry is %s %d of %q, want metering entry %d of %q",
			ErrMalformed, e.Kind, e.Seq, e.Contract, r.Index+1, contractID)
	}
	if r.Index >= cp.Size {
		return nil, nil, fmt.Errorf("%w: metering receipt: index %d is outside the checkpoint's %d entries", ErrRoot, r.Index, cp.Size)
	}
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, r.Index, cp.Size, r.Leaf, r.Inclusion, cp.Hash); err != nil {
		return nil, nil, fmt.Errorf("%w: metering receipt: entry %d not included in checkpoint of size %d: %v", ErrRoot, e.Seq, cp.Size, err)
	}
	return cp, e, nil
}

// VerifyExtends checks that one of checkpoints a and b extends the other,
// with the consistency proof hashes from the smaller to the larger (see
// VerifyConsistency).
func VerifyExtends(a, b *Checkpoint, hashes [][]byte) error {
	if a.Size > b.Size {
		a, b = b, a
	}
	return VerifyConsistency(a, b, hashes)
}
