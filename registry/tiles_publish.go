package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/minio/minio-go/v7"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api/layout"
	"golang.org/x/sync/errgroup"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// PublishConfig configures PublishTiles.
type PublishConfig struct {
	// DBPath is the registry's database (read only; the registry may be
	// running or stopped).
	DBPath string
	// S3 writes to Bucket; objects go under Prefix + contract id + "/".
	S3     *minio.Client
	Bucket string
	Prefix string
	// Contracts limits publishing to these contracts; empty: every one.
	Contracts []string
	// Parallel is the number of concurrent uploads; 0: 8.
	Parallel int
	Logger   *slog.Logger
}

// PublishReport is what PublishTiles did for one contract.
type PublishReport struct {
	Contract string `json:"contract_id"`
	// From is the size of the checkpoint found in the bucket (0: none, or
	// one that was not a prefix of this log), Size the one published.
	From, Size uint64
	Tiles      int  `json:"tiles"`
	Bundles    int  `json:"bundles"`
	Checkpoint bool `json:"checkpoint"`
}

// PublishTiles writes each contract's log as static C2SP tlog-tiles to an
// S3 bucket, in the layout the registry serves under /logs/. It is
// idempotent and incremental: the checkpoint already in the bucket tells
// which tiles are there, so only tiles and bundles that are new or grew
// are uploaded; the checkpoint is uploaded last, once everything it
// commits to is in place, and only when it changed. A bucket checkpoint
// that does not verify is overwritten (every tile is published again);
// one that verifies but is newer than the database's (a lagging replica)
// or not a prefix of the log (a fork) is an error, never rolled back.
func PublishTiles(ctx context.Context, cfg PublishConfig) ([]PublishReport, error) {
	if cfg.S3 == nil || cfg.Bucket == "" {
		return nil, errors.New("publish tiles: an S3 client and a bucket are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 8
	}
	if cfg.Prefix != "" && !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	st, err := openStore(ctx, cfg.DBPath, false)
	if err != nil {
		return nil, fmt.Errorf("publish tiles: %w", err)
	}
	defer st.close()
	bodies, err := st.contracts(ctx)
	if err != nil {
		return nil, fmt.Errorf("publish tiles: %w", err)
	}
	var out []PublishReport
	seen := map[string]bool{}
	for _, b := range bodies {
		var c contract.Contract
		if err := json.Unmarshal(b, &c); err != nil {
			return out, fmt.Errorf("publish tiles: %w: contract: %v", errCorrupted, err)
		}
		if len(cfg.Contracts) > 0 && !slices.Contains(cfg.Contracts, c.ContractID) {
			continue
		}
		seen[c.ContractID] = true
		rep, err := publishLog(ctx, cfg, st, &c)
		if err != nil {
			return out, fmt.Errorf("publish tiles: %s: %w", c.ContractID, err)
		}
		cfg.Logger.Info("tiles published", "contract", c.ContractID, "from", rep.From, "size", rep.Size,
			"tiles", rep.Tiles, "bundles", rep.Bundles, "checkpoint", rep.Checkpoint)
		out = append(out, *rep)
	}
	for _, id := range cfg.Contracts {
		if !seen[id] {
			return out, fmt.Errorf("publish tiles: no contract %q in %s", id, cfg.DBPath)
		}
	}
	return out, nil
}

func publishLog(ctx context.Context, cfg PublishConfig, st *sqliteStore, c *contract.Contract) (*PublishReport, error) {
	rep := &PublishReport{Contract: c.ContractID}
	cpv, err := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	if err != nil {
		return nil, err
	}
	raw, err := st.latestCheckpoint(ctx, c.ContractID)
	if err != nil {
		return nil, fmt.Errorf("latest checkpoint: %w", err)
	}
	cp, err := cpv.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: latest checkpoint: %v", errCorrupted, err)
	}
	if raw, err = appendCosignatures(ctx, st, c.ContractID, raw); err != nil {
		return nil, err
	}
	rep.Size = cp.Size
	base := cfg.Prefix + c.ContractID + "/"

	// What the bucket holds already.
	old, err := getObject(ctx, cfg, base+layout.CheckpointPath)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(old, raw) {
		rep.From = cp.Size
		return rep, nil
	}
	if old != nil {
		prev, err := cpv.Parse(old)
		if err != nil {
			cfg.Logger.Warn("the bucket's checkpoint does not verify; publishing every tile", "contract", c.ContractID, "err", err)
		} else {
			if prev.Size > cp.Size {
				return nil, fmt.Errorf("the bucket holds a checkpoint of size %d, newer than the database's %d: not rolling it back", prev.Size, cp.Size)
			}
			root, err := rootOf(ctx, st, c.ContractID, prev.Size)
			if err != nil {
				return nil, err
			}
			if !bytes.Equal(root, prev.Hash) {
				return nil, fmt.Errorf("the bucket's checkpoint of size %d (root %x) is signed by this log's key but is not a prefix of this log (root %x): evidence of a fork, not overwritten", prev.Size, prev.Hash, root)
			}
			rep.From = prev.Size
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cfg.Parallel)
	var mu sync.Mutex
	count := func(n *int) {
		mu.Lock()
		*n++
		mu.Unlock()
	}
	put := func(key string, body []byte, full bool) error {
		cc := CachePartial
		if full {
			cc = CacheImmutable
		}
		_, err := cfg.S3.PutObject(gctx, cfg.Bucket, key, bytes.NewReader(body), int64(len(body)),
			minio.PutObjectOptions{ContentType: "application/octet-stream", CacheControl: cc})
		if err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
		return nil
	}
	for level := uint64(0); level < 8 && cp.Size>>(layout.TileHeight*level) > 0; level++ {
		at := cp.Size >> (layout.TileHeight * level)
		for index := (rep.From >> (layout.TileHeight * level)) / layout.TileWidth; index*layout.TileWidth < at; index++ {
			w := tileWidth(level, index, cp.Size)
			if w == tileWidth(level, index, rep.From) {
				continue // unchanged since the bucket's checkpoint
			}
			p := uint8(0)
			if w < layout.TileWidth {
				p = uint8(w)
			}
			g.Go(func() error {
				body, err := hashTile(gctx, st, c.ContractID, cp.Size, level, index, w)
				if err != nil {
					return fmt.Errorf("tile %d/%d: %w", level, index, err)
				}
				if err := put(base+layout.TilePath(level, index, p), body, p == 0); err != nil {
					return err
				}
				count(&rep.Tiles)
				if level > 0 {
					return nil
				}
				if body, err = entryBundle(gctx, st, c.ContractID, cp.Size, index, w); err != nil {
					return fmt.Errorf("entry bundle %d: %w", index, err)
				}
				if err := put(base+layout.EntriesPath(index, p), body, p == 0); err != nil {
					return err
				}
				count(&rep.Bundles)
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	// Last: the checkpoint, once all it commits to is readable.
	if _, err := cfg.S3.PutObject(ctx, cfg.Bucket, base+layout.CheckpointPath, bytes.NewReader(raw), int64(len(raw)),
		minio.PutObjectOptions{ContentType: "text/plain; charset=utf-8", CacheControl: CacheCheckpoint}); err != nil {
		return nil, fmt.Errorf("put checkpoint: %w", err)
	}
	rep.Checkpoint = true
	return rep, nil
}

// getObject reads a small object; nil when there is none.
func getObject(ctx context.Context, cfg PublishConfig, key string) ([]byte, error) {
	o, err := cfg.S3.GetObject(ctx, cfg.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	defer o.Close()
	b, err := io.ReadAll(io.LimitReader(o, verify.MaxCheckpointSize+1))
	if minio.ToErrorResponse(err).Code == "NoSuchKey" {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return b, nil
}

// appendCosignatures adds the stored witness cosignatures of raw's body,
// so that followers that require a witness quorum can use the tiles.
func appendCosignatures(ctx context.Context, st store, contractID string, raw []byte) ([]byte, error) {
	ws, ok := st.(witnessStore)
	if !ok {
		return raw, nil
	}
	i := bytes.Index(raw, []byte("\n\n"))
	if i < 0 {
		return nil, fmt.Errorf("%w: checkpoint note without signatures", errCorrupted)
	}
	// The table exists once the registry ran with witnesses; creating it
	// empty otherwise is harmless.
	if err := ws.initWitnessTables(ctx); err != nil {
		return nil, err
	}
	rows, err := ws.cosignatures(ctx, contractID)
	if err != nil {
		return nil, err
	}
	out := bytes.Clone(raw)
	for _, r := range rows {
		if r.Body == string(raw[:i+1]) {
			out = append(out, r.Line...)
		}
	}
	return out, nil
}

// rootOf is the root of the first size entries of a log.
func rootOf(ctx context.Context, st store, contractID string, size uint64) ([]byte, error) {
	if size == 0 {
		return rfc6962.DefaultHasher.EmptyRoot(), nil
	}
	hashes, err := st.nodes(ctx, contractID, compact.RangeNodes(0, size, nil))
	if err != nil {
		return nil, err
	}
	rng, err := rangeFactory.NewRange(0, size, hashes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errCorrupted, err)
	}
	return rng.GetRootHash(nil)
}
