package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/provgate/provgate/contract"
)

// Progress is a prefetch's state, reported after each object.
type Progress struct {
	Objects, TotalObjects int
	Bytes, TotalBytes     int64 // decoded bytes
	Cached                int   // of Objects, how many were already cached
	Failed                int
	Elapsed               time.Duration
}

// Rate is the decoded bytes per second so far.
func (p Progress) Rate() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return float64(p.Bytes) / p.Elapsed.Seconds()
}

// ETA estimates the time left from the rate so far; zero when unknown.
func (p Progress) ETA() time.Duration {
	r := p.Rate()
	if r <= 0 || p.TotalBytes <= p.Bytes {
		return 0
	}
	return time.Duration(float64(p.TotalBytes-p.Bytes) / r * float64(time.Second))
}

// Warmer is an optional Origin method that prepares many names at once
// (PresignedOrigin batches presigning).
type Warmer interface {
	Warm(ctx context.Context, names []string) error
}

var _ Warmer = (*PresignedOrigin)(nil)

// Prefetch fetches objs of a mounted contract into the cache with at most
// concurrency fetches at a time (and never more than Config.MaxFetches).
// It goes on past failed objects and returns them joined; progress, if not
// nil, is called after each object (from one goroutine at a time).
func (c *Cache) Prefetch(ctx context.Context, contractID string, objs []contract.ObjectClaim, concurrency int, progress func(Progress)) error {
	c.mu.Lock()
	m := c.mounts[contractID]
	c.mu.Unlock()
	if m == nil {
		return fmt.Errorf("cache: %s: %w", contractID, ErrNotMounted)
	}
	if concurrency <= 0 {
		concurrency = c.cfg.MaxFetches
	}
	var p Progress
	p.TotalObjects = len(objs)
	for i := range objs {
		p.TotalBytes += objs[i].DecodedSize
	}
	if w, ok := m.origin.(Warmer); ok {
		names := make([]string, len(objs))
		for i := range objs {
			names[i] = objs[i].Name
		}
		if err := w.Warm(ctx, names); err != nil {
			return fmt.Errorf("cache: prefetch: %w", err)
		}
	}
	start := time.Now()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, concurrency)
	)
	report := func(o *contract.ObjectClaim, hit bool, err error) {
		mu.Lock()
		defer mu.Unlock()
		p.Objects++
		if err != nil {
			p.Failed++
			errs = append(errs, err)
		} else {
			p.Bytes += o.DecodedSize
			if hit {
				p.Cached++
			}
		}
		p.Elapsed = time.Since(start)
		if progress != nil {
			progress(p)
		}
	}
loop:
	for i := range objs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
		wg.Add(1)
		go func(o *contract.ObjectClaim) {
			defer wg.Done()
			defer func() { <-sem }()
			h, err := c.Get(ctx, contractID, o)
			if err == nil {
				report(o, h.Hit, nil)
				h.Close()
				return
			}
			if ctx.Err() == nil {
				report(o, false, err)
			}
		}(&objs[i])
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.Join(errs...)
}

// Warm prepares names of a mounted contract for fetching: an origin that
// is a Warmer (PresignedOrigin) presigns them in batches; for others it
// does nothing. Read-ahead calls it for the names it will fetch soon.
func (c *Cache) Warm(ctx context.Context, contractID string, names []string) error {
	c.mu.Lock()
	m := c.mounts[contractID]
	c.mu.Unlock()
	if m == nil {
		return fmt.Errorf("cache: %s: %w", contractID, ErrNotMounted)
	}
	if w, ok := m.origin.(Warmer); ok {
		if err := w.Warm(ctx, names); err != nil {
			return fmt.Errorf("cache: warm: %w", err)
		}
	}
	return nil
}
