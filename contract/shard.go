package contract

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
)

// A shard is a tar archive in the WebDataset layout: members named
// <key>.<ext>, the members of one sample sharing their key (the path up to
// the first dot of the last path segment). Its object claim carries the
// member index, which the contributor signs with the rest of the claim and
// every sidecar checks against the shard's verified bytes before serving
// any of it.

// Shard bounds and layout.
const (
	// MaxShardMembers bounds the members of one shard: an index of that
	// many members is ~1.5 MiB of JSON, which a batch manifest carries.
	MaxShardMembers = 10000
	// TarBlockSize is the tar record unit: every header and every member's
	// data starts on a multiple of it.
	TarBlockSize = 512
	// ShardExt is the name suffix by which contribute detects a shard.
	ShardExt = ".tar"
)

// ShardIndex is a shard's member index, as attested: the members in tar
// order and the number of samples (distinct keys), which is what a whole
// read of the shard bills.
type ShardIndex struct {
	Samples int64         `json:"samples"`
	Members []ShardMember `json:"members"`
}

// ShardMember is one member of a shard: where its data lies in the decoded
// tar, its size and sha256, and its token count under the contract's
// pricing tokenizer, when it has one.
type ShardMember struct {
	Name   string `json:"name"`
	Offset int64  `json:"offset"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	Tokens int64  `json:"tokens,omitempty"`
}

// Shard index errors.
var (
	ErrShardIndex = errors.New("shard index is invalid")
	ErrShardTar   = errors.New("shard is not a well-formed tar")
)

// SampleKey splits a member name into its sample key and extension the
// WebDataset way: the key is the path up to the first dot of the last
// segment. ok is false when the last segment has no dot, or nothing
// before or after it.
func SampleKey(member string) (key, ext string, ok bool) {
	dir, base := "", member
	if i := strings.LastIndexByte(member, '/'); i >= 0 {
		dir, base = member[:i+1], member[i+1:]
	}
	k, e, found := strings.Cut(base, ".")
	if !found || k == "" || e == "" {
		return "", "", false
	}
	return dir + k, e, true
}

// Check validates an index for a shard of decodedSize bytes whose claim
// attests tokens: 1 to MaxShardMembers members, each a valid <key>.<ext>
// name listed once, with its data block-aligned after a header, inside the
// tar, not overlapping the member before it (or its header); the sample
// count equal to the number of distinct keys; the members' tokens summing
// to the claim's. Errors wrap ErrShardIndex.
func (x *ShardIndex) Check(decodedSize, tokens int64) error {
	if n := len(x.Members); n == 0 || n > MaxShardMembers {
		return fmt.Errorf("%w: %d members, want 1 to %d", ErrShardIndex, n, MaxShardMembers)
	}
	names := make(map[string]struct{}, len(x.Members))
	keys := make(map[string]struct{}, len(x.Members))
	var next, sum int64 = TarBlockSize, 0 // the first byte a member's data may start at
	for i := range x.Members {
		m := &x.Members[i]
		if err := ValidateName(m.Name); err != nil {
			return fmt.Errorf("%w: member %d: %v", ErrShardIndex, i, err)
		}
		key, _, ok := SampleKey(m.Name)
		if !ok {
			return fmt.Errorf("%w: member %q is not named <key>.<ext>", ErrShardIndex, m.Name)
		}
		if _, dup := names[m.Name]; dup {
			return fmt.Errorf("%w: member %q is listed twice", ErrShardIndex, m.Name)
		}
		names[m.Name] = struct{}{}
		keys[key] = struct{}{}
		if !isSHA256Hex(m.SHA256) {
			return fmt.Errorf("%w: member %q: sha256 must be 64 lowercase hex digits", ErrShardIndex, m.Name)
		}
		if m.Size < 0 || m.Tokens < 0 {
			return fmt.Errorf("%w: member %q: negative size or tokens", ErrShardIndex, m.Name)
		}
		if m.Offset < next || m.Offset%TarBlockSize != 0 {
			return fmt.Errorf("%w: member %q: offset %d overlaps the member before it or is not after a header block", ErrShardIndex, m.Name, m.Offset)
		}
		if m.Size > decodedSize || m.Offset > decodedSize-m.Size {
			return fmt.Errorf("%w: member %q: %d bytes at %d lie outside the %d-byte tar", ErrShardIndex, m.Name, m.Size, m.Offset, decodedSize)
		}
		// The next member's header follows this member's padded data.
		next = m.Offset + (m.Size+TarBlockSize-1)/TarBlockSize*TarBlockSize + TarBlockSize
		if sum += m.Tokens; sum < 0 || sum > MaxEventUnits {
			return fmt.Errorf("%w: member tokens overflow", ErrShardIndex)
		}
	}
	if x.Samples != int64(len(keys)) {
		return fmt.Errorf("%w: attests %d samples, the members have %d distinct keys", ErrShardIndex, x.Samples, len(keys))
	}
	if sum != tokens {
		return fmt.Errorf("%w: members have %d tokens, the shard attests %d", ErrShardIndex, sum, tokens)
	}
	return nil
}

// validateShard checks the member index of a shard's claim, if it has one:
// the name ends in .tar and the index passes Check.
func (o *ObjectClaim) validateShard() error {
	if o.Shard == nil {
		return nil
	}
	if !strings.HasSuffix(o.Name, ShardExt) {
		return fmt.Errorf("attestation: object %q: %w: a shard's name ends in %s", o.Name, ErrShardIndex, ShardExt)
	}
	if err := o.Shard.Check(o.DecodedSize, o.Tokens); err != nil {
		return fmt.Errorf("attestation: object %q: %w", o.Name, err)
	}
	return nil
}

// KeyIndex returns, for each member, the ordinal of its sample key (in
// order of first appearance); the number of keys is x.Samples once the
// index has passed Check.
func (x *ShardIndex) KeyIndex() []int {
	ord := make(map[string]int, len(x.Members))
	out := make([]int, len(x.Members))
	for i := range x.Members {
		key, _, _ := SampleKey(x.Members[i].Name)
		k, ok := ord[key]
		if !ok {
			k = len(ord)
			ord[key] = k
		}
		out[i] = k
	}
	return out
}

// Member returns the index of the member named name, or -1.
func (x *ShardIndex) Member(name string) int {
	for i := range x.Members {
		if x.Members[i].Name == name {
			return i
		}
	}
	return -1
}

// TokenCounter counts the tokens of what is written to it.
type TokenCounter interface {
	io.Writer
	Count() (int64, error)
}

// BuildShardIndex reads a tar from r and returns its member index, checking
// that it is a well-formed WebDataset shard: regular files only, each
// named <key>.<ext> and listed once, at most MaxShardMembers. newCounter,
// when not nil, gives each member's token count. Errors wrap ErrShardTar
// (or ErrShardIndex).
func BuildShardIndex(r io.Reader, newCounter func() (TokenCounter, error)) (*ShardIndex, error) {
	cr := &offsetReader{r: r}
	tr := tar.NewReader(cr)
	x := &ShardIndex{}
	names := map[string]struct{}{}
	keys := map[string]struct{}{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrShardTar, err)
		}
		if h.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("%w: member %q is not a regular file (type %q)", ErrShardTar, h.Name, h.Typeflag)
		}
		if len(x.Members) == MaxShardMembers {
			return nil, fmt.Errorf("%w: more than %d members", ErrShardTar, MaxShardMembers)
		}
		if _, dup := names[h.Name]; dup {
			return nil, fmt.Errorf("%w: member %q appears twice", ErrShardTar, h.Name)
		}
		key, _, ok := SampleKey(h.Name)
		if !ok || ValidateName(h.Name) != nil {
			return nil, fmt.Errorf("%w: member %q is not named <key>.<ext>", ErrShardTar, h.Name)
		}
		names[h.Name] = struct{}{}
		keys[key] = struct{}{}
		m := ShardMember{Name: h.Name, Offset: cr.n}
		hs := sha256.New()
		var w io.Writer = hs
		var tc TokenCounter
		if newCounter != nil {
			if tc, err = newCounter(); err != nil {
				return nil, err
			}
			w = io.MultiWriter(hs, tc)
		}
		if m.Size, err = io.Copy(w, tr); err != nil {
			return nil, fmt.Errorf("%w: member %q: %v", ErrShardTar, h.Name, err)
		}
		if m.Size != h.Size {
			return nil, fmt.Errorf("%w: member %q: %d bytes, header says %d", ErrShardTar, h.Name, m.Size, h.Size)
		}
		if tc != nil {
			if m.Tokens, err = tc.Count(); err != nil {
				return nil, fmt.Errorf("member %q: %w", h.Name, err)
			}
		}
		m.SHA256 = hex.EncodeToString(hs.Sum(nil))
		x.Members = append(x.Members, m)
	}
	if len(x.Members) == 0 {
		return nil, fmt.Errorf("%w: no members", ErrShardTar)
	}
	x.Samples = int64(len(keys))
	return x, nil
}

// Tokens is the sum of the members' token counts.
func (x *ShardIndex) Tokens() int64 {
	var n int64
	for _, m := range x.Members {
		n += m.Tokens
	}
	return n
}

// Equal reports whether two indexes list the same members (name, offset,
// size, sha256) in the same order with the same sample count; tokens are
// not compared (they depend on the tokenizer, not on the tar).
func (x *ShardIndex) Equal(y *ShardIndex) error {
	if x.Samples != y.Samples || len(x.Members) != len(y.Members) {
		return fmt.Errorf("%w: %d members and %d samples attested, the tar has %d and %d", ErrShardIndex,
			len(x.Members), x.Samples, len(y.Members), y.Samples)
	}
	for i := range x.Members {
		a, b := &x.Members[i], &y.Members[i]
		if a.Name != b.Name || a.Offset != b.Offset || a.Size != b.Size || a.SHA256 != b.SHA256 {
			return fmt.Errorf("%w: member %d attested as %q (%d bytes at %d, sha256 %s), the tar has %q (%d bytes at %d, sha256 %s)",
				ErrShardIndex, i, a.Name, a.Size, a.Offset, a.SHA256, b.Name, b.Size, b.Offset, b.SHA256)
		}
	}
	return nil
}

// offsetReader counts the bytes read through it. archive/tar reads headers
// whole and member data on demand, and skips by reading when the reader
// cannot seek, so after Next the count is the offset of the member's data.
type offsetReader struct {
	r io.Reader
	n int64
}

func (o *offsetReader) Read(p []byte) (int, error) {
	n, err := o.r.Read(p)
	o.n += int64(n)
	return n, err
}
