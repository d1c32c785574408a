package verify

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"time"

	tlog "github.com/transparency-dev/formats/log"
	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

// MaxCheckpointSize bounds a signed checkpoint note.
const MaxCheckpointSize = 16 << 10

// Checkpoint is a verified C2SP tlog-checkpoint: the log's size and root
// hash at the time its signature was made.
type Checkpoint struct {
	Origin string
	Size   uint64
	Hash   []byte
	// Time is the signed time from the registry's cosignature/v1 signature.
	Time time.Time
	// Raw is the signed note, as received.
	Raw []byte
}

// GenerateCheckpointKey makes an Ed25519 signed-note key pair for a log
// named name: skey is the private key (keep it secret), vkey the verifier
// key that contracts publish.
func GenerateCheckpointKey(name string) (skey, vkey string, err error) {
	return note.GenerateKey(rand.Reader, name)
}

// CheckpointSigner signs checkpoints twice with one Ed25519 key: a plain
// signed-note signature (the log signature any tlog tool checks) and a
// cosignature/v1 signature, which carries the signed time that freshness
// rests on.
type CheckpointSigner struct {
	log   note.Signer
	cosig *fnote.Signer
}

// NewCheckpointSigner loads a signer from an skey.
func NewCheckpointSigner(skey string) (*CheckpointSigner, error) {
	l, err := note.NewSigner(skey)
	if err != nil {
		return nil, fmt.Errorf("checkpoint signer: %w", err)
	}
	c, err := fnote.NewSignerForCosignatureV1(skey)
	if err != nil {
		return nil, fmt.Errorf("checkpoint signer: %w", err)
	}
	return &CheckpointSigner{log: l, cosig: c}, nil
}

// Sign returns the signed note for a checkpoint.
func (s *CheckpointSigner) Sign(origin string, size uint64, root []byte) ([]byte, error) {
	cp := tlog.Checkpoint{Origin: origin, Size: size, Hash: root}
	return note.Sign(&note.Note{Text: string(cp.Marshal())}, s.log, s.cosig)
}

// CheckpointVerifier checks checkpoints of one log.
type CheckpointVerifier struct {
	origin string
	vkey   string
	log    note.Verifier
	cosig  note.Verifier
}

// NewCheckpointVerifier makes a verifier for the log with origin whose
// checkpoint key is vkey (as published in the contract).
func NewCheckpointVerifier(origin, vkey string) (*CheckpointVerifier, error) {
	l, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("%w: checkpoint key: %v", ErrCheckpoint, err)
	}
	cv, err := fnote.VKeyToCosignatureV1(vkey)
	if err != nil {
		return nil, fmt.Errorf("%w: checkpoint key: %v", ErrCheckpoint, err)
	}
	c, err := fnote.NewVerifierForCosignatureV1(cv)
	if err != nil {
		return nil, fmt.Errorf("%w: checkpoint key: %v", ErrCheckpoint, err)
	}
	return &CheckpointVerifier{origin: origin, vkey: vkey, log: l, cosig: c}, nil
}

// Parse verifies a signed checkpoint: both signatures present and valid,
// the origin, and the checkpoint body. It does not judge freshness.
func (v *CheckpointVerifier) Parse(raw []byte) (*Checkpoint, error) {
	if len(raw) > MaxCheckpointSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrCheckpoint, len(raw), MaxCheckpointSize)
	}
	cp, rest, n, err := tlog.ParseCheckpoint(raw, v.origin, v.log, v.cosig)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: unexpected extension lines", ErrCheckpoint)
	}
	if len(cp.Hash) != 32 {
		return nil, fmt.Errorf("%w: root hash must be 32 bytes", ErrCheckpoint)
	}
	var signed *time.Time
	for _, s := range n.Sigs {
		if s.Name == v.cosig.Name() && s.Hash == v.cosig.KeyHash() {
			t, err := fnote.CoSigV1Timestamp(s)
			if err != nil {
				return nil, fmt.Errorf("%w: timestamp: %v", ErrCheckpoint, err)
			}
			signed = &t
		}
	}
	if signed == nil {
		return nil, fmt.Errorf("%w: no timestamped signature", ErrCheckpoint)
	}
	return &Checkpoint{Origin: cp.Origin, Size: cp.Size, Hash: cp.Hash, Time: *signed, Raw: bytes.Clone(raw)}, nil
}

// CheckFresh refuses a checkpoint signed more than maxAge before now (a
// frozen log) or more than DefaultSkew in the future.
func CheckFresh(cp *Checkpoint, now time.Time, maxAge time.Duration) error {
	if cp.Time.After(now.Add(DefaultSkew)) {
		return fmt.Errorf("%w: signed at %s, in the future", ErrCheckpoint, cp.Time.UTC().Format(time.RFC3339))
	}
	if maxAge > 0 && now.Sub(cp.Time) > maxAge {
		return fmt.Errorf("%w: signed at %s, older than %s", ErrStale, cp.Time.UTC().Format(time.RFC3339), maxAge)
	}
	return nil
}
