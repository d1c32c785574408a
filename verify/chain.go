package verify

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/provgate/provgate/contract"
)

var rangeFactory = compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}

// LogState is what a verifier must remember of a log to go on from where
// it stopped: its size, the last entry's leaf hash, and the compact Merkle
// range over all entries. It is small (at most 64 hashes) and is what the
// sidecar persists.
type LogState struct {
	Size     uint64   `json:"size"`
	LastLeaf []byte   `json:"last_leaf"`
	Range    [][]byte `json:"range"`
}

// Chain replays a log's entries in order, checking seq continuity, the
// contract, and the prev_hash chain, and keeps the Merkle root.
type Chain struct {
	contract string
	last     []byte
	rng      *compact.Range
}

// NewChain starts a replay of contractID's log from state (nil: empty).
func NewChain(contractID string, state *LogState) (*Chain, error) {
	c := &Chain{contract: contractID, last: contract.ZeroHash}
	if state == nil || state.Size == 0 {
		c.rng = rangeFactory.NewEmptyRange(0)
		return c, nil
	}
	for _, h := range state.Range {
		if len(h) != 32 {
			return nil, errors.New("log state: range hashes must be 32 bytes")
		}
	}
	r, err := rangeFactory.NewRange(0, state.Size, cloneHashes(state.Range))
	if err != nil {
		return nil, fmt.Errorf("log state: %w", err)
	}
	if len(state.LastLeaf) != 32 {
		return nil, errors.New("log state: last leaf hash must be 32 bytes")
	}
	c.rng, c.last = r, bytes.Clone(state.LastLeaf)
	return c, nil
}

// Size is the number of entries replayed.
func (c *Chain) Size() uint64 { return c.rng.End() }

// Append checks the entry with seq and bytes raw and adds it. It returns
// the decoded entry; on error the chain is unchanged.
func (c *Chain) Append(seq uint64, raw []byte) (*contract.Entry, error) {
	if want := c.Size() + 1; seq != want {
		return nil, &EntryError{Seq: seq, Err: fmt.Errorf("%w: got seq %d, want %d", ErrChain, seq, want)}
	}
	e, err := contract.DecodeEntry(raw)
	if err := c.appendDecoded(seq, raw, e, err); err != nil {
		return nil, err
	}
	return e, nil
}

// appendDecoded is Append for an entry already decoded from raw (decodeErr
// is DecodeEntry's error), so that decoding can run in parallel.
func (c *Chain) appendDecoded(seq uint64, raw []byte, e *contract.Entry, decodeErr error) error {
	if want := c.Size() + 1; seq != want {
		return &EntryError{Seq: seq, Err: fmt.Errorf("%w: got seq %d, want %d", ErrChain, seq, want)}
	}
	if decodeErr != nil {
		return &EntryError{Seq: seq, Err: fmt.Errorf("%w: %v", ErrMalformed, decodeErr)}
	}
	if e.Seq != seq {
		return &EntryError{Seq: seq, Err: fmt.Errorf("%w: entry says seq %d", ErrChain, e.Seq)}
	}
	if e.Contract != c.contract {
		return &EntryError{Seq: seq, Err: fmt.Errorf("%w: entry is for %q", ErrWrongContract, e.Contract)}
	}
	if e.PrevHash != hex.EncodeToString(c.last) {
		return &EntryError{Seq: seq, Err: fmt.Errorf("%w: prev_hash %s, want %x", ErrChain, e.PrevHash, c.last)}
	}
	leaf := contract.LeafHash(raw)
	if err := c.rng.Append(leaf, nil); err != nil {
		return &EntryError{Seq: seq, Err: err}
	}
	c.last = leaf
	return nil
}

// Root is the RFC 6962 root of the entries replayed so far.
func (c *Chain) Root() []byte {
	if c.Size() == 0 {
		return rfc6962.DefaultHasher.EmptyRoot()
	}
	root, err := c.rng.GetRootHash(nil)
	if err != nil {
		panic(err) // a non-empty range starting at 0 always has a root
	}
	return root
}

