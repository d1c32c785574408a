package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
)

// ScrubResult is what Scrub found.
type ScrubResult struct {
	Checked int
	Bytes   int64
	// Removed lists the entries that failed and were removed, as
	// "contract name: reason".
	Removed []string
}

// Scrub re-hashes every committed entry (sha256 of the decoded bytes, and
// the size) and removes those that fail. progress, if not nil, is called
// after each entry with the counts so far.
func (c *Cache) Scrub(ctx context.Context, progress func(done, total int, bytes int64)) (ScrubResult, error) {
	var res ScrubResult
	c.mu.Lock()
	list := make([]*entry, 0, len(c.entries))
	for _, e := range c.entries {
		list = append(list, e)
	}
	c.mu.Unlock()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	for i, e := range list {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		// Pin one entry at a time, so that a scrub of a full cache does
		// not stall fetches waiting for space.
		c.mu.Lock()
		live := c.entries[e.key] == e
		if live {
			c.pinLocked(e, 1)
		}
		c.mu.Unlock()
		if !live {
			continue
		}
		err := c.hashFile(e, *bp)
		res.Checked++
		res.Bytes += e.size
		if err != nil {
			c.dropDamaged(e)
		}
		c.unpin(e)
		if err != nil {
			res.Removed = append(res.Removed, fmt.Sprintf("%s %s: %v", e.contract, e.name, err))
			c.log.Warn("cache scrub removed entry", logContract, e.contract, logName, e.name, logErr, err)
		}
		if progress != nil {
			progress(i+1, len(list), res.Bytes)
		}
	}
	return res, nil
}

func (c *Cache) hashFile(e *entry, buf []byte) error {
	f, err := os.Open(c.path(e.file))
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, f, buf)
	if err != nil {
		return err
	}
	if n != e.size {
		return &SizeError{What: "cached", Want: e.size, Got: n}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != e.decodedSHA {
		return fmt.Errorf("sha256 %s, want %s", got, e.decodedSHA)
	}
	return nil
}
