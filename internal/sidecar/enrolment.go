package sidecar

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/provgate/provgate/verify"
)

// enrolmentFor returns the function a contract's token source calls for
// the enrolment to send: the first of Config.Enrolments, then of the
// files in Config.EnrolmentFiles (read anew each time), that is for the
// contract and this sidecar's key and not expired. Only the registry
// verifies it; the sidecar just picks.
//
// With no enrolments configured at all it returns nil: token requests go
// without one, and the registry's refusal (403 not_enrolled) says why.
func (s *Sidecar) enrolmentFor(contractID string) func(context.Context) (string, error) {
	if len(s.cfg.Enrolments) == 0 && len(s.cfg.EnrolmentFiles) == 0 {
		return nil
	}
	return func(context.Context) (string, error) {
		jkt, err := verify.Thumbprint(s.key)
		if err != nil {
			return "", err
		}
		now := time.Now()
		var seen []string
		pick := func(jws, from string) bool {
			p, err := verify.PeekEnrolment(jws)
			switch {
			case err != nil:
				seen = append(seen, fmt.Sprintf("%s: %v", from, err))
			case p.Contract != contractID:
			case p.Subject != jkt:
				seen = append(seen, fmt.Sprintf("%s enrols key %s, not this sidecar's", from, p.Subject))
			case !now.Before(p.Expiry):
				seen = append(seen, fmt.Sprintf("%s expired at %s", from, p.Expiry.UTC().Format("2006-01-02T15:04:05Z")))
			default:
				return true
			}
			return false
		}
		for i, jws := range s.cfg.Enrolments {
			if jws = strings.TrimSpace(jws); pick(jws, fmt.Sprintf("enrolment %d", i)) {
				return jws, nil
			}
		}
		for _, path := range s.cfg.EnrolmentFiles {
			b, err := os.ReadFile(path)
			if err != nil {
				seen = append(seen, err.Error())
				continue
			}
			if jws := strings.TrimSpace(string(b)); pick(jws, path) {
				return jws, nil
			}
		}
		msg := fmt.Sprintf("no enrolment of this sidecar's key %s for contract %s (a licensee makes one with: provgate enroll --contract %s --sidecar-jkt %s ...; pass it with --enrolment FILE)",
			jkt, contractID, contractID, jkt)
		if len(seen) > 0 {
			msg += ": " + strings.Join(seen, "; ")
		}
		return "", fmt.Errorf("%s", msg)
	}
}
