package verify

import (
	"errors"
	"fmt"
	"strings"
	"time"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

// ErrWitnessQuorum: a checkpoint lacks the required number of valid,
// fresh witness cosignatures (a possible split view); it is refused.
var ErrWitnessQuorum = errors.New("witness quorum not met")

// WitnessPolicy is the split-view defence: a checkpoint is trusted only
// with cosignature/v1 signatures (C2SP tlog-cosignature) from at least
// Quorum of the given witnesses, each one fresh. A witness cosigns only
// checkpoints consistent with all it has seen of the log, so a registry
// cannot show two clients two trees and get both cosigned by the same
// witness. A nil policy requires nothing.
type WitnessPolicy struct {
	verifiers []note.Verifier
	quorum    int
}

// NewWitnessPolicy makes a policy from witnesses' verifier keys (vkeys of
// type 0x04, or plain Ed25519 vkeys, as the witness prints them). quorum 0
// means all of them.
func NewWitnessPolicy(vkeys []string, quorum int) (*WitnessPolicy, error) {
	if len(vkeys) == 0 {
		if quorum > 0 {
			return nil, fmt.Errorf("witness quorum %d without witnesses", quorum)
		}
		return nil, nil
	}
	if quorum < 0 || quorum > len(vkeys) {
		return nil, fmt.Errorf("witness quorum %d: want 0 (all) to %d", quorum, len(vkeys))
	}
	if quorum == 0 {
		quorum = len(vkeys)
	}
	p := &WitnessPolicy{quorum: quorum}
	seen := map[string]bool{}
	for _, k := range vkeys {
		v, err := fnote.NewVerifierForCosignatureV1(strings.TrimSpace(k))
		if err != nil {
			return nil, fmt.Errorf("witness key %q: %w", k, err)
		}
		id := fmt.Sprintf("%s+%08x", v.Name(), v.KeyHash())
		if seen[id] {
			return nil, fmt.Errorf("witness key %s: %w", id, ErrDuplicate)
		}
		seen[id] = true
		p.verifiers = append(p.verifiers, v)
	}
	return p, nil
}

// Quorum is the number of cosignatures required.
func (p *WitnessPolicy) Quorum() int {
	if p == nil {
		return 0
	}
	return p.quorum
}

// has reports whether the policy trusts the key name+hash.
func (p *WitnessPolicy) has(name string, hash uint32) bool {
	if p == nil {
		return false
	}
	for _, v := range p.verifiers {
		if v.Name() == name && v.KeyHash() == hash {
			return true
		}
	}
	return false
}

// ForLog refuses a policy that names the log's own checkpoint key as a
// witness: the log cosigns its own checkpoints (cosignature/v1, for the
// signed time), so that key would make a quorum of no witness at all.
func (p *WitnessPolicy) ForLog(cpv *CheckpointVerifier) error {
	if p.has(cpv.cosig.Name(), cpv.cosig.KeyHash()) {
		return errors.New("the log's own checkpoint key cannot be one of its witnesses")
	}
	return nil
}

// Check counts the valid witness cosignatures on cp's note. A
// cosignature counts when it verifies over the checkpoint body and its
// time is neither beyond DefaultSkew in the future nor (maxAge > 0) older
// than maxAge. A signature line that names a trusted witness key but does
// not verify is refused outright.
func (p *WitnessPolicy) Check(cp *Checkpoint, now time.Time, maxAge time.Duration) error {
	if p == nil {
		return nil
	}
	n, err := note.Open(cp.Raw, note.VerifierList(p.verifiers...))
	var unverified *note.UnverifiedNoteError
	var invalid *note.InvalidSignatureError
	switch {
	case errors.As(err, &unverified):
		n = unverified.Note
	case errors.As(err, &invalid):
		return fmt.Errorf("%w: checkpoint %d: invalid cosignature from witness %s", ErrWitnessQuorum, cp.Size, invalid.Name)
	case err != nil:
		return fmt.Errorf("%w: checkpoint %d: %v", ErrWitnessQuorum, cp.Size, err)
	}
	var valid int
	var skipped []string
	for _, s := range n.Sigs {
		t, err := fnote.CoSigV1Timestamp(s)
		switch {
		case err != nil:
			skipped = append(skipped, fmt.Sprintf("%s: %v", s.Name, err))
		case t.After(now.Add(DefaultSkew)):
			skipped = append(skipped, fmt.Sprintf("%s: cosigned at %s, in the future", s.Name, t.UTC().Format(time.RFC3339)))
		case maxAge > 0 && now.Sub(t) > maxAge:
			skipped = append(skipped, fmt.Sprintf("%s: cosigned at %s, older than %s", s.Name, t.UTC().Format(time.RFC3339), maxAge))
		default:
			valid++
		}
	}
	if valid < p.quorum {
		var detail string
		if len(skipped) > 0 {
			detail = " (" + strings.Join(skipped, "; ") + ")"
		}
		return fmt.Errorf("%w: checkpoint %d (root %x) has %d valid witness cosignatures, %d required%s",
			ErrWitnessQuorum, cp.Size, cp.Hash, valid, p.quorum, detail)
	}
	return nil
}
