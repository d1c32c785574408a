package verify

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/provgate/provgate/contract"
)

// Shards. A shard's member index is part of its signed object claim; the
// replay keeps it in the table shards, by (contract, name, decoded
// sha256), beside the manifest row (which stays narrow: most objects are
// not shards). A row outlives its version harmlessly: it is only read for
// the (name, sha256) of a live manifest entry.
const shardSchema = `
CREATE TABLE IF NOT EXISTS shards (
	contract       TEXT NOT NULL,
	name           TEXT NOT NULL,
	decoded_sha256 TEXT NOT NULL,
	idx            BLOB NOT NULL,
	PRIMARY KEY (contract, name, decoded_sha256)
) WITHOUT ROWID;
`

// ErrNotShard: the object has no member index.
var ErrNotShard = errors.New("object is not a shard")

// putShards records the member indexes of the shards among objs, once
// they are applied to the manifest.
func (d *delta) putShards(objs ...contract.ObjectClaim) error {
	for i := range objs {
		o := &objs[i]
		if o.Shard == nil {
			continue
		}
		b, err := json.Marshal(o.Shard)
		if err != nil {
			return fmt.Errorf("shard %q: %w", o.Name, err)
		}
		if _, err := d.tx.ExecContext(d.ctx, "INSERT OR REPLACE INTO shards (contract, name, decoded_sha256, idx) VALUES (?, ?, ?, ?)",
			d.contract, o.Name, o.DecodedSHA256, b); err != nil {
			return fmt.Errorf("shard %q: %w", o.Name, err)
		}
	}
	return nil
}

// ShardIndex returns the attested member index of the shard name whose
// decoded sha256 is sha, or an error wrapping ErrNotShard. The index is
// checked again against the claim's size (it was when its entry was
// verified; this guards the state file).
func (m *Manifest) ShardIndex(ctx context.Context, name, sha string, decodedSize, tokens int64) (*contract.ShardIndex, error) {
	var b []byte
	err := m.db.QueryRowContext(ctx, "SELECT idx FROM shards WHERE contract = ? AND name = ? AND decoded_sha256 = ?", m.contract, name, sha).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%q: %w", name, ErrNotShard)
	}
	if err != nil {
		return nil, fmt.Errorf("shard index %q: %w", name, err)
	}
	x := new(contract.ShardIndex)
	if err := json.Unmarshal(b, x); err != nil {
		return nil, fmt.Errorf("shard index %q: %w", name, err)
	}
	if err := x.Check(decodedSize, tokens); err != nil {
		return nil, fmt.Errorf("shard index %q: %w", name, err)
	}
	return x, nil
}

// ShardIndex returns the member index of a verified shard (see
// Manifest.ShardIndex).
func (f *Follower) ShardIndex(ctx context.Context, e *ManifestEntry) (*contract.ShardIndex, error) {
	if err := f.Ready(); err != nil {
		return nil, err
	}
	return f.manifest.ShardIndex(ctx, e.Name, e.DecodedSHA256, e.DecodedSize, e.Tokens)
}

// ShardMismatchError is a verified shard whose bytes are not what its
// attested member index says: the shard and every member are refused.
type ShardMismatchError struct {
	Name string
	Err  error
}

func (e *ShardMismatchError) Error() string {
	return fmt.Sprintf("shard %q does not match its attested index: %v", e.Name, e.Err)
}

// Unwrap keeps the cause and makes errors.Is(err, ErrShardMismatch) true.
func (e *ShardMismatchError) Unwrap() []error { return []error{ErrShardMismatch, e.Err} }

// ErrShardMismatch: a shard's bytes disagree with its attested index.
var ErrShardMismatch = errors.New("shard does not match its attested member index")

// CheckShard reads a shard's verified, decoded bytes (whose digest the
// caller has checked against the claim) and checks that the attested
// index describes them: the tar parses as a well-formed WebDataset shard
// and lists the same members, at the same offsets, of the same sizes and
// sha256 and, when newCounter is given (the contract bills tokens), the
// same token count each. Any difference is a *ShardMismatchError.
func CheckShard(r io.Reader, name string, x *contract.ShardIndex, newCounter func() (contract.TokenCounter, error)) error {
	got, err := contract.BuildShardIndex(r, newCounter)
	if err != nil {
		return &ShardMismatchError{Name: name, Err: err}
	}
	if err := x.Equal(got); err != nil {
		return &ShardMismatchError{Name: name, Err: err}
	}
	if newCounter != nil {
		for i := range x.Members {
			if a, b := x.Members[i].Tokens, got.Members[i].Tokens; a != b {
				return &ShardMismatchError{Name: name, Err: fmt.Errorf("%w: member %q attests %d tokens, counted %d", contract.ErrShardIndex, x.Members[i].Name, a, b)}
			}
		}
	}
	return nil
}
