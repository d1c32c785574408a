package audit

import (
	"encoding/json"
	"fmt"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/provgate/provgate/contract"
)

// RowLeaf is the canonical bytes of a metering event as a row-tree leaf:
// its JSON encoding with the fields of contract.MeteringEvent in order
// (what encoding/json makes of the struct).
func RowLeaf(ev *contract.MeteringEvent) ([]byte, error) {
	b, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("row leaf: %w", err)
	}
	return b, nil
}

// rowTree is a batch's row tree: the leaves of its rows in batch order.
type rowTree struct {
	leaves [][]byte // leaf hashes
	// events are the rows, by leaf index.
	events []contract.MeteringEvent
}

// newRowTree is the row tree of a batch that carries its events: one leaf
// per event, in the order the batch lists them.
func newRowTree(b *contract.MeteringBatch) (*rowTree, error) {
	t := &rowTree{leaves: make([][]byte, len(b.Events)), events: b.Events}
	for i := range b.Events {
		leaf, err := RowLeaf(&b.Events[i])
		if err != nil {
			return nil, err
		}
		t.leaves[i] = rfc6962.DefaultHasher.HashLeaf(leaf)
	}
	return t, nil
}

// Size is the number of rows.
func (t *rowTree) Size() uint64 { return uint64(len(t.leaves)) }

// Root is the RFC 6962 root over the rows.
func (t *rowTree) Root() []byte { return merkleRoot(t.leaves) }

// Proof is the inclusion proof of row i.
func (t *rowTree) Proof(i uint64) ([][]byte, error) {
	if i >= t.Size() {
		return nil, fmt.Errorf("row %d of %d", i, t.Size())
	}
	return inclusionProof(t.leaves, i), nil
}

// verifyRow checks that row (leaf bytes) is leaf index of a tree of size
// with root.
func verifyRow(index, size uint64, row []byte, hashes [][]byte, root []byte) error {
	return proof.VerifyInclusion(rfc6962.DefaultHasher, index, size, rfc6962.DefaultHasher.HashLeaf(row), hashes, root)
}

// merkleRoot is the RFC 6962 root of leaf hashes.
func merkleRoot(leaves [][]byte) []byte {
	switch len(leaves) {
	case 0:
		return rfc6962.DefaultHasher.EmptyRoot()
	case 1:
		return leaves[0]
	}
	k := split(len(leaves))
	return rfc6962.DefaultHasher.HashChildren(merkleRoot(leaves[:k]), merkleRoot(leaves[k:]))
}

// inclusionProof is the RFC 6962 audit path of leaf i (RFC 6962 2.1.1).
func inclusionProof(leaves [][]byte, i uint64) [][]byte {
	if len(leaves) <= 1 {
		return nil
	}
	k := split(len(leaves))
	if i < uint64(k) {
		return append(inclusionProof(leaves[:k], i), merkleRoot(leaves[k:]))
	}
	return append(inclusionProof(leaves[k:], i-uint64(k)), merkleRoot(leaves[:k]))
}

// consistencyProof is the RFC 6962 consistency proof from the first m
// leaves to all of them (RFC 6962 2.1.2).
func consistencyProof(leaves [][]byte, m uint64) [][]byte {
	if m == 0 || m >= uint64(len(leaves)) {
		return nil
	}
	return subProof(leaves, m, true)
}

func subProof(leaves [][]byte, m uint64, complete bool) [][]byte {
	n := uint64(len(leaves))
	if m == n {
		if complete {
			return nil
		}
		return [][]byte{merkleRoot(leaves)}
	}
	k := uint64(split(len(leaves)))
	if m <= k {
		return append(subProof(leaves[:k], m, complete), merkleRoot(leaves[k:]))
	}
	return append(subProof(leaves[k:], m-k, false), merkleRoot(leaves[:k]))
}

// split is the largest power of two smaller than n (n >= 2).
func split(n int) int {
	k := 1
	for k<<1 < n {
		k <<= 1
	}
	return k
}
