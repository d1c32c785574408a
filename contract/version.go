package contract

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// EntryContract carries a version of the contract's terms: a signed note
// (C2SP signed-note) by the log's checkpoint key over a TermsVersion. The
// first entry of every log is one; later ones change the terms from their
// effective_from on.
const EntryContract EntryKind = "contract"

// TermsNoteHeader is the first line of a terms note's text; the second is
// the TermsVersion's JSON. A checkpoint's second line is a decimal size,
// so no terms note parses as a checkpoint, nor the reverse.
const TermsNoteHeader = "provgate-contract-terms/v1"

// TermsVersion is one version of a contract's terms as the provider signs
// it: the whole contract (pricing, usage, contributors, licensees,
// curators, origin, log) and when it comes into force.
type TermsVersion struct {
	Contract      string    `json:"contract"`
	EffectiveFrom time.Time `json:"effective_from"`
	Terms         Contract  `json:"terms"`
}

// TermsText is the note text that the log's key signs for v.
func TermsText(v *TermsVersion) (string, error) {
	t := v.Terms
	t.TermsSeq = 0 // a version does not name its own seq: the entry does
	v2 := *v
	v2.Terms = t
	b, err := json.Marshal(&v2)
	if err != nil {
		return "", fmt.Errorf("encode terms: %w", err)
	}
	return TermsNoteHeader + "\n" + string(b) + "\n", nil
}

// ParseTermsText parses the text of a terms note strictly (the signature
// is checked by the caller, before).
func ParseTermsText(text string) (*TermsVersion, error) {
	head, rest, ok := strings.Cut(text, "\n")
	if !ok || head != TermsNoteHeader {
		return nil, fmt.Errorf("terms note: first line must be %q", TermsNoteHeader)
	}
	body, tail, ok := strings.Cut(rest, "\n")
	if !ok || tail != "" {
		return nil, errors.New("terms note: want exactly one JSON line after the header")
	}
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	var v TermsVersion
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("terms note: %w", err)
	}
	if dec.More() {
		return nil, errors.New("terms note: trailing data after the object")
	}
	if v.EffectiveFrom.IsZero() {
		return nil, errors.New("terms note: effective_from is required")
	}
	if v.Contract != v.Terms.ContractID {
		return nil, fmt.Errorf("terms note: for contract %q but its terms are of %q", v.Contract, v.Terms.ContractID)
	}
	if v.Terms.TermsSeq != 0 {
		return nil, errors.New("terms note: terms must not name a seq")
	}
	if err := v.Terms.Validate(); err != nil {
		return nil, fmt.Errorf("terms note: %w", err)
	}
	if v.Terms.Log.Origin == "" || v.Terms.Log.CheckpointKey == "" {
		return nil, errors.New("terms note: terms name no log origin or checkpoint key")
	}
	return &v, nil
}

// SameTerms reports whether two contract documents carry the same terms:
// equal but for TermsSeq, which the registry adds when it serves one.
func SameTerms(a, b *Contract) bool {
	x, y := *a, *b
	x.TermsSeq, y.TermsSeq = 0, 0
	bx, err1 := json.Marshal(&x)
	by, err2 := json.Marshal(&y)
	return err1 == nil && err2 == nil && bytes.Equal(bx, by)
}

// ContractUpdate is the body of POST /contracts/{id}/versions: the new
// terms, and optionally when they come into force (default: at once).
type ContractUpdate struct {
	Terms         Contract  `json:"terms"`
	EffectiveFrom time.Time `json:"effective_from,omitzero"`
}
