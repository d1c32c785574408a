package verify

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/contract"
)

// MaxTermsNoteSize bounds a terms note (an entry bounds it too).
const MaxTermsNoteSize = contract.MaxAppendEntrySize

// SignTerms signs a version of a contract's terms with the log's key: a
// signed note (one Ed25519 signature, no timestamp) whose text is
// contract.TermsText. Anyone with the contract's checkpoint key checks it
// offline.
func (s *CheckpointSigner) SignTerms(v *contract.TermsVersion) (string, error) {
	text, err := contract.TermsText(v)
	if err != nil {
		return "", err
	}
	b, err := note.Sign(&note.Note{Text: text}, s.log)
	if err != nil {
		return "", fmt.Errorf("sign terms: %w", err)
	}
	return string(b), nil
}

// OpenTerms verifies a terms note: the log's signature, the text, and
// that the terms name this very log (origin and checkpoint key), which no
// version may change.
func (v *CheckpointVerifier) OpenTerms(signed string) (*contract.TermsVersion, error) {
	if len(signed) > MaxTermsNoteSize {
		return nil, fmt.Errorf("%w: note of %d bytes exceeds %d", ErrTerms, len(signed), MaxTermsNoteSize)
	}
	n, err := note.Open([]byte(signed), note.VerifierList(v.log))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTerms, err)
	}
	tv, err := contract.ParseTermsText(n.Text)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTerms, err)
	}
	if tv.Terms.Log.Origin != v.origin || tv.Terms.Log.CheckpointKey != v.vkey {
		return nil, fmt.Errorf("%w: the terms name log %q (key %q), not this log %q", ErrTerms,
			tv.Terms.Log.Origin, tv.Terms.Log.CheckpointKey, v.origin)
	}
	return tv, nil
}

// TermsVersion is a verified version of a contract's terms and the seq
// and time of the log entry that holds it.
type TermsVersion struct {
	Seq  uint64
	Time time.Time
	// Note is the signed note, as in the log.
	Note string
	contract.TermsVersion
}

// Terms is the verified contract: the terms of v, with their seq.
func (v *TermsVersion) Contract() *contract.Contract {
	c := v.Terms
	c.TermsSeq = v.Seq
	return &c
}

// termsVersion is a TermsVersion with the key store of its contributors.
type termsVersion struct {
	TermsVersion
	keys *KeyStore
}

// TermsHistory is the list of a log's verified terms versions, in seq
// order. It is immutable once shared: add returns a new history.
type TermsHistory struct {
	versions []*termsVersion
}

// Versions lists the verified versions, oldest first.
func (h *TermsHistory) Versions() []TermsVersion {
	if h == nil {
		return nil
	}
	out := make([]TermsVersion, len(h.versions))
	for i, v := range h.versions {
		out[i] = v.TermsVersion
	}
	return out
}

// Len is the number of versions.
func (h *TermsHistory) Len() int {
	if h == nil {
		return 0
	}
	return len(h.versions)
}

// At returns the version of entry seq, or nil.
func (h *TermsHistory) At(seq uint64) *TermsVersion {
	if h == nil {
		return nil
	}
	for _, v := range h.versions {
		if v.Seq == seq {
			return &v.TermsVersion
		}
	}
	return nil
}

// inForce returns the version that governs an entry at seq made at time
// t: the latest version before seq in force at t (effective_from <= t),
// or the first version. Nil when there is none before seq.
func (h *TermsHistory) inForce(seq uint64, t time.Time) *termsVersion {
	if h == nil {
		return nil
	}
	var out *termsVersion
	for _, v := range h.versions {
		if v.Seq >= seq {
			break
		}
		if out == nil || !v.EffectiveFrom.After(t) {
			out = v
		}
	}
	return out
}

// InForce is the version in force at time t after every verified entry:
// what a read at t is billed under.
func (h *TermsHistory) InForce(t time.Time) *TermsVersion {
	v := h.inForce(^uint64(0), t)
	if v == nil {
		return nil
	}
	return &v.TermsVersion
}

// add checks one more version (entry seq, at time t) against the history
// and returns the history with it.
func (h *TermsHistory) add(seq uint64, t time.Time, signed string, tv *contract.TermsVersion, contractID string, mk func(*contract.Contract) (*KeyStore, error)) (*TermsHistory, error) {
	if tv.Contract != contractID {
		return nil, fmt.Errorf("%w: entry %d holds terms of contract %q", ErrTerms, seq, tv.Contract)
	}
	if n := h.Len(); n > 0 && h.versions[n-1].Seq >= seq {
		return nil, fmt.Errorf("%w: entry %d after version %d", ErrTerms, seq, h.versions[n-1].Seq)
	}
	if h.Len() == 0 && seq != 1 {
		return nil, fmt.Errorf("%w: the first terms are at entry %d, not 1", ErrTerms, seq)
	}
	keys, err := mk(&tv.Terms)
	if err != nil {
		return nil, fmt.Errorf("%w: entry %d: %v", ErrTerms, seq, err)
	}
	out := &TermsHistory{versions: make([]*termsVersion, 0, h.Len()+1)}
	if h != nil {
		out.versions = append(out.versions, h.versions...)
	}
	out.versions = append(out.versions, &termsVersion{TermsVersion: TermsVersion{Seq: seq, Time: t, Note: signed, TermsVersion: *tv}, keys: keys})
	return out, nil
}

// TermsError is the evidence that a registry served a contract document
// its log contradicts, or put terms in its log that no registry may.
type TermsError struct {
	Seq uint64
	Err error
}

func (e *TermsError) Error() string {
	return fmt.Sprintf("contract terms at entry %d: %v", e.Seq, e.Err)
}

func (e *TermsError) Unwrap() error { return e.Err }

var _ error = (*TermsError)(nil)

// errNoTermsYet says a log has entries but its first is no terms entry
// (a log from before terms were logged): nothing can be verified.
var errNoTermsYet = errors.New("the log's first entry holds no contract terms (a registry older than logged terms?)")
