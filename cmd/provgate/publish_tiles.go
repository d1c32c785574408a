package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/provgate/provgate/registry"
)

const publishTilesSynopsis = "registry publish-tiles --db FILE --s3-endpoint URL --bucket B [--prefix P] [--contract ID...]"

// runPublishTiles writes the registry's logs as static tlog-tiles to an S3
// bucket, once: run it after appends or on a timer (it is idempotent and
// uploads only what changed, the checkpoint last).
func runPublishTiles(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("registry publish-tiles", publishTilesSynopsis, stderr)
	db := fs.String("db", "", "the registry's database, a SQLite file or a PostgreSQL URL (read only; the registry may be running)")
	endpoint := fs.String("s3-endpoint", "", "S3 endpoint URL (credentials: AWS_* environment or shared files)")
	bucket := fs.String("bucket", "", "bucket to publish to")
	prefix := fs.String("prefix", "", "key prefix: a contract's log goes under PREFIX/<contract id>/")
	parallel := fs.Int("parallel", 8, "concurrent uploads")
	logLevel := fs.String("log-level", "warn", "debug, info, warn or error")
	var contracts stringList
	fs.Var(&contracts, "contract", "contract whose log to publish (repeatable; default: every contract)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *db == "" || *endpoint == "" || *bucket == "" || fs.NArg() != 0 {
		return &usageError{msg: "registry publish-tiles: --db, --s3-endpoint and --bucket are required"}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return &usageError{msg: fmt.Sprintf("registry publish-tiles: --log-level: %v", err)}
	}
	s3, err := newS3Client(*endpoint)
	if err != nil {
		return err
	}
	reps, err := registry.PublishTiles(ctx, registry.PublishConfig{DBPath: *db, S3: s3, Bucket: *bucket, Prefix: *prefix,
		Contracts: contracts, Parallel: *parallel, Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))})
	for _, r := range reps {
		state := "up to date"
		if r.Checkpoint {
			state = fmt.Sprintf("published size %d (from %d): %d tiles, %d entry bundles, checkpoint", r.Size, r.From, r.Tiles, r.Bundles)
		}
		fmt.Fprintf(stdout, "publish-tiles: %s: %s\n", r.Contract, state)
	}
	return err
}
