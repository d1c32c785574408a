package registry

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/tessera/api/layout"

	"github.com/provgate/provgate/contract"
)

// Static tiles: each contract's log as C2SP tlog-tiles, read-only, at
//
//	GET /logs/{id}/checkpoint                   the latest signed checkpoint (with witness cosignatures)
//	GET /logs/{id}/tile/{L}/{N}[.p/{W}]         Merkle tiles: the hashes of the tree's level 8·L nodes
//	GET /logs/{id}/tile/entries/{N}[.p/{W}]     entry bundles: the entries' exact bytes, each behind a big-endian uint16 length
//
// so that "<registry>/logs" is a log URL a follower reads like any tiles
// mirror (provgate registry publish-tiles writes the same layout under a
// bucket prefix). Everything is computed from the stored entries and
// Merkle nodes: a tile of width W exists once the log holds its W
// nodes, and never changes after (full tiles are immutable; a partial
// one is superseded by a wider one).

// Tile cache lifetimes.
const (
	// CacheImmutable is the Cache-Control of full tiles and bundles.
	CacheImmutable = "public, max-age=31536000, immutable"
	// CachePartial is the Cache-Control of partial tiles and bundles: a
	// wider one soon supersedes them.
	CachePartial = "public, max-age=60"
	// CacheCheckpoint is the Cache-Control of the tiles checkpoint: short,
	// so that a follower sees a new one within seconds.
	CacheCheckpoint = "public, max-age=5"
	// MaxBundleEntrySize is the largest entry an entry bundle can hold
	// (its length prefix is a uint16).
	MaxBundleEntrySize = 1<<16 - 1
)

// errEntryTooLarge: the log holds an entry that tlog-tiles cannot carry.
var errEntryTooLarge = errors.New("entry too large for a tlog-tiles entry bundle")

// tileStore is what the tiles read from a store.
type tileStore interface {
	nodes(ctx context.Context, contractID string, ids []compact.NodeID) ([][]byte, error)
	entries(ctx context.Context, contractID string, since uint64, limit, maxBytes int) ([]contract.WireEntry, error)
}

// tileWidth is the width of tile (level, index) in a log of size:
// layout.TileWidth when full, 0 when it holds no node yet.
func tileWidth(level, index, size uint64) uint64 {
	if level >= 8 || index >= 1<<56 { // beyond 2^64 leaves
		return 0
	}
	at := size >> (layout.TileHeight * level)
	if at <= index*layout.TileWidth {
		return 0
	}
	return min(at-index*layout.TileWidth, layout.TileWidth)
}

// hashTile is the tile (level, index) of width w: the hashes of the
// nodes at tree level 8·level, index·256 to index·256+w-1.
func hashTile(ctx context.Context, st tileStore, contractID string, size, level, index, w uint64) ([]byte, error) {
	if w == 0 || w > tileWidth(level, index, size) {
		return nil, errNotFound
	}
	ids := make([]compact.NodeID, w)
	for i := range ids {
		ids[i] = compact.NewNodeID(uint(level*layout.TileHeight), index*layout.TileWidth+uint64(i))
	}
	hashes, err := st.nodes(ctx, contractID, ids)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(hashes)*32)
	for _, h := range hashes {
		if len(h) != 32 {
			return nil, fmt.Errorf("%w: node hash of %d bytes", errCorrupted, len(h))
		}
		out = append(out, h...)
	}
	return out, nil
}

