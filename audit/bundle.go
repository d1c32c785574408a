package audit

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
)

// Format is the bundle format this package writes and reads.
const Format = "provgate-audit-bundle/v1"

// Bounds on what Parse accepts. A bundle larger than MaxBundleSize is
// refused before it is decoded.
const (
	MaxBundleSize  = 1 << 30
	MaxEntries     = 1 << 20
	MaxCheckpoints = 1 << 12
	MaxBatches     = 1 << 20
	MaxRows        = 1 << 20
	MaxProofHashes = 64
	MaxKeys        = 1 << 12
)

// ErrMalformed is the error of a bundle that does not parse.
var ErrMalformed = errors.New("malformed audit bundle")

// Bundle is an audit bundle: everything needed to verify one contract's
// log and one ledger's metering in it, offline.
type Bundle struct {
	Format   string    `json:"format"`
	Contract string    `json:"contract_id"`
	Created  time.Time `json:"created"`
	// Log names the contract's log: its checkpoint origin and the note
	// verifier key of the registry's log key.
	Log contract.LogInfo `json:"log"`
	// Checkpoint is the latest signed checkpoint (a C2SP signed note, with
	// any witness cosignatures the registry served).
	Checkpoint string `json:"checkpoint"`
	// Entries are the log's entries 1..Checkpoint's size, in order, as
	// the exact bytes that were hashed (base64 in JSON).
	Entries [][]byte `json:"entries"`
	// Checkpoints are earlier signed checkpoints of the log (those of the
	// receipts), each with the consistency proof to Checkpoint.
	Checkpoints []OlderCheckpoint `json:"checkpoints,omitempty"`
	// Keys are the public keys the log does not carry itself.
	Keys Keys `json:"keys"`
	// Ledger names the ledger whose metering the bundle settles and the
	// scope exported.
	Ledger LedgerScope `json:"ledger"`
	// Batches are the ledger's metering batches in scope, in log order,
	// with the registry's receipts.
	Batches []Batch `json:"batches,omitempty"`
	// Totals are the sums of the ledger's events in scope that the log
	// counted: what the bill is.
	Totals Totals `json:"totals"`
	// Rows are ledger rows disclosed with proofs against their batch.
	Rows []DisclosedRow `json:"rows,omitempty"`
}

// OlderCheckpoint is an earlier checkpoint of the log and the RFC 6962
// consistency proof from its size to the bundle's checkpoint.
type OlderCheckpoint struct {
	Checkpoint  string   `json:"checkpoint"`
	Consistency [][]byte `json:"consistency"`
}

// Keys are public keys a verifier needs that the log's own entries do not
// hold: contributors' key sets fetched from their jwks_uri when the bundle
// was made (inline key sets are in the terms entries), and the sidecars'
// keys, by RFC 7638 thumbprint (self-certifying: a key must hash to its
// thumbprint, which is the kid of the batches it signs).
type Keys struct {
	Fetched  []FetchedKeys              `json:"fetched,omitempty"`
	Sidecars map[string]jose.JSONWebKey `json:"sidecars,omitempty"`
}

// FetchedKeys is a key set served at a jwks_uri named by the terms.
type FetchedKeys struct {
	URI  string             `json:"uri"`
	JWKS jose.JSONWebKeySet `json:"jwks"`
}

// LedgerScope names the ledger and what of it was exported.
type LedgerScope struct {
	// ID is the ledger id: its event ids are ID + "-" + row seq.
	ID string `json:"id"`
	// Job, when set, limits the totals to events of that job.
	Job string `json:"job,omitempty"`
	// Epochs, when set, limits the totals to events of epochs
	// [From, To].
	Epochs *EpochRange `json:"epochs,omitempty"`
}

// EpochRange is an inclusive range of epochs.
type EpochRange struct {
	From int64 `json:"from"`
	To   int64 `json:"to"`
}

// Contains reports whether epoch e is in the range (a nil range holds all).
func (r *EpochRange) Contains(e int64) bool {
	return r == nil || (e >= r.From && e <= r.To)
}

