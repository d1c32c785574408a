package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// licenseeKeys returns a licensee's key set: inline, or fetched from its
// jwks_uri (cached for a minute), as for contributors.
func (s *Server) licenseeKeys(ctx context.Context, l *contract.Licensee) (*jose.JSONWebKeySet, error) {
	if l.JWKS != nil && len(l.JWKS.Keys) > 0 {
		return l.JWKS, nil
	}
	return s.fetchJWKS(ctx, l.JWKSURI)
}

// checkEnrolment verifies the enrolment a token request carries for the
// key jkt: signed by a licensee of c, for c and jkt, unexpired, under
// terms that are in force and allow purpose. Every refusal is 403
// not_enrolled with the reason; only a key set that cannot be fetched is
// another error (502).
func (s *Server) checkEnrolment(ctx context.Context, c *contract.Contract, jws, jkt, purpose string, now time.Time) (*contract.EnrolmentClaims, *contract.Licensee, error) {
	refuse := func(format string, args ...any) error {
		return contract.Errorf(http.StatusForbidden, contract.CodeNotEnrolled, format, args...)
	}
	if len(c.Licensees) == 0 {
		return nil, nil, refuse("contract %q names no licensees, so no token can be issued for it", c.ContractID)
	}
	if jws == "" {
		return nil, nil, refuse("a token needs an enrolment of key %s by a licensee of contract %q (see provgate enroll)", jkt, c.ContractID)
	}
	peek, err := verify.PeekEnrolment(jws)
	if err != nil {
		return nil, nil, refuse("enrolment: %v", err)
	}
	l := c.Licensee(peek.Issuer)
	if l == nil {
		return nil, nil, refuse("enrolment: %v", fmt.Errorf("%w: %q", verify.ErrNotLicensee, peek.Issuer))
	}
	keys, err := s.licenseeKeys(ctx, l)
	if err != nil {
		return nil, nil, err
	}
	e, l, err := verify.VerifyEnrolment(jws, c, peek.Issuer, keys, jkt, now)
	if err != nil {
		return nil, nil, refuse("enrolment: %v", err)
	}
	if l.Terms.Expired(now) {
		return nil, nil, refuse("the terms of licensee %q expired at %s", l.ID, l.Terms.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if !l.Terms.AllowsPurpose(c, purpose) {
		return nil, nil, contract.Errorf(http.StatusForbidden, contract.CodeForbidden, "purpose %q is not allowed to licensee %q", purpose, l.ID)
	}
	return e, l, nil
}

// lease grants (or renews) the quota lease of an enrolled key: a slice of
// its licensee's quota, reserved atomically.
func (s *Server) lease(ctx context.Context, c *contract.Contract, l *contract.Licensee, jkt string, asked contract.Quota, now, exp time.Time) (*leaseRow, error) {
	if asked.MaxSamples < 0 || asked.MaxBytes < 0 {
		return nil, contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "usage limits must not be negative")
	}
	lr, err := s.st.grantLease(ctx, &leaseRequest{
		Contract: c.ContractID, Licensee: l.ID, JKT: jkt, Asked: asked,
		LicenseeMax: licenseeQuota(c, l),
		NewID:       verify.NewID(), Now: now, Expires: exp,
	})
	if errors.Is(err, errQuota) {
		return nil, contract.Errorf(http.StatusForbidden, contract.CodeQuotaExceeded, "licensee %q: %v", l.ID, err)
	}
	return lr, err
}

// licenseeQuota is a licensee's own quota: its terms' limits, capped by the
// contract's usage limits, which are also the quota of a licensee whose
// terms set none (zero: no limit). Each licensee has its own: what one
// uses never spends another's.
func licenseeQuota(c *contract.Contract, l *contract.Licensee) contract.Quota {
	lim := func(own, contractMax int64) int64 {
		if own == 0 || (contractMax > 0 && contractMax < own) {
			return contractMax
		}
		return own
	}
	return contract.Quota{MaxSamples: lim(l.Terms.MaxSamples, c.Usage.MaxSamples), MaxBytes: lim(l.Terms.MaxBytes, c.Usage.MaxBytes)}
}
