package verify

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api/layout"

	"github.com/provgate/provgate/contract"
)

// Static tiles (C2SP tlog-tiles). A TileSource is the LogSource of a
// follower that reads a log from its checkpoint, Merkle tiles and entry
// bundles (a CDN, an S3 bucket, the registry's /logs/) instead of the
// registry's dynamic endpoints. Nothing a tiles server sends is trusted:
// each bundle's entries, with the tile nodes left and right of them,
// must hash to the root of the checkpoint the follower verified, and
// the bundle's level-0 tile must hold its entries' leaf hashes;
// consistency proofs built from tiles are checked by the follower as
// before.

// Tile limits, from the tlog-tiles format.
const (
	// HashSize is the size of a tile's hashes.
	HashSize = 32
	// MaxTileSize is the size of a full tile.
	MaxTileSize = layout.TileWidth * HashSize
	// MaxBundleEntrySize is the largest entry a bundle can hold.
	MaxBundleEntrySize = 1<<16 - 1
	// MaxBundleSize is the size of a full bundle of the largest entries.
	MaxBundleSize = layout.EntryBundleWidth * (2 + MaxBundleEntrySize)
)

// ErrTiles: tiles or entry bundles that do not match the signed
// checkpoint (a tampered or broken mirror). It is a root mismatch.
var ErrTiles = fmt.Errorf("%w: static tiles", ErrRoot)

// TileFetcher reads a log's tlog-tiles resources; p is the partial width
// (0: a full tile). Its methods are those of tessera's client.HTTPFetcher
// (which falls back to the full tile when a partial one is gone).
type TileFetcher interface {
	ReadCheckpoint(ctx context.Context) ([]byte, error)
	ReadTile(ctx context.Context, level, index uint64, p uint8) ([]byte, error)
	ReadEntryBundle(ctx context.Context, index uint64, p uint8) ([]byte, error)
}

// TileSource is a LogSource that reads one contract's log from static
// tiles.
type TileSource struct {
	id  string
	f   TileFetcher
	cpv *CheckpointVerifier

	mu    sync.Mutex
	cp    *Checkpoint        // the checkpoint last read, when it verified
	tiles map[tileKey][]byte // tiles read for that checkpoint
}

var _ LogSource = (*TileSource)(nil)

type tileKey struct{ level, index, width uint64 }

// maxCachedTiles bounds the tiles a TileSource keeps between reads.
const maxCachedTiles = 1024

// NewTileSource reads the log of contract c (its origin and checkpoint
// key verify the checkpoints) through f.
func NewTileSource(c *contract.Contract, f TileFetcher) (*TileSource, error) {
	cpv, err := NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	if err != nil {
		return nil, fmt.Errorf("tiles of %s: %w", c.ContractID, err)
	}
	return &TileSource{id: c.ContractID, f: f, cpv: cpv, tiles: map[tileKey][]byte{}}, nil
}

func (s *TileSource) checkID(id string) error {
	if id != s.id {
		return fmt.Errorf("tiles of %s asked for the log of %s", s.id, id)
	}
	return nil
}

// Checkpoint reads the log's checkpoint. It returns it as read: the
// follower verifies it (signature, freshness, witnesses, consistency);
// the entries and proofs read next are checked against it.
func (s *TileSource) Checkpoint(ctx context.Context, id string) ([]byte, error) {
	if err := s.checkID(id); err != nil {
		return nil, err
	}
	raw, err := s.f.ReadCheckpoint(ctx)
	if err != nil {
		return nil, err
	}
	cp, perr := s.cpv.Parse(raw)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cp, s.tiles = nil, map[tileKey][]byte{}
	if perr == nil {
		s.cp = cp
	}
	return raw, nil
}

func (s *TileSource) checkpoint() (*Checkpoint, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cp == nil {
		return nil, fmt.Errorf("%w: no verified checkpoint read from the tiles yet", ErrNotVerified)
	}
	return s.cp, nil
}

// Events returns the entries after since (at most limit, and at most to
// the end of since's entry bundle), each checked against the checkpoint
// last read.
func (s *TileSource) Events(ctx context.Context, id string, since uint64, limit int) (*contract.EventsPage, error) {
	if err := s.checkID(id); err != nil {
		return nil, err
	}
	cp, err := s.checkpoint()
	if err != nil {
		return nil, err
	}
	if since >= cp.Size {
		return &contract.EventsPage{Entries: []contract.WireEntry{}, TreeSize: cp.Size}, nil
	}
	index := since / layout.EntryBundleWidth
	entries, err := s.bundle(ctx, cp, index)
	if err != nil {
		return nil, err
	}
	first := index * layout.EntryBundleWidth // seq of entries[0] is first+1
	page := &contract.EventsPage{TreeSize: cp.Size}
	for i := since - first; i < uint64(len(entries)) && len(page.Entries) < max(limit, 1); i++ {
		page.Entries = append(page.Entries, contract.WireEntry{Seq: first + i + 1, Entry: entries[i]})
	}
	return page, nil
}

