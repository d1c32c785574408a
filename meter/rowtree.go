package meter

// Row commitment: the Merkle tree over the exact ledger rows an aggregate
// metering batch covers.
//
// # Leaf encoding (provgate.meter.row/v1)
//
// The leaf of one ledger row is a JSON object with exactly these twenty
// keys, always present, in byte order of the key, with no whitespace:
//
//	bytes, contract_id, cost_nano_usd, decoded_sha256, distinct, epoch,
//	events, id, job, kind, lease, name, outcome, samples, seq, terms_seq,
//	time, token_jti, tokens, units
//
// Integers (bytes, cost_nano_usd, distinct, epoch, events, samples, seq,
// terms_seq, tokens, units) are written in decimal, with no sign unless
// negative, no leading zeros and no exponent. Everything else is a string
// (an absent one is ""): time is the row's time in UTC as RFC 3339 with
// the fraction of a second only as long as needed (Go's RFC3339Nano,
// as in `provgate meter export`). Strings are UTF-8 (an invalid byte
// becomes U+FFFD, as in the export) escaped minimally: `"` and `\` get a
// backslash, U+0008, U+0009, U+000A, U+000C and U+000D are \b \t \n \f \r,
// other characters below U+0020 are \u00XX with lowercase hex, and every
// other character is written as itself. The values are those of the row's
// line in `provgate meter export` (a key the export omits is "" or 0).
// This is what Python writes with
//
//	json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
//
// The leaf hash is RFC 6962's: SHA-256(0x00 || leaf). The tree is the
// RFC 6962 Merkle tree of the leaves of a batch's rows in seq order (the
// rows of one contract with after_seq < seq <= last_seq), and its root is
// what an aggregate batch carries as rows.root.

import (
	"bytes"
	"context"
	"crypto"
	_ "crypto/sha256" // the rfc6962 hasher's hash
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

// ErrDisclosure is the error of a disclosed row that does not check
// against a batch's root: other bytes, another index or a wrong proof.
var ErrDisclosure = errors.New("disclosed row does not match the batch's root")

// rowHasher is the RFC 6962 hasher (SHA-256) of row trees.
var rowHasher = rfc6962.New(crypto.SHA256)

// RowLeaf returns the canonical leaf bytes of a ledger row (see the leaf
// encoding above).
func RowLeaf(r *Row) []byte {
	return AppendRowLeaf(make([]byte, 0, 384+len(r.Name)), r)
}

// AppendRowLeaf appends the canonical leaf bytes of r to b.
func AppendRowLeaf(b []byte, r *Row) []byte {
	// The keys in byte order.
	b = append(b, `{"bytes":`...)
	b = strconv.AppendInt(b, r.Bytes, 10)
	b = append(b, `,"contract_id":`...)
	b = appendLeafString(b, r.Contract)
	b = append(b, `,"cost_nano_usd":`...)
	b = strconv.AppendInt(b, r.CostNanoUSD, 10)
	b = append(b, `,"decoded_sha256":`...)
	b = appendLeafString(b, r.DecodedSHA)
	b = append(b, `,"distinct":`...)
	b = strconv.AppendInt(b, r.Distinct, 10)
	b = append(b, `,"epoch":`...)
	b = strconv.AppendInt(b, r.Epoch, 10)
	b = append(b, `,"events":`...)
	b = strconv.AppendInt(b, r.Events, 10)
	b = append(b, `,"id":`...)
	b = appendLeafString(b, r.ID)
	b = append(b, `,"job":`...)
	b = appendLeafString(b, r.Job)
	b = append(b, `,"kind":`...)
	b = appendLeafString(b, r.Kind)
	b = append(b, `,"lease":`...)
	b = appendLeafString(b, r.Lease)
	b = append(b, `,"name":`...)
	b = appendLeafString(b, r.Name)
	b = append(b, `,"outcome":`...)
	b = appendLeafString(b, r.Outcome)
	b = append(b, `,"samples":`...)
	b = strconv.AppendInt(b, r.Samples, 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, r.Seq, 10)
	b = append(b, `,"terms_seq":`...)
	b = strconv.AppendUint(b, r.TermsSeq, 10)
	b = append(b, `,"time":`...)
	b = appendLeafString(b, r.Time.UTC().Format(time.RFC3339Nano))
	b = append(b, `,"token_jti":`...)
	b = appendLeafString(b, r.TokenID)
	b = append(b, `,"tokens":`...)
	b = strconv.AppendInt(b, r.Tokens, 10)
	b = append(b, `,"units":`...)
	b = strconv.AppendInt(b, r.Units, 10)
	return append(b, '}')
}

// appendLeafString appends s as a JSON string, escaped minimally.
func appendLeafString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\b':
				b = append(b, '\\', 'b')
			case c == '\t':
				b = append(b, '\\', 't')
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\f':
				b = append(b, '\\', 'f')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b = utf8.AppendRune(b, utf8.RuneError)
		} else {
			b = append(b, s[i:i+n]...)
		}
		i += n
	}
	return append(b, '"')
}

