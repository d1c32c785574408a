package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/internal/sidecar"
)

func init() {
	commands["prefetch"] = command{summary: "warm the verified cache with a contract's objects (progress on stderr)", run: runPrefetch}
}

const prefetchSynopsis = "prefetch (serve's flags) --contract ID [--concurrency N] [--quiet]"

func runPrefetch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("prefetch", prefetchSynopsis, stderr)
	f := addServeFlags(fs)
	concurrency := fs.Int("concurrency", cache.DefaultMaxFetches, "objects fetched at once")
	quiet := fs.Bool("quiet", false, "no progress bar")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return &usageError{msg: "prefetch takes no arguments"}
	}
	if *concurrency <= 0 {
		return &usageError{msg: "--concurrency must be positive"}
	}
	cfg, err := f.sidecarConfig(stderr)
	if err != nil {
		return err
	}
	// A private data endpoint: prefetch serves nobody.
	cfg.Listen, cfg.UnixSocket, cfg.ProxyListen = "127.0.0.1:0", "", ""
	if cfg.MaxFetches < *concurrency {
		cfg.MaxFetches = *concurrency
	}
	sc, err := sidecar.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
		defer cancel()
		sc.Shutdown(sctx)
	}()
	if err := sc.WaitReady(ctx); err != nil {
		return err
	}
	var failed error
	for _, id := range f.contracts {
		objs, err := sc.Objects(id)
		if err != nil {
			return err
		}
		var bar *progressBar
		var progress func(cache.Progress)
		if !*quiet {
			bar = newProgressBar(stderr, id)
			progress = bar.update
		}
		err = sc.Cache().Prefetch(ctx, id, objs, *concurrency, progress)
		if bar != nil {
			bar.finish()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			failed = fmt.Errorf("prefetch %s: %w", id, err)
		}
	}
	s := sc.Cache().Stats()
	fmt.Fprintf(stdout, "cache: %d entries, %s of %s\n", s.Entries, humanBytes(float64(s.Bytes)), humanBytes(float64(s.MaxBytes)))
	return failed
}

// progressBar draws prefetch progress on a terminal (redrawn in place) or,
// when stderr is not a terminal, as a line every few seconds.
type progressBar struct {
	w      io.Writer
	label  string
	tty    bool
	mu     sync.Mutex
	last   time.Time
	latest cache.Progress
	drawn  bool
}

func newProgressBar(w io.Writer, label string) *progressBar {
	tty := false
	if f, ok := w.(*os.File); ok {
		if info, err := f.Stat(); err == nil && info.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progressBar{w: w, label: label, tty: tty}
}

func (b *progressBar) update(p cache.Progress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.latest = p
	every := 5 * time.Second
	if b.tty {
		every = 100 * time.Millisecond
	}
	if time.Since(b.last) < every && p.Objects < p.TotalObjects {
		return
	}
	b.last = time.Now()
	b.draw()
}

func (b *progressBar) draw() {
	line := formatProgress(b.label, b.latest)
	if b.tty {
		fmt.Fprintf(b.w, "\r\033[K%s", line)
	} else {
		fmt.Fprintln(b.w, line)
	}
	b.drawn = true
}

func (b *progressBar) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tty {
		b.draw()
		fmt.Fprintln(b.w)
		return
	}
	if !b.drawn || b.latest.Objects < b.latest.TotalObjects {
		b.draw()
	}
}

// formatProgress renders one progress line:
// "ID [=======>    ]  45%  1.2 GiB/2.7 GiB  1234/5000 objects  85.3 MiB/s  ETA 18s".
func formatProgress(label string, p cache.Progress) string {
	const width = 24
	frac := 1.0
	if p.TotalBytes > 0 {
		frac = float64(p.Bytes) / float64(p.TotalBytes)
	} else if p.TotalObjects > 0 {
		frac = float64(p.Objects) / float64(p.TotalObjects)
	}
	frac = min(max(frac, 0), 1)
	fill := int(frac * width)
	bar := strings.Repeat("=", fill)
	if fill < width {
		bar += ">" + strings.Repeat(" ", width-fill-1)
	}
	eta := "--"
	if p.Objects >= p.TotalObjects {
		eta = "0s"
	} else if d := p.ETA(); d > 0 {
		eta = d.Round(time.Second).String()
	}
	s := fmt.Sprintf("%s [%s] %3.0f%%  %s/%s  %d/%d objects  %s/s  ETA %s",
		label, bar, frac*100, humanBytes(float64(p.Bytes)), humanBytes(float64(p.TotalBytes)),
		p.Objects, p.TotalObjects, humanBytes(p.Rate()), eta)
	if p.Cached > 0 {
		s += fmt.Sprintf("  (%d already cached)", p.Cached)
	}
	if p.Failed > 0 {
		s += fmt.Sprintf("  %d FAILED", p.Failed)
	}
	return s
}

// humanBytes formats a byte count with binary units.
func humanBytes(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for n >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", n)
	}
	return fmt.Sprintf("%.1f %s", n, units[i])
}