// bundle reads entry bundle index at cp's size and checks it: its
// entries, with the tree nodes left and right of them, hash to cp's
// root, and the level-0 tile holds their leaf hashes.
func (s *TileSource) bundle(ctx context.Context, cp *Checkpoint, index uint64) ([][]byte, error) {
	w := tileWidth(0, index, cp.Size)
	path := layout.EntriesPath(index, partial(w))
	raw, err := s.f.ReadEntryBundle(ctx, index, partial(w))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	entries, err := ParseEntryBundle(raw, int(w))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrTiles, path, err)
	}
	begin := index * layout.TileWidth
	leaves := make([][]byte, len(entries))
	mid := rangeFactory.NewEmptyRange(begin)
	for i, e := range entries {
		leaves[i] = rfc6962.DefaultHasher.HashLeaf(e)
		if err := mid.Append(leaves[i], nil); err != nil {
			return nil, err
		}
	}
	root, err := s.rootAround(ctx, cp.Size, mid)
	if err != nil {
		return nil, err
	}
	tilePath := layout.TilePath(0, index, partial(w))
	tile, terr := s.tile(ctx, cp.Size, 0, index, false)
	if !bytes.Equal(root, cp.Hash) {
		// Name the entry when the tile tells which.
		if terr == nil {
			for i, l := range leaves {
				if !bytes.Equal(l, tile[i]) {
					return nil, fmt.Errorf("%w: entry %d in %s does not hash to leaf %d of %s, and the bundle does not hash to the root %x of the checkpoint of size %d",
						ErrTiles, begin+uint64(i)+1, path, i, tilePath, cp.Hash, cp.Size)
				}
			}
		}
		return nil, fmt.Errorf("%w: %s with the tiles around it hashes to %x, not to the root %x of the checkpoint of size %d",
			ErrTiles, path, root, cp.Hash, cp.Size)
	}
	if terr != nil {
		return nil, terr
	}
	for i, l := range leaves {
		if !bytes.Equal(l, tile[i]) {
			return nil, fmt.Errorf("%w: hash %d of %s is %x, not the leaf hash %x of entry %d (which the checkpoint's root commits to)",
				ErrTiles, i, tilePath, tile[i], l, begin+uint64(i)+1)
		}
	}
	return entries, nil
}

// rootAround is the root of a log of size whose leaves in mid's range
// are mid's, and whose other nodes are read from tiles.
func (s *TileSource) rootAround(ctx context.Context, size uint64, mid *compact.Range) ([]byte, error) {
	left, err := s.rangeOf(ctx, size, 0, mid.Begin())
	if err != nil {
		return nil, err
	}
	right, err := s.rangeOf(ctx, size, mid.End(), size)
	if err != nil {
		return nil, err
	}
	if err := left.AppendRange(mid, nil); err != nil {
		return nil, err
	}
	if err := left.AppendRange(right, nil); err != nil {
		return nil, err
	}
	return left.GetRootHash(nil)
}

// rangeOf is the compact range [begin, end) of a log of size, its nodes
// read from tiles.
func (s *TileSource) rangeOf(ctx context.Context, size, begin, end uint64) (*compact.Range, error) {
	ids := compact.RangeNodes(begin, end, nil)
	hashes := make([][]byte, len(ids))
	for i, id := range ids {
		var err error
		if hashes[i], err = s.node(ctx, size, id); err != nil {
			return nil, err
		}
	}
	return rangeFactory.NewRange(begin, end, hashes)
}

// node is the hash of a complete node of a log of size, from the tile
// that holds it or, for a level the tiles do not store, from the nodes
// below it in the tile underneath.
func (s *TileSource) node(ctx context.Context, size uint64, id compact.NodeID) ([]byte, error) {
	level := uint64(id.Level) / layout.TileHeight
	r := uint64(id.Level) % layout.TileHeight
	first := id.Index << r // index of its leftmost descendant at level 8·level
	tile, err := s.tile(ctx, size, level, first/layout.TileWidth, true)
	if err != nil {
		return nil, err
	}
	off := first % layout.TileWidth
	if off+1<<r > uint64(len(tile)) {
		return nil, fmt.Errorf("%w: node %d/%d is not in %s", ErrTiles, id.Level, id.Index,
			layout.TilePath(level, first/layout.TileWidth, partial(uint64(len(tile)))))
	}
	hs := tile[off : off+1<<r]
	for len(hs) > 1 {
		next := make([][]byte, len(hs)/2)
		for i := range next {
			next[i] = rfc6962.DefaultHasher.HashChildren(hs[2*i], hs[2*i+1])
		}
		hs = next
	}
	return hs[0], nil
}