// In reports whether an event is in the scope: the ledger's own (its id
// is ID + "-" + a row seq; ledger ids may hold "-", so no prefix will do),
// of the job and epochs asked.
func (s *LedgerScope) In(ev *contract.MeteringEvent) bool {
	_, ok := s.rowSeq(ev.ID)
	return ok && (s.Job == "" || ev.Job == s.Job) && s.Epochs.Contains(ev.Epoch)
}

// Batch is one of the ledger's metering batches: its rows (AfterSeq,
// LastSeq], the log entry that holds it, the registry's receipt for it,
// and what it counted in scope.
type Batch struct {
	Batch    string `json:"batch"`
	AfterSeq int64  `json:"after_seq"`
	LastSeq  int64  `json:"last_seq"`
	// Entry is the log entry's bytes as the receipt gave them.
	Entry []byte `json:"entry"`
	// Proof is the receipt: a C2SP tlog-proof (index, inclusion proof,
	// the signed checkpoint it was made against) for Entry.
	Proof string `json:"proof"`
	// Counted are the ledger's events in scope that the entry counted.
	Counted Totals `json:"counted"`
	// Rows is the batch's row tree, when rows of it are disclosed: the
	// one its entry commits to (an aggregate batch), or the one the
	// exporter's ledger makes of its rows.
	Rows *RowsRoot `json:"rows,omitempty"`
}

// Totals are a count of events and their sums.
type Totals struct {
	Events int64 `json:"events"`
	contract.Sums
}

func (t *Totals) add(ev *contract.MeteringEvent) bool {
	if !t.Sums.Add(ev.Sums()) {
		return false
	}
	t.Events++
	return true
}

// DisclosedRow is a ledger row shown with its inclusion proof in its
// batch's row tree (the RFC 6962 tree of the batch's rows' canonical
// leaves in seq order, provgate.meter.row/v1; see docs/AUDIT.md).
type DisclosedRow struct {
	Seq   int64  `json:"seq"`
	Batch string `json:"batch"`
	// Index is the row's leaf index in the batch's tree.
	Index uint64 `json:"index"`
	// Row is the leaf's bytes (meter.RowLeaf), as a string so that no
	// re-encoding of the bundle changes them.
	Row   string   `json:"row"`
	Proof [][]byte `json:"proof"`
}

// Parse decodes a bundle strictly: bounded, one JSON object, no unknown
// fields, this format, every count and hash within bounds. It checks the
// shape only; Verify checks what the bundle proves.
func Parse(r io.Reader) (*Bundle, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxBundleSize+1))
	if err != nil {
		return nil, fmt.Errorf("read audit bundle: %w", err)
	}
	return ParseBytes(b)
}

// ParseBytes is Parse of a bundle in memory.
func ParseBytes(b []byte) (*Bundle, error) {
	if len(b) > MaxBundleSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrMalformed, MaxBundleSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var bu Bundle
	if err := dec.Decode(&bu); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after the object", ErrMalformed)
	}
	if err := checkKeys(b); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := bu.checkShape(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return &bu, nil
}

// checkKeys refuses what Go's decoder reads one way and other JSON
// readers another: an object with two keys equal but for case (Go keeps
// the last, matching fields without regard to case; others keep the
// first, or see two fields), and a field name not in lower case. Keys of
// keys.sidecars (thumbprints) are map keys and keep their case. b has
// decoded, so its nesting is bounded.
func checkKeys(b []byte) error {
	type frame struct {
		object, expectKey, mapKeys bool
		keys                       map[string]bool
		lastKey                    string
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		var top *frame
		if n := len(stack); n > 0 {
			top = stack[n-1]
		}
		if k, ok := tok.(string); ok && top != nil && top.object && top.expectKey {
			low := strings.ToLower(k)
			switch {
			case top.keys[low]:
				return fmt.Errorf("key %q appears twice in one object (keys are compared without regard to case)", k)
			case !top.mapKeys && k != low && k != "x5t#S256":
				return fmt.Errorf("key %q is not in lower case", k)
			}
			top.keys[low], top.lastKey, top.expectKey = true, k, false
			continue
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			f := &frame{object: tok == json.Delim('{'), expectKey: true, keys: map[string]bool{}}
			f.mapKeys = f.object && top != nil && top.object && top.lastKey == "sidecars"
			stack = append(stack, f)
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			if n := len(stack); n > 0 {
				top = stack[n-1]
			} else {
				top = nil
			}
		}
		if top != nil && top.object {
			top.expectKey = true // a value ended
		}
	}
}