// RowLeafHash is the RFC 6962 leaf hash of the row's leaf:
// SHA-256(0x00 || RowLeaf(r)).
func RowLeafHash(r *Row) []byte {
	return rowHasher.HashLeaf(RowLeaf(r))
}

// RowsRoot is the RFC 6962 Merkle root of the rows' leaves, in the order
// given (a batch's rows in seq order); the root of no rows is SHA-256 of
// nothing.
func RowsRoot(rows []Row) []byte {
	t := newRowTree(len(rows))
	for i := range rows {
		t.add(&rows[i])
	}
	return t.root()
}

// rowTree accumulates a batch's leaf hashes in seq order.
type rowTree struct {
	leaf   []byte
	hashes [][]byte
	rng    *compact.Range
}

func newRowTree(hint int) *rowTree {
	f := compact.RangeFactory{Hash: rowHasher.HashChildren}
	return &rowTree{hashes: make([][]byte, 0, hint), rng: f.NewEmptyRange(0)}
}

// add appends r's leaf.
func (t *rowTree) add(r *Row) {
	t.leaf = AppendRowLeaf(t.leaf[:0], r)
	h := rowHasher.HashLeaf(t.leaf)
	t.hashes = append(t.hashes, h)
	// Append only fails on a range that does not start at 0.
	_ = t.rng.Append(h, nil)
}

func (t *rowTree) size() uint64 { return uint64(len(t.hashes)) }

// root is the tree's root hash.
func (t *rowTree) root() []byte {
	if len(t.hashes) == 0 {
		return rowHasher.EmptyRoot()
	}
	root, _ := t.rng.GetRootHash(nil)
	return root
}

// inclusion is the RFC 6962 audit path of leaf index (RFC 6962 2.1.1).
func (t *rowTree) inclusion(index uint64) [][]byte {
	return auditPath(t.hashes, index)
}

// auditPath is PATH(m, D[n]) of RFC 6962 over leaf hashes.
func auditPath(leaves [][]byte, m uint64) [][]byte {
	n := uint64(len(leaves))
	if n <= 1 {
		return nil
	}
	k := uint64(1)
	for k<<1 < n {
		k <<= 1
	}
	if m < k {
		return append(auditPath(leaves[:k], m), subtreeHash(leaves[k:]))
	}
	return append(auditPath(leaves[k:], m-k), subtreeHash(leaves[:k]))
}

// subtreeHash is MTH over leaf hashes (at least one).
func subtreeHash(leaves [][]byte) []byte {
	if len(leaves) == 1 {
		return leaves[0]
	}
	k := 1
	for k<<1 < len(leaves) {
		k <<= 1
	}
	return rowHasher.HashChildren(subtreeHash(leaves[:k]), subtreeHash(leaves[k:]))
}

// RowRange names a batch's rows: a contract's rows with
// AfterSeq < seq <= LastSeq.
type RowRange struct {
	AfterSeq int64 `json:"after_seq"`
	LastSeq  int64 `json:"last_seq"`
}

// DisclosedRow is one ledger row of a batch with the proof that it is
// the leaf Index of the batch's row tree of Size leaves.
type DisclosedRow struct {
	Seq int64 `json:"seq"`
	// Leaf is the row's canonical leaf bytes (provgate.meter.row/v1).
	Leaf  []byte `json:"leaf"`
	Index uint64 `json:"index"`
	Size  uint64 `json:"size"`
	// Inclusion is the RFC 6962 audit path of SHA-256(0x00 || Leaf) at
	// Index up to the batch's root.
	Inclusion [][]byte `json:"inclusion"`
}

