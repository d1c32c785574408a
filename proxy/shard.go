package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/tokenize"
	"github.com/provgate/provgate/verify"
)

// Shards (README "Shards"). A shard is a verified tar whose claim carries
// its member index. It is served whole at its name, like any object, or one
// member at a time with ?member=NAME, by range over the verified cached
// shard. Before any of its bytes leave, the cached shard is checked once
// against its attested index (verify.CheckShard); a shard that fails is
// refused with every member (502), never served.
//
// The billing rule for shards: a pass over a shard in a (job, epoch) bills
// one sample per distinct key of the members it delivers, so a whole read
// bills the attested sample count and a member read bills 1 sample for its
// key unless another member of that key was delivered in the pass already
// (k1.jpg then k1.cls bills 1). A member counts as delivered once one byte
// of its data was sent (an empty member: once its header was); delivering
// a member again opens a new pass. An aborted read bills the keys of the
// members it fully or partly sent, and its bytes. HEAD and 304 bill nothing.

// ShardSource is a Source that keeps its shards' member indexes.
type ShardSource interface {
	// ShardIndex returns the attested member index of e, or nil when e is
	// not a shard.
	ShardIndex(ctx context.Context, e *ManifestEntry) (*contract.ShardIndex, error)
}

// MemberParam is the query parameter naming a shard member.
const MemberParam = "member"

// DefaultMaxShards bounds the shards whose check result and open passes
// are remembered; a forgotten shard is checked again, a forgotten pass
// overbills.
const DefaultMaxShards = 4096

// isShardName: only names ending in .tar can be shards (contract.Check
// refuses an index on any other), so other names never look one up.
func isShardName(name string) bool { return strings.HasSuffix(name, contract.ShardExt) }

var errShardInBatch error = contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest,
	"a shard is read whole or by member from the objects endpoint, not in a batch")

// maxShardIndexes bounds the parsed indexes kept (one is up to ~1.5 MiB
// of JSON in the state database, a few hundred KiB parsed).
const maxShardIndexes = 256

// shardState remembers parsed indexes, the shards checked against their
// index and the open shard passes, all bounded. Indexes and checks are
// keyed by (contract, name, decoded sha256): immutable for that key.
type shardState struct {
	mu      sync.Mutex
	indexes map[passKey]*shardInfo
	checked map[passKey]error // nil = matches its index
	passes  map[passKey]*shardPass
}

// shardInfo is a parsed index with its lookups.
type shardInfo struct {
	x      *contract.ShardIndex
	keyOf  []int          // member -> key ordinal
	byName map[string]int // member name -> member
}

type shardPass struct {
	delivered []bool // per member
	billed    []bool // per key
	left      int    // members not delivered yet
}

func newShardState() *shardState {
	return &shardState{indexes: map[passKey]*shardInfo{}, checked: map[passKey]error{}, passes: map[passKey]*shardPass{}}
}

// shardRead is one read's place in a shard pass: the members its span
// touches, settled (billed) with what it sent.
type shardRead struct {
	st    *shardState
	key   passKey
	x     *contract.ShardIndex
	keyOf []int
	start int64
}

// touched lists the members with a byte of data in [from, to) (an empty
// member: whose header ends in it).
func touched(x *contract.ShardIndex, from, to int64) []int {
	var out []int
	for i, m := range x.Members {
		if m.Size > 0 && m.Offset < to && from < m.Offset+m.Size ||
			m.Size == 0 && from <= m.Offset-1 && m.Offset-1 < to {
			out = append(out, i)
		}
	}
	return out
}

// upper is the most samples a read of [start, start+length) can bill: its
// distinct keys (what it reserves).
func (r *shardRead) upper(length int64) int64 {
	seen := map[int]bool{}
	for _, i := range touched(r.x, r.start, r.start+length) {
		seen[r.keyOf[i]] = true
	}
	return int64(len(seen))
}