// entryBundle is the entry bundle index of width w: entries index·256+1
// to index·256+w (seqs count from 1, tile indexes from 0).
func entryBundle(ctx context.Context, st tileStore, contractID string, size, index, w uint64) ([]byte, error) {
	if w == 0 || w > tileWidth(0, index, size) {
		return nil, errNotFound
	}
	var buf bytes.Buffer
	since, end := index*layout.TileWidth, index*layout.TileWidth+w
	for since < end {
		page, err := st.entries(ctx, contractID, since, int(end-since), int(end-since)*(MaxBundleEntrySize+2))
		if err != nil {
			return nil, err
		}
		if len(page) == 0 {
			return nil, fmt.Errorf("%w: entries after %d missing below size %d", errCorrupted, since, size)
		}
		for _, e := range page {
			if e.Seq != since+1 {
				return nil, fmt.Errorf("%w: entry %d where %d was due", errCorrupted, e.Seq, since+1)
			}
			if len(e.Entry) > MaxBundleEntrySize {
				return nil, contract.Errorf(http.StatusUnprocessableEntity, contract.CodeTooLarge,
					"%v: entry %d is %d bytes, over %d", errEntryTooLarge, e.Seq, len(e.Entry), MaxBundleEntrySize)
			}
			buf.Write(binary.BigEndian.AppendUint16(nil, uint16(len(e.Entry))))
			buf.Write(e.Entry)
			since = e.Seq
			if since == end {
				break
			}
		}
	}
	return buf.Bytes(), nil
}

// tilePath is a parsed tlog-tiles resource path.
type tilePath struct {
	checkpoint bool
	entries    bool
	level      uint64
	index      uint64
	width      uint64 // layout.TileWidth for a full tile
}

// parseTilePath parses "checkpoint", "tile/entries/N[.p/W]" or
// "tile/L/N[.p/W]", accepting only the canonical spelling of each.
func parseTilePath(p string) (tilePath, error) {
	if p == layout.CheckpointPath {
		return tilePath{checkpoint: true}, nil
	}
	rest, ok := strings.CutPrefix(p, "tile/")
	if !ok {
		return tilePath{}, fmt.Errorf("not a tlog-tiles path: %q", p)
	}
	var tp tilePath
	var canon string
	var partial uint8
	var err error
	if idx, ok := strings.CutPrefix(rest, "entries/"); ok {
		tp.entries = true
		if tp.index, partial, err = layout.ParseTileIndexPartial(idx); err != nil {
			return tilePath{}, fmt.Errorf("entry bundle path %q: %v", p, err)
		}
		canon = layout.EntriesPath(tp.index, partial)
	} else {
		level, idx, ok := strings.Cut(rest, "/")
		if !ok {
			return tilePath{}, fmt.Errorf("tile path %q: no index", p)
		}
		if tp.level, tp.index, partial, err = layout.ParseTileLevelIndexPartial(level, idx); err != nil {
			return tilePath{}, fmt.Errorf("tile path %q: %v", p, err)
		}
		canon = layout.TilePath(tp.level, tp.index, partial)
	}
	if canon != p {
		return tilePath{}, fmt.Errorf("tile path %q is not canonical (%q)", p, canon)
	}
	tp.width = layout.TileWidth
	if partial > 0 {
		tp.width = uint64(partial)
	}
	return tp, nil
}

// handleTiles serves the static tiles of a contract's log.
func (s *Server) handleTiles(w http.ResponseWriter, r *http.Request) error {
	c, err := s.loadContract(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	tp, err := parseTilePath(r.PathValue("path"))
	if err != nil {
		return contract.Errorf(http.StatusNotFound, contract.CodeNotFound, "%v", err)
	}
	if tp.checkpoint {
		note, err := s.cosignedCheckpoint(r.Context(), c.ContractID)
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", CacheCheckpoint)
		w.Write(note)
		return nil
	}
	size, err := s.st.logSize(r.Context(), c.ContractID)
	if err != nil {
		return err
	}
	var body []byte
	if tp.entries {
		body, err = entryBundle(r.Context(), s.st, c.ContractID, size, tp.index, tp.width)
	} else {
		body, err = hashTile(r.Context(), s.st, c.ContractID, size, tp.level, tp.index, tp.width)
	}
	if errors.Is(err, errNotFound) {
		return contract.Errorf(http.StatusNotFound, contract.CodeNotFound, "%s: not in the log yet (size %d)", r.PathValue("path"), size)
	}
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if tp.width == layout.TileWidth {
		w.Header().Set("Cache-Control", CacheImmutable)
	} else {
		w.Header().Set("Cache-Control", CachePartial)
	}
	w.Write(body)
	return nil
}
