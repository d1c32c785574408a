package verify_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"testing"

	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/verify/verifytest"
)

func encodeBundle(entries [][]byte) []byte {
	var out []byte
	for _, e := range entries {
		out = binary.BigEndian.AppendUint16(out, uint16(len(e)))
		out = append(out, e...)
	}
	return out
}

// FuzzParseEntryBundle: any bytes either fail to parse or parse into
// entries that fit a bundle and encode back to the same bytes.
func FuzzParseEntryBundle(f *testing.F) {
	f.Add(encodeBundle([][]byte{[]byte("a"), []byte("bc"), {}}), 3)
	f.Add(encodeBundle([][]byte{bytes.Repeat([]byte{7}, 300)}), 1)
	f.Add([]byte{0, 5, 'a'}, 1)
	f.Add([]byte{0xff}, 1)
	f.Fuzz(func(t *testing.T, raw []byte, width int) {
		entries, err := verify.ParseEntryBundle(raw, width)
		if err != nil {
			return
		}
		if len(entries) != width {
			t.Fatalf("%d entries for width %d", len(entries), width)
		}
		full, err := verify.ParseEntryBundle(raw, 256)
		if err == nil {
			if !bytes.Equal(encodeBundle(full), raw) {
				t.Fatal("a full bundle does not encode back to its bytes")
			}
			return
		}
		if !bytes.Equal(encodeBundle(entries), raw) {
			t.Fatal("a bundle does not encode back to its bytes")
		}
	})
}

// FuzzParseHashTile: a tile parses only at the size of its width (or a
// full tile), into hashes of 32 bytes.
func FuzzParseHashTile(f *testing.F) {
	f.Add(bytes.Repeat([]byte{1}, 64), 2)
	f.Add(bytes.Repeat([]byte{1}, 8192), 5)
	f.Add([]byte{1, 2, 3}, 1)
	f.Fuzz(func(t *testing.T, raw []byte, width int) {
		hashes, err := verify.ParseHashTile(raw, width)
		if err != nil {
			return
		}
		if len(hashes) != width || (len(raw) != 32*width && len(raw) != 8192) {
			t.Fatalf("%d bytes parsed as %d hashes for width %d", len(raw), len(hashes), width)
		}
		for i, h := range hashes {
			if !bytes.Equal(h, raw[32*i:32*i+32]) {
				t.Fatalf("hash %d is not bytes %d..%d", i, 32*i, 32*i+32)
			}
		}
	})
}

// memTiles serves one small log's tiles from memory: a checkpoint, its
// one level-0 tile and its one entry bundle.
type memTiles struct {
	checkpoint, tile, bundle []byte
}

func (m *memTiles) ReadCheckpoint(context.Context) ([]byte, error) { return m.checkpoint, nil }
func (m *memTiles) ReadTile(_ context.Context, level, index uint64, p uint8) ([]byte, error) {
	if level != 0 || index != 0 {
		return nil, fmt.Errorf("tile %d/%d: %w", level, index, os.ErrNotExist)
	}
	return m.tile, nil
}
func (m *memTiles) ReadEntryBundle(_ context.Context, index uint64, p uint8) ([]byte, error) {
	if index != 0 {
		return nil, fmt.Errorf("bundle %d: %w", index, os.ErrNotExist)
	}
	return m.bundle, nil
}

// FuzzTileSource: whatever a tiles server sends as the bundle and the
// tile of a signed log, a TileSource returns exactly the log's entries
// or an error.
func FuzzTileSource(f *testing.F) {
	l := verifytest.NewLog(f, "did:example:fuzz-tiles")
	for _, e := range []string{"one", "two", "three", "four"} {
		l.AppendRaw([]byte(e))
	}
	size := l.Size()
	var entries [][]byte
	var tile []byte
	for seq := uint64(1); seq <= size; seq++ {
		entries = append(entries, l.Entry(seq))
		tile = append(tile, rfc6962.DefaultHasher.HashLeaf(l.Entry(seq))...)
	}
	bundle := encodeBundle(entries)
	cp := l.SignCheckpoint(f, size)
	f.Add(bundle, tile)
	f.Add(bundle[:len(bundle)-1], tile)
	f.Add(append(bytes.Clone(bundle), 0, 1, 'x'), tile)
	f.Add(bundle, tile[:len(tile)-32])
	f.Fuzz(func(t *testing.T, b, tl []byte) {
		ts, err := verify.NewTileSource(l.Contract, &memTiles{checkpoint: cp, tile: tl, bundle: b})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if _, err := ts.Checkpoint(ctx, l.Contract.ContractID); err != nil {
			t.Fatal(err)
		}
		page, err := ts.Events(ctx, l.Contract.ContractID, 0, 100)
		if err != nil {
			return
		}
		if len(page.Entries) != len(entries) {
			t.Fatalf("%d entries, want %d", len(page.Entries), len(entries))
		}
		for i, we := range page.Entries {
			if we.Seq != uint64(i+1) || !bytes.Equal(we.Entry, entries[i]) {
				t.Fatalf("entry %d (seq %d) is not the log's", i, we.Seq)
			}
		}
		// A full tile stands for a partial one: its first hashes count.
		if len(tl) == verify.MaxTileSize {
			tl = tl[:len(tile)]
		}
		if !bytes.Equal(tl, tile) {
			t.Fatal("a tile that is not the log's was accepted")
		}
	})
}
