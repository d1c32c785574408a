package meter_test

import (
	"bytes"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
)

// FuzzVerifyDisclosedRow: whatever a discloser sends (leaf, index, size,
// proof), VerifyDisclosedRow never panics, and accepts against a batch's
// root only the leaf that is in the batch at that index.
func FuzzVerifyDisclosedRow(f *testing.F) {
	rows := make([]meter.Row, 7)
	for i := range rows {
		rows[i] = meter.Row{Seq: int64(10 + i), ID: "L-x", Kind: contract.EventAccess, Time: time.Unix(int64(i), 0).UTC(),
			Contract: "c", Name: "n", Bytes: int64(i), Samples: 1, Units: 1, CostNanoUSD: 5, Outcome: contract.OutcomeServed}
	}
	root := meter.RowsRoot(rows)
	leaves := make([][]byte, len(rows))
	for i := range rows {
		leaves[i] = meter.RowLeaf(&rows[i])
	}
	// Seeds: honest disclosures, built as the ledger builds them.
	for i := range rows {
		proof := inclusionOf(rows, i)
		f.Add(leaves[i], int64(rows[i].Seq), uint64(i), uint64(len(rows)), bytes.Join(proof, nil))
	}
	f.Fuzz(func(t *testing.T, leaf []byte, seq int64, index, size uint64, proof []byte) {
		var hashes [][]byte
		for len(proof) >= 32 && len(hashes) < 64 {
			hashes = append(hashes, proof[:32])
			proof = proof[32:]
		}
		d := meter.DisclosedRow{Seq: seq, Leaf: leaf, Index: index, Size: size, Inclusion: hashes}
		if err := meter.VerifyDisclosedRow(root, uint64(len(rows)), d); err == nil {
			if index >= uint64(len(rows)) || !bytes.Equal(leaf, leaves[index]) {
				t.Fatalf("accepted leaf %q at index %d, not the batch's", leaf, index)
			}
		}
	})
}

// inclusionOf is the RFC 6962 audit path of rows[m] (RFC 6962 2.1.1),
// computed here independently of the package.
func inclusionOf(rows []meter.Row, m int) [][]byte {
	hashes := make([][]byte, len(rows))
	for i := range rows {
		hashes[i] = meter.RowLeafHash(&rows[i])
	}
	var path func(hs [][]byte, m int) [][]byte
	path = func(hs [][]byte, m int) [][]byte {
		if len(hs) <= 1 {
			return nil
		}
		k := 1
		for k<<1 < len(hs) {
			k <<= 1
		}
		if m < k {
			return append(path(hs[:k], m), mth(hs[k:]))
		}
		return append(path(hs[k:], m-k), mth(hs[:k]))
	}
	return path(hashes, m)
}

// mth is the RFC 6962 Merkle tree hash over leaf hashes.
func mth(hs [][]byte) []byte {
	if len(hs) == 1 {
		return hs[0]
	}
	k := 1
	for k<<1 < len(hs) {
		k <<= 1
	}
	return rowNode(mth(hs[:k]), mth(hs[k:]))
}

// rowNode is RFC 6962's interior hash: SHA-256(0x01 || l || r).
func rowNode(l, r []byte) []byte {
	h := sha256.New()
	h.Write([]byte{1})
	h.Write(l)
	h.Write(r)
	return h.Sum(nil)
}
