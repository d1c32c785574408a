package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/provgate/provgate/cache"
)

func init() {
	commands["cache"] = command{summary: "cache maintenance: 'cache verify' re-hashes every entry and removes damaged ones", run: runCache}
}

const cacheSynopsis = "cache verify --cache-dir DIR [--quiet]"

func runCache(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintf(stderr, "Usage: provgate %s\n", cacheSynopsis)
		if len(args) == 0 {
			return &usageError{}
		}
		return errHelp
	}
	if args[0] != "verify" {
		return &usageError{msg: fmt.Sprintf("cache: unknown subcommand %q (want verify)", args[0])}
	}
	fs := newFlagSet("cache verify", cacheSynopsis, stderr)
	dir := fs.String("cache-dir", "", "the cache directory (required; not while provgate serve uses it)")
	quiet := fs.Bool("quiet", false, "no progress")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if *dir == "" || fs.NArg() != 0 {
		return &usageError{msg: "cache verify: --cache-dir is required"}
	}
	c, err := cache.Open(cache.Config{Dir: *dir})
	if errors.Is(err, cache.ErrLocked) {
		return fmt.Errorf("%w: stop provgate serve (or prefetch) first", err)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	var bar *progressBar
	var progress func(done, total int, bytes int64)
	if !*quiet {
		bar = newProgressBar(stderr, "verify")
		total, start := c.Stats().Bytes, time.Now()
		progress = func(done, n int, bytes int64) {
			bar.update(cache.Progress{Objects: done, TotalObjects: n, Bytes: bytes, TotalBytes: total, Elapsed: time.Since(start)})
		}
	}
	res, err := c.Scrub(ctx, progress)
	if bar != nil {
		bar.finish()
	}
	if err != nil {
		return err
	}
	for _, r := range res.Removed {
		fmt.Fprintln(stdout, "removed:", r)
	}
	fmt.Fprintf(stdout, "checked %d entries (%s): %d damaged, removed\n", res.Checked, humanBytes(float64(res.Bytes)), len(res.Removed))
	if err := c.Close(); err != nil {
		return err
	}
	if len(res.Removed) > 0 {
		return fmt.Errorf("cache verify: %d damaged entries removed", len(res.Removed))
	}
	return nil
}
