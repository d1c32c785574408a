package cache

import (
	"fmt"
	"time"
)

// JournalEntry is a committed cache entry as the cache's journal records
// it: what an auditor checks against the contract's retention.
type JournalEntry struct {
	Contract   string
	Name       string
	DecodedSHA string
	Size       int64
	Committed  time.Time
	// Expires is when retention removes it (zero: never).
	Expires time.Time
}

// ReadJournal lists the entries the journal of the cache in dir holds,
// oldest first, without opening the cache (a running sidecar may hold
// it). Entries committed but not yet journaled (at most the last second's)
// are not listed.
func ReadJournal(dir string) ([]JournalEntry, error) {
	recs, err := readJournal(dir)
	if err != nil {
		return nil, fmt.Errorf("cache journal: %w", err)
	}
	out := make([]JournalEntry, 0, len(recs))
	for _, r := range recs {
		e := JournalEntry{Contract: r.Contract, Name: r.Name, DecodedSHA: r.DecodedSHA, Size: r.Size, Committed: time.Unix(0, r.Committed)}
		if r.Expires != 0 {
			e.Expires = time.Unix(0, r.Expires)
		}
		out = append(out, e)
	}
	return out, nil
}
