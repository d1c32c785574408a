package contract

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/transparency-dev/merkle/rfc6962"
)

// EntryVersion is the only entry format version.
const EntryVersion = 1

// MaxEntrySize bounds an entry's bytes. Every decoder enforces it.
const MaxEntrySize = 1 << 20

// Append and page bounds. A registry refuses (413) an attestation larger
// than MaxAttestationSize and any entry larger than MaxAppendEntrySize, and
// serves pages of entries of at most MaxEventsPageBytes (and at least one
// entry): clients follow the pages it returns, whatever limit they asked.
const (
	MaxAttestationSize = 64 << 10
	MaxAppendEntrySize = 512 << 10
	MaxEventsPageBytes = 8 << 20
)

// EntryKind says what an entry's JWS carries.
type EntryKind string

// Entry kinds.
const (
	// EntryAttestation carries a contributor-signed attestation (of kind
	// contribution, transformation, redaction or revocation).
	EntryAttestation EntryKind = "attestation"
	// EntryMetering carries a sidecar-signed metering batch and the ids of
	// the events in it that the registry counted (the others were already
	// counted by an earlier batch).
	EntryMetering EntryKind = "metering"
)

// Entry is one provenance log entry. Its JSON encoding, produced once by the
// registry, is what is hashed and what is served; see EncodeEntry and
// DecodeEntry.
type Entry struct {
	V        int       `json:"v"`
	Seq      uint64    `json:"seq"`
	PrevHash string    `json:"prev_hash"`
	Time     time.Time `json:"time"`
	Contract string    `json:"contract"`
	Kind     EntryKind `json:"kind"`
	// JWS is the compact JWS as submitted: an attestation (EntryAttestation)
	// or a metering batch (EntryMetering).
	JWS string `json:"jws"`
	// Accepted lists, for a metering entry, the event ids counted by it.
	Accepted []string `json:"accepted,omitempty"`
	// Note is, for a contract entry (EntryContract), the signed note of a
	// version of the terms; JWS is then empty.
	Note string `json:"note,omitempty"`
}

// ZeroHash is the prev_hash of the first entry.
var ZeroHash = make([]byte, 32)

// LeafHash is the RFC 6962 leaf hash of an entry's bytes; it is both the
// Merkle leaf and the next entry's prev_hash.
func LeafHash(entry []byte) []byte {
	return rfc6962.DefaultHasher.HashLeaf(entry)
}

// EncodeEntry returns the canonical bytes of e. The registry calls it once
// and stores the result; nothing re-encodes an entry after that.
func EncodeEntry(e *Entry) ([]byte, error) {
	if err := e.check(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encode entry: %w", err)
	}
	if len(b) > MaxEntrySize {
		return nil, fmt.Errorf("encode entry: %d bytes exceeds %d", len(b), MaxEntrySize)
	}
	return b, nil
}

// DecodeEntry parses an entry's bytes strictly: size bounded, one JSON
// object, no unknown or duplicate-shadowed fields, known version and kind.
func DecodeEntry(b []byte) (*Entry, error) {
	if len(b) > MaxEntrySize {
		return nil, fmt.Errorf("decode entry: %d bytes exceeds %d", len(b), MaxEntrySize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var e Entry
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("decode entry: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("decode entry: trailing data after the object")
	}
	if err := e.check(); err != nil {
		return nil, fmt.Errorf("decode entry: %w", err)
	}
	return &e, nil
}

func (e *Entry) check() error {
	if e.V != EntryVersion {
		return fmt.Errorf("entry version %d, want %d", e.V, EntryVersion)
	}
	if e.Seq == 0 {
		return errors.New("entry seq must be at least 1")
	}
	if h, err := hex.DecodeString(e.PrevHash); err != nil || len(h) != 32 {
		return fmt.Errorf("entry %d: prev_hash must be 64 hex digits", e.Seq)
	}
	if e.Seq == 1 && e.PrevHash != hex.EncodeToString(ZeroHash) {
		return errors.New("entry 1: prev_hash must be zero")
	}
	if e.Time.IsZero() {
		return fmt.Errorf("entry %d: time is required", e.Seq)
	}
	if err := ValidateID(e.Contract); err != nil {
		return fmt.Errorf("entry %d: contract: %w", e.Seq, err)
	}
	switch e.Kind {
	case EntryAttestation:
		if len(e.Accepted) != 0 {
			return fmt.Errorf("entry %d: accepted is only for metering entries", e.Seq)
		}
	case EntryMetering:
	case EntryContract:
		if e.JWS != "" || len(e.Accepted) != 0 || e.Note == "" {
			return fmt.Errorf("entry %d: a contract entry carries a note only", e.Seq)
		}
		return nil
	default:
		return fmt.Errorf("entry %d: unknown kind %q", e.Seq, e.Kind)
	}
	if e.Note != "" {
		return fmt.Errorf("entry %d: note is only for contract entries", e.Seq)
	}
	if e.JWS == "" {
		return fmt.Errorf("entry %d: jws is required", e.Seq)
	}
	return nil
}

// WireEntry is an entry as served: its seq and its exact bytes (base64 in
// JSON).
type WireEntry struct {
	Seq   uint64 `json:"seq"`
	Entry []byte `json:"entry"`
}

// EventsPage answers GET /provenance/{id}/events?since=&limit=.
type EventsPage struct {
	Entries []WireEntry `json:"entries"`
	// TreeSize is the log's size when the page was read.
	TreeSize uint64 `json:"tree_size"`
}

// Limits on the events cursor.
const (
	DefaultEventsLimit = 1000
	MaxEventsLimit     = 10000
)