// VerifyDisclosedRow checks that d is leaf d.Index of the row tree of
// size leaves whose root is root (an aggregate batch's rows.root), and
// that its leaf is the row it says (its seq). It uses nothing but
// SHA-256 and the RFC 6962 verifier.
func VerifyDisclosedRow(root []byte, size uint64, d DisclosedRow) error {
	if d.Size != size {
		return fmt.Errorf("%w: row %d: proof for a tree of %d rows, the batch has %d", ErrDisclosure, d.Seq, d.Size, size)
	}
	if !bytes.HasPrefix(d.Leaf, []byte(`{"bytes":`)) || !bytes.Contains(d.Leaf, fmt.Appendf(nil, `,"seq":%d,`, d.Seq)) {
		return fmt.Errorf("%w: row %d: the leaf is not that row's", ErrDisclosure, d.Seq)
	}
	if err := proof.VerifyInclusion(rowHasher, d.Index, size, rowHasher.HashLeaf(d.Leaf), d.Inclusion, root); err != nil {
		return fmt.Errorf("%w: row %d: %v", ErrDisclosure, d.Seq, err)
	}
	return nil
}

// RowsRootOf is the row tree of contractID's rows in rng, as an aggregate
// batch over them commits it: the root and the number of rows. The rows
// must still be in the ledger (not pruned).
func (l *Ledger) RowsRootOf(ctx context.Context, contractID string, rng RowRange) (root []byte, count int64, err error) {
	t, _, err := l.rowTree(ctx, contractID, rng, nil)
	if err != nil {
		return nil, 0, err
	}
	return t.root(), int64(t.size()), nil
}

// DiscloseRows returns the rows seqs of contractID's batch over rng, each
// with its leaf, its index in the batch's row tree, the tree's size and
// the inclusion proof against the batch's root (RowsRootOf, and the
// rows.root of the aggregate batch that covered rng). A seq outside rng,
// or a row no longer in the ledger, is an error.
func (l *Ledger) DiscloseRows(ctx context.Context, contractID string, rng RowRange, seqs []int64) ([]DisclosedRow, error) {
	want := make(map[int64]int, len(seqs))
	for i, s := range seqs {
		if s <= rng.AfterSeq || s > rng.LastSeq {
			return nil, fmt.Errorf("meter: disclose %s: row %d is not in (%d, %d]", contractID, s, rng.AfterSeq, rng.LastSeq)
		}
		want[s] = i
	}
	t, found, err := l.rowTree(ctx, contractID, rng, want)
	if err != nil {
		return nil, err
	}
	out := make([]DisclosedRow, len(seqs))
	for i, s := range seqs {
		d, ok := found[s]
		if !ok {
			return nil, fmt.Errorf("meter: disclose %s: row %d is not a row of the contract in the ledger", contractID, s)
		}
		d.Size = t.size()
		d.Inclusion = t.inclusion(d.Index)
		out[i] = d
	}
	return out, nil
}

// rowTree builds the row tree of contractID's rows in rng, and collects
// the leaves of the rows in want. The range must start where the ledger
// still holds rows: a pruned row would silently change the tree.
func (l *Ledger) rowTree(ctx context.Context, contractID string, rng RowRange, want map[int64]int) (*rowTree, map[int64]DisclosedRow, error) {
	l.mu.Lock()
	c := l.contracts[contractID]
	l.mu.Unlock()
	if c == nil {
		return nil, nil, fmt.Errorf("%w: %q", ErrUnknownContract, contractID)
	}
	anchor, _, err := l.metaInt(ctx, "anchor_seq")
	if err != nil {
		return nil, nil, fmt.Errorf("meter: row tree %s: %w", contractID, err)
	}
	if anchor > rng.AfterSeq {
		return nil, nil, fmt.Errorf("meter: row tree %s: rows up to %d were pruned, the range starts after %d", contractID, anchor, rng.AfterSeq)
	}
	t := newRowTree(0)
	found := map[int64]DisclosedRow{}
	err = l.scanRows(ctx, func(r *Row, _ int64) error {
		if _, ok := want[r.Seq]; ok {
			found[r.Seq] = DisclosedRow{Seq: r.Seq, Leaf: RowLeaf(r), Index: t.size()}
		}
		t.add(r)
		return nil
	}, "SELECT seq, contract, rec, hash FROM events WHERE contract = ? AND seq > ? AND seq <= ? ORDER BY seq", c.id, rng.AfterSeq, rng.LastSeq)
	if err != nil {
		return nil, nil, fmt.Errorf("meter: row tree %s: %w", contractID, err)
	}
	return t, found, nil
}
