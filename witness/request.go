package witness

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
)

// Bounds on an add-checkpoint request.
const (
	// MaxRequestSize bounds the request body: 63 proof lines and a
	// checkpoint note with many signatures fit well within it.
	MaxRequestSize = 64 << 10
	// MaxProofLines is the spec's bound on consistency proof lines.
	MaxProofLines = 63
)

// ErrBadRequest is a request that does not follow the add-checkpoint
// format (400).
var ErrBadRequest = errors.New("bad add-checkpoint request")

// AddCheckpoint is a parsed add-checkpoint request body.
type AddCheckpoint struct {
	// Old is the size of the last checkpoint the client believes the
	// witness cosigned.
	Old uint64
	// Proof is the consistency proof from Old to the checkpoint's size.
	Proof [][]byte
	// Checkpoint is the signed checkpoint note, unverified.
	Checkpoint []byte
}

// ParseAddCheckpoint parses an add-checkpoint body: "old <size>\n", zero to
// 63 base64 SHA-256 hashes one per line, an empty line, then the checkpoint
// note. It checks the format only, not the signature or the proof.
func ParseAddCheckpoint(body []byte) (*AddCheckpoint, error) {
	if len(body) > MaxRequestSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrBadRequest, len(body), MaxRequestSize)
	}
	line, rest, ok := bytes.Cut(body, []byte("\n"))
	if !ok {
		return nil, fmt.Errorf("%w: no old size line", ErrBadRequest)
	}
	num, ok := bytes.CutPrefix(line, []byte("old "))
	if !ok {
		return nil, fmt.Errorf("%w: first line must be \"old <size>\"", ErrBadRequest)
	}
	old, err := parseSize(num)
	if err != nil {
		return nil, fmt.Errorf("%w: old size: %v", ErrBadRequest, err)
	}
	req := &AddCheckpoint{Old: old}
	for {
		line, rest, ok = bytes.Cut(rest, []byte("\n"))
		if !ok {
			return nil, fmt.Errorf("%w: no empty line before the checkpoint", ErrBadRequest)
		}
		if len(line) == 0 {
			break
		}
		if len(req.Proof) == MaxProofLines {
			return nil, fmt.Errorf("%w: more than %d proof lines", ErrBadRequest, MaxProofLines)
		}
		h, err := base64.StdEncoding.Strict().DecodeString(string(line))
		if err != nil || len(h) != 32 {
			return nil, fmt.Errorf("%w: proof line %d is not a base64 SHA-256 hash", ErrBadRequest, len(req.Proof)+1)
		}
		req.Proof = append(req.Proof, h)
	}
	if len(rest) == 0 {
		return nil, fmt.Errorf("%w: no checkpoint", ErrBadRequest)
	}
	req.Checkpoint = rest
	return req, nil
}

// parseSize parses an ASCII decimal with no sign and no leading zeroes.
func parseSize(b []byte) (uint64, error) {
	if len(b) == 0 || len(b) > 20 || (b[0] == '0' && len(b) > 1) {
		return 0, fmt.Errorf("%q is not a canonical decimal", b)
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a canonical decimal", b)
		}
	}
	return strconv.ParseUint(string(b), 10, 64)
}

// Marshal encodes the request body, the inverse of ParseAddCheckpoint.
func (r *AddCheckpoint) Marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "old %d\n", r.Old)
	for _, h := range r.Proof {
		b.WriteString(base64.StdEncoding.EncodeToString(h))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.Write(r.Checkpoint)
	return b.Bytes()
}