// State returns what must be persisted to resume later. It shares nothing
// with the chain.
func (c *Chain) State() LogState {
	return LogState{Size: c.Size(), LastLeaf: bytes.Clone(c.last), Range: cloneHashes(c.rng.Hashes())}
}

func cloneHashes(hs [][]byte) [][]byte {
	out := make([][]byte, len(hs))
	for i, h := range hs {
		out[i] = bytes.Clone(h)
	}
	return out
}

// CheckCheckpoint checks that the replayed entries are exactly the tree the
// checkpoint commits to.
func (c *Chain) CheckCheckpoint(cp *Checkpoint) error {
	if cp.Size != c.Size() {
		return fmt.Errorf("%w: checkpoint size %d, replayed %d", ErrRoot, cp.Size, c.Size())
	}
	if root := c.Root(); !bytes.Equal(root, cp.Hash) {
		return &RootMismatchError{Size: cp.Size, Want: cp.Hash, Got: root}
	}
	return nil
}

// RootMismatchError: the replayed entries do not hash to the signed root.
type RootMismatchError struct {
	Size      uint64
	Want, Got []byte
}

func (e *RootMismatchError) Error() string {
	return fmt.Sprintf("merkle root mismatch at size %d: checkpoint %x, entries give %x", e.Size, e.Want, e.Got)
}

// Unwrap makes errors.Is(err, ErrRoot) true.
func (e *RootMismatchError) Unwrap() error { return ErrRoot }

// InconsistentError carries the evidence of a fork or rollback: the trusted
// checkpoint, the new one, and the proof that failed.
type InconsistentError struct {
	Old, New *Checkpoint
	Proof    [][]byte
	Err      error
}

func (e *InconsistentError) Error() string {
	return fmt.Sprintf("inconsistent checkpoints: trusted size %d root %x, new size %d root %x: %v",
		e.Old.Size, e.Old.Hash, e.New.Size, e.New.Hash, e.Err)
}

// Unwrap makes errors.Is(err, ErrInconsistent) true.
func (e *InconsistentError) Unwrap() []error {
	if errors.Is(e.Err, ErrRollback) {
		return []error{ErrInconsistent, ErrRollback}
	}
	return []error{ErrInconsistent}
}

// VerifyConsistency checks that newer extends trusted, with an RFC 6962
// consistency proof. A smaller newer is a rollback; the same size with
// another root is a fork.
func VerifyConsistency(trusted, newer *Checkpoint, hashes [][]byte) error {
	if newer.Size < trusted.Size {
		return &InconsistentError{Old: trusted, New: newer, Proof: hashes, Err: fmt.Errorf("%w: size %d < trusted %d", ErrRollback, newer.Size, trusted.Size)}
	}
	if newer.Size == trusted.Size {
		if !bytes.Equal(newer.Hash, trusted.Hash) {
			return &InconsistentError{Old: trusted, New: newer, Err: errors.New("same size, different root (fork)")}
		}
		return nil
	}
	if trusted.Size == 0 {
		return nil // an empty log is a prefix of any log
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, trusted.Size, newer.Size, hashes, trusted.Hash, newer.Hash); err != nil {
		return &InconsistentError{Old: trusted, New: newer, Proof: hashes, Err: err}
	}
	return nil
}

// VerifyInclusion checks that the entry with leaf hash leaf is entry seq of
// the tree committed to by cp.
func VerifyInclusion(cp *Checkpoint, seq uint64, leaf []byte, hashes [][]byte) error {
	if seq == 0 || seq > cp.Size {
		return fmt.Errorf("%w: seq %d outside tree of size %d", ErrRoot, seq, cp.Size)
	}
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, seq-1, cp.Size, leaf, hashes, cp.Hash); err != nil {
		return fmt.Errorf("%w: inclusion of %d: %v", ErrRoot, seq, err)
	}
	return nil
}