// settle bills a read that sent sent bytes: the samples (keys) and tokens
// of the members it delivered that its pass had not billed yet.
func (r *shardRead) settle(sent int64) (samples, tokens int64) {
	mem := touched(r.x, r.start, r.start+sent)
	if len(mem) == 0 {
		return 0, 0
	}
	st := r.st
	st.mu.Lock()
	defer st.mu.Unlock()
	p := st.passes[r.key]
	for _, i := range mem {
		if p != nil && p.delivered[i] {
			p = nil // a member delivered again: a new pass
			break
		}
	}
	if p == nil {
		p = &shardPass{delivered: make([]bool, len(r.x.Members)), billed: make([]bool, r.x.Samples), left: len(r.x.Members)}
	}
	for _, i := range mem {
		p.delivered[i] = true
		p.left--
		tokens += r.x.Members[i].Tokens
		if k := r.keyOf[i]; !p.billed[k] {
			p.billed[k] = true
			samples++
		}
	}
	if p.left == 0 {
		delete(st.passes, r.key) // it covers the shard: any later byte opens a new pass
		return samples, tokens
	}
	if len(st.passes) >= DefaultMaxShards {
		clear(st.passes)
	}
	st.passes[r.key] = p
	return samples, tokens
}

// shardIndex returns e's member index when it is a shard, or nil.
func (s *Server) shardIndex(ctx context.Context, src Source, e *ManifestEntry) (*shardInfo, error) {
	ss, ok := src.(ShardSource)
	if !ok || !isShardName(e.Name) {
		return nil, nil
	}
	k := passKey{contract: src.ID(), name: e.Name, sha: e.DecodedSHA256}
	st := s.shards
	st.mu.Lock()
	info := st.indexes[k]
	st.mu.Unlock()
	if info != nil {
		return info, nil
	}
	x, err := ss.ShardIndex(ctx, e)
	if x == nil || err != nil {
		return nil, err
	}
	info = &shardInfo{x: x, keyOf: x.KeyIndex(), byName: make(map[string]int, len(x.Members))}
	for i, m := range x.Members {
		info.byName[m.Name] = i
	}
	st.mu.Lock()
	if len(st.indexes) >= maxShardIndexes {
		clear(st.indexes)
	}
	st.indexes[k] = info
	st.mu.Unlock()
	return info, nil
}

// checkShard checks the verified cached shard against its index, once per
// shard version; a mismatch purges it and is remembered.
func (s *Server) checkShard(src Source, e *ManifestEntry, x *contract.ShardIndex, obj Object) error {
	k := passKey{contract: src.ID(), name: e.Name, sha: e.DecodedSHA256}
	st := s.shards
	st.mu.Lock()
	err, done := st.checked[k]
	st.mu.Unlock()
	if done {
		return err
	}
	var newCounter func() (contract.TokenCounter, error)
	if p := src.Contract().Pricing; p.Unit == contract.UnitToken && p.Tokenizer != "" {
		newCounter = func() (contract.TokenCounter, error) { return tokenize.New(p.Tokenizer) }
	}
	if err = verify.CheckShard(io.NewSectionReader(obj.File(), 0, e.DecodedSize), e.Name, x, newCounter); err != nil {
		err = &VerificationError{Kind: "shard_index", Err: err}
		if perr := s.cfg.Cache.Purge(src.ID(), e.Name); perr != nil {
			s.log.Error("purging a shard that fails its index failed", "contract", src.ID(), "name", e.Name, "err", perr)
		}
	}
	st.mu.Lock()
	if len(st.checked) >= DefaultMaxShards {
		clear(st.checked)
	}
	st.checked[k] = err
	st.mu.Unlock()
	return err
}

