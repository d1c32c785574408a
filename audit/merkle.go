package audit

import (
	"github.com/transparency-dev/merkle/rfc6962"
)

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