func (b *Bundle) checkShape() error {
	switch {
	case b.Format != Format:
		return fmt.Errorf("format %q, want %q", b.Format, Format)
	case contract.ValidateID(b.Contract) != nil:
		return fmt.Errorf("contract_id %q is not a contract id", b.Contract)
	case b.Log.Origin == "" || b.Log.CheckpointKey == "":
		return errors.New("log origin and checkpoint_key are required")
	case b.Checkpoint == "":
		return errors.New("checkpoint is required")
	case len(b.Entries) > MaxEntries:
		return fmt.Errorf("%d entries, more than %d", len(b.Entries), MaxEntries)
	case len(b.Checkpoints) > MaxCheckpoints:
		return fmt.Errorf("%d checkpoints, more than %d", len(b.Checkpoints), MaxCheckpoints)
	case len(b.Batches) > MaxBatches:
		return fmt.Errorf("%d batches, more than %d", len(b.Batches), MaxBatches)
	case len(b.Rows) > MaxRows:
		return fmt.Errorf("%d rows, more than %d", len(b.Rows), MaxRows)
	case len(b.Keys.Fetched)+len(b.Keys.Sidecars) > MaxKeys:
		return fmt.Errorf("more than %d key sets", MaxKeys)
	case b.Ledger.Epochs != nil && b.Ledger.Epochs.From > b.Ledger.Epochs.To:
		return fmt.Errorf("epochs %d-%d: empty range", b.Ledger.Epochs.From, b.Ledger.Epochs.To)
	}
	for i, e := range b.Entries {
		if len(e) == 0 || len(e) > contract.MaxEntrySize {
			return fmt.Errorf("entry %d: %d bytes, want 1 to %d", i+1, len(e), contract.MaxEntrySize)
		}
	}
	for i, c := range b.Checkpoints {
		if err := checkHashes(c.Consistency); err != nil {
			return fmt.Errorf("checkpoints[%d]: consistency: %v", i, err)
		}
	}
	seen := make(map[string]bool, len(b.Batches))
	for i := range b.Batches {
		bt := &b.Batches[i]
		if bt.Batch == "" || seen[bt.Batch] {
			return fmt.Errorf("batches[%d]: batch id %q is empty or repeated", i, bt.Batch)
		}
		seen[bt.Batch] = true
		if len(bt.Entry) == 0 || len(bt.Entry) > contract.MaxEntrySize {
			return fmt.Errorf("batch %s: entry of %d bytes", bt.Batch, len(bt.Entry))
		}
		if bt.AfterSeq < 0 || bt.LastSeq <= bt.AfterSeq {
			return fmt.Errorf("batch %s: rows (%d, %d] is no range", bt.Batch, bt.AfterSeq, bt.LastSeq)
		}
		if r := bt.Rows; r != nil && (r.Count == 0 || r.Count > uint64(bt.LastSeq-bt.AfterSeq) || len(r.Root) != 32) {
			return fmt.Errorf("batch %s: rows: want 1 to %d rows and a 32-byte root", bt.Batch, bt.LastSeq-bt.AfterSeq)
		}
	}
	for i := range b.Rows {
		r := &b.Rows[i]
		if r.Seq <= 0 || r.Batch == "" || len(r.Row) == 0 || len(r.Row) > contract.MaxEntrySize {
			return fmt.Errorf("rows[%d]: seq, batch and row are required", i)
		}
		if err := checkHashes(r.Proof); err != nil {
			return fmt.Errorf("row seq %d: proof: %v", r.Seq, err)
		}
	}
	return nil
}