// serveShard serves a shard whole (Range supported) or one member of it.
func (s *Server) serveShard(w http.ResponseWriter, r *http.Request, src Source, e *ManifestEntry, g Grant, info *shardInfo, epoch int64, job string) error {
	x := info.x
	var m *contract.ShardMember
	if r.URL.Query().Has(MemberParam) {
		i, ok := info.byName[r.URL.Query().Get(MemberParam)]
		if !ok {
			return fmt.Errorf("%w: shard %q has no member %q", ErrNotFound, e.Name, r.URL.Query().Get(MemberParam))
		}
		m = &x.Members[i]
	}
	base, size, tag := int64(0), e.DecodedSize, etag(e.DecodedSHA256)
	if m != nil {
		base, size, tag = m.Offset, m.Size, etag(m.SHA256)
	}
	inm := r.Header.Get("If-None-Match")
	notModified := inm != "" && etagMatch(inm, tag)
	if r.Method == http.MethodHead || notModified {
		if err := s.checkQuota(src, g, 1, size); err != nil {
			s.countRefusal(err)
			return err
		}
		s.shardHeaders(w, src, e, x, m)
		if notModified {
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		return nil
	}
	start, length, partial, err := singleRange(r, size, tag)
	if err != nil {
		w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
		return err
	}
	claim := e.ObjectClaim
	claim.Shard = x // its tokens are checked per member (checkShard)
	obj, err := s.cfg.Cache.Get(r.Context(), src.ID(), &claim)
	if err == nil {
		defer obj.Close()
		if err = s.checkShard(src, e, x, obj); err == nil && m != nil {
			err = checkMember(obj, m)
		}
	}
	if err != nil {
		if err = s.fetchError(src, e.Name, err); !errors.Is(err, ErrRedacted) {
			s.countFetchError(src.ID(), e.Name, epoch, job, g, err)
		}
		return err
	}
	if err := s.recheck(src, e.Name); err != nil {
		s.countRefusal(err)
		return err
	}
	sr := &shardRead{st: s.shards, key: passKey{contract: src.ID(), job: job, name: e.Name, sha: e.DecodedSHA256, epoch: epoch},
		x: x, keyOf: info.keyOf, start: base + start}
	res, err := s.cfg.Meter.Reserve(src.ID(), g, src.Contract().Usage, sr.upper(length), length)
	if err != nil {
		s.countRefusal(err)
		return err
	}
	rd := &read{s: s, length: length, shard: sr, res: res,
		a: Access{Contract: src.ID(), Name: e.Name, DecodedSHA: e.DecodedSHA256, Epoch: epoch, Job: job, TokenID: g.TokenID, Lease: g.LeaseID}}
	defer rd.end()
	s.shardHeaders(w, src, e, x, m)
	sw := w.(*statusWriter)
	outcome, status := OutcomeServed, http.StatusOK
	if partial || m != nil {
		outcome = OutcomePartial
	}
	if partial {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, start+length-1, size))
		status = http.StatusPartialContent
	}
	return s.sendMetered(r.Context(), sw, obj.File(), base+start, length, status, rd, outcome)
}

// checkMember hashes a member's bytes in the cached shard against its
// attested sha256.
func checkMember(obj Object, m *contract.ShardMember) error {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(obj.File(), m.Offset, m.Size)); err != nil {
		return fmt.Errorf("read member %q: %w", m.Name, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != m.SHA256 {
		return &VerificationError{Kind: "shard_member", Err: fmt.Errorf("member %q: sha256 %s, attested %s", m.Name, got, m.SHA256)}
	}
	return nil
}

// shardHeaders are objectHeaders, with a member's ETag, type and size.
func (s *Server) shardHeaders(w http.ResponseWriter, src Source, e *ManifestEntry, x *contract.ShardIndex, m *contract.ShardMember) {
	s.objectHeaders(w, src, e)
	w.Header().Set("X-Provgate-Shard-Samples", strconv.FormatInt(x.Samples, 10))
	if m != nil {
		w.Header().Set("ETag", etag(m.SHA256))
		w.Header().Set("Content-Type", "application/octet-stream")
	}
}