// tile reads tile (level, index) at its width in a log of size.
func (s *TileSource) tile(ctx context.Context, size, level, index uint64, keep bool) ([][]byte, error) {
	w := tileWidth(level, index, size)
	k := tileKey{level, index, w}
	s.mu.Lock()
	raw, ok := s.tiles[k]
	s.mu.Unlock()
	path := layout.TilePath(level, index, partial(w))
	if !ok {
		var err error
		if raw, err = s.f.ReadTile(ctx, level, index, partial(w)); err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
	}
	hashes, err := ParseHashTile(raw, int(w))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrTiles, path, err)
	}
	if keep && !ok {
		s.mu.Lock()
		if len(s.tiles) >= maxCachedTiles {
			clear(s.tiles)
		}
		s.tiles[k] = raw
		s.mu.Unlock()
	}
	return hashes, nil
}

// ConsistencyProof builds the RFC 6962 proof from size from to size to
// out of tiles. The follower verifies it against both checkpoints.
func (s *TileSource) ConsistencyProof(ctx context.Context, id string, from, to uint64) (*contract.ConsistencyProof, error) {
	if err := s.checkID(id); err != nil {
		return nil, err
	}
	nodes, err := proof.Consistency(from, to)
	if err != nil {
		return nil, fmt.Errorf("consistency proof %d..%d: %w", from, to, err)
	}
	hashes := make([][]byte, len(nodes.IDs))
	for i, n := range nodes.IDs {
		if hashes[i], err = s.node(ctx, to, n); err != nil {
			return nil, err
		}
	}
	if hashes, err = nodes.Rehash(hashes, rfc6962.DefaultHasher.HashChildren); err != nil {
		return nil, fmt.Errorf("consistency proof %d..%d: %w", from, to, err)
	}
	return &contract.ConsistencyProof{From: from, To: to, Hashes: hashes}, nil
}

// ParseHashTile parses a tile that should hold width hashes. A full tile
// is accepted for a partial one (a server whose partial tile is gone
// serves the full one): its first width hashes are the same nodes.
func ParseHashTile(raw []byte, width int) ([][]byte, error) {
	if width < 1 || width > layout.TileWidth {
		return nil, fmt.Errorf("tile width %d out of range", width)
	}
	if len(raw) != width*HashSize && len(raw) != MaxTileSize {
		return nil, fmt.Errorf("tile of %d bytes, want %d hashes (%d bytes)", len(raw), width, width*HashSize)
	}
	out := make([][]byte, width)
	for i := range out {
		out[i] = raw[i*HashSize : (i+1)*HashSize : (i+1)*HashSize]
	}
	return out, nil
}

// ParseEntryBundle parses an entry bundle that should hold width entries,
// each behind its big-endian uint16 length. As with tiles, a full bundle
// is accepted for a partial one.
func ParseEntryBundle(raw []byte, width int) ([][]byte, error) {
	if width < 1 || width > layout.EntryBundleWidth {
		return nil, fmt.Errorf("bundle width %d out of range", width)
	}
	if len(raw) > MaxBundleSize {
		return nil, fmt.Errorf("bundle of %d bytes exceeds %d", len(raw), MaxBundleSize)
	}
	var out [][]byte
	for rest := raw; len(rest) > 0; {
		if len(rest) < 2 {
			return nil, errors.New("bundle ends inside a length prefix")
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest)-2 < n {
			return nil, fmt.Errorf("entry %d: length %d runs past the bundle's end", len(out), n)
		}
		if len(out) == layout.EntryBundleWidth {
			return nil, fmt.Errorf("bundle holds more than %d entries", layout.EntryBundleWidth)
		}
		out = append(out, rest[2:2+n:2+n])
		rest = rest[2+n:]
	}
	switch {
	case len(out) == width:
		return out, nil
	case len(out) == layout.EntryBundleWidth:
		return out[:width], nil
	}
	return nil, fmt.Errorf("bundle holds %d entries, want %d", len(out), width)
}

// tileWidth is the width of tile (level, index) in a log of size:
// layout.TileWidth when full, 0 when it holds no node yet.
func tileWidth(level, index, size uint64) uint64 {
	if level >= 8 || index >= 1<<56 {
		return 0
	}
	at := size >> (layout.TileHeight * level)
	if at <= index*layout.TileWidth {
		return 0
	}
	return min(at-index*layout.TileWidth, layout.TileWidth)
}

// partial is the tlog-tiles partial width of a tile of width w (0: full).
func partial(w uint64) uint8 {
	if w >= layout.TileWidth {
		return 0
	}
	return uint8(w)
}