func checkHashes(hs [][]byte) error {
	if len(hs) > MaxProofHashes {
		return fmt.Errorf("%d hashes, more than %d", len(hs), MaxProofHashes)
	}
	for _, h := range hs {
		if len(h) != 32 {
			return errors.New("hashes must be 32 bytes")
		}
	}
	return nil
}

// Marshal encodes a bundle as indented JSON.
func (b *Bundle) Marshal() ([]byte, error) {
	out, err := json.MarshalIndent(b, "", " ")
	if err != nil {
		return nil, fmt.Errorf("encode audit bundle: %w", err)
	}
	return append(out, '\n'), nil
}

// tlogProofHeader is the first line of a C2SP tlog-proof.
const tlogProofHeader = "c2sp.org/tlog-proof@v1"

// TLogProof is a C2SP tlog-proof (c2sp.org/tlog-proof): a leaf index, its
// inclusion proof and the signed checkpoint it leads to.
type TLogProof struct {
	Extra      []byte
	Index      uint64
	Hashes     [][]byte
	Checkpoint []byte
}

// MarshalTLogProof encodes p in the C2SP text form.
func MarshalTLogProof(p *TLogProof) string {
	var sb strings.Builder
	sb.WriteString(tlogProofHeader + "\n")
	if p.Extra != nil {
		sb.WriteString("extra " + base64.StdEncoding.EncodeToString(p.Extra) + "\n")
	}
	sb.WriteString("index " + strconv.FormatUint(p.Index, 10) + "\n")
	for _, h := range p.Hashes {
		sb.WriteString(base64.StdEncoding.EncodeToString(h) + "\n")
	}
	sb.WriteString("\n")
	sb.Write(p.Checkpoint)
	return sb.String()
}

// ParseTLogProof decodes a C2SP tlog-proof strictly. The checkpoint is
// returned as text; the caller verifies it.
func ParseTLogProof(s string) (*TLogProof, error) {
	head, rest, ok := strings.Cut(s, "\n\n")
	if !ok {
		return nil, errors.New("tlog-proof: no blank line before the checkpoint")
	}
	lines := strings.Split(head, "\n")
	if lines[0] != tlogProofHeader {
		return nil, fmt.Errorf("tlog-proof: first line must be %q", tlogProofHeader)
	}
	lines = lines[1:]
	p := &TLogProof{Checkpoint: []byte(rest)}
	if len(lines) > 0 && strings.HasPrefix(lines[0], "extra ") {
		x, err := base64.StdEncoding.Strict().DecodeString(strings.TrimPrefix(lines[0], "extra "))
		if err != nil {
			return nil, fmt.Errorf("tlog-proof: extra: %v", err)
		}
		p.Extra, lines = x, lines[1:]
	}
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "index ") {
		return nil, errors.New("tlog-proof: want an index line")
	}
	idx := strings.TrimPrefix(lines[0], "index ")
	n, err := strconv.ParseUint(idx, 10, 64)
	if err != nil || strconv.FormatUint(n, 10) != idx {
		return nil, fmt.Errorf("tlog-proof: index %q is not a decimal number", idx)
	}
	p.Index = n
	lines = lines[1:]
	if len(lines) > MaxProofHashes {
		return nil, fmt.Errorf("tlog-proof: %d hashes, more than %d", len(lines), MaxProofHashes)
	}
	for _, l := range lines {
		h, err := base64.StdEncoding.Strict().DecodeString(l)
		if err != nil || len(h) != 32 {
			return nil, fmt.Errorf("tlog-proof: hash line %q is not a base64 32-byte hash", l)
		}
		p.Hashes = append(p.Hashes, h)
	}
	return p, nil
}
