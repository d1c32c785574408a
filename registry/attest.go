package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// attestationError maps a verification failure to a response: a revoked
// key is 403 revoked_key, a malformed JWS 400, any other refusal (bad
// signature, algorithm, unknown kid, wrong contract or issuer) 403
// invalid_attestation.
func attestationError(err error) error {
	var ae *contract.APIError
	switch {
	case errors.As(err, &ae):
		return err
	case errors.Is(err, verify.ErrRevokedKey):
		return contract.Errorf(http.StatusForbidden, contract.CodeRevokedKey, "%v", err)
	case errors.Is(err, verify.ErrMalformed) && !errors.Is(err, verify.ErrAlgorithm):
		return contract.Errorf(http.StatusBadRequest, contract.CodeInvalidAttestation, "%v", err)
	default:
		return contract.Errorf(http.StatusForbidden, contract.CodeInvalidAttestation, "%v", err)
	}
}

// handleAppend appends a contributor-signed attestation after verifying
// it: the signature against the issuer's keys (a revoked kid is refused),
// the claims against the contract, and the log (a redaction must name a
// live object, a revocation one of the issuer's keys, a transformation
// live sources). The registry builds the entry and stores its exact bytes.
func (s *Server) handleAppend(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	c, err := s.loadContract(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	body, err := readBody(w, r, contract.MaxAttestationSize)
	if err != nil {
		return err
	}
	return s.appendAttestation(ctx, w, c, strings.TrimSpace(string(body)), nil)
}

// submittedBatch is a batch manifest sent with its attestation: its bytes
// (stored by digest) and what they decode to.
type submittedBatch struct {
	raw   []byte
	m     *contract.BatchManifest
	claim contract.BatchClaim // what m was opened against
}

// appendAttestation verifies and appends one attestation; batch is the
// manifest that came with it (POST .../batches), nil on POST .../events.
func (s *Server) appendAttestation(ctx context.Context, w http.ResponseWriter, c *contract.Contract, jws string, batch *submittedBatch) error {
	peek, err := verify.PeekAttestation(jws)
	if err != nil {
		return attestationError(err)
	}
	ct := c.Contributor(peek.Issuer)
	if ct == nil {
		return attestationError(fmt.Errorf("%w: %q", verify.ErrNotContributor, peek.Issuer))
	}
	keys, err := s.contributorKeys(ctx, ct)
	if err != nil {
		return err
	}

	var rec *appendRecord
	err = s.withLog(ctx, c.ContractID, func(ctx context.Context) error {
		if revoked, err := s.st.revoked(ctx, c.ContractID, peek.Issuer, peek.KeyID); err != nil {
			return err
		} else if revoked {
			return attestationError(fmt.Errorf("%w: key %q of %q was revoked", verify.ErrRevokedKey, peek.KeyID, peek.Issuer))
		}
		a, kid, err := verify.VerifyAttestation(jws, c, keys)
		if err != nil {
			return attestationError(err)
		}
		if a.Issuer != peek.Issuer || kid != peek.KeyID {
			return attestationError(fmt.Errorf("%w: issuer or kid changed between reads", verify.ErrMalformed))
		}
		// The log's time must lie in the key's window too, as every follower
		// checks: a key past its window cannot add entries with a backdated
		// iat.
		if w, ok := ct.KeyWindows[kid]; ok && !w.NotAfter.IsZero() && s.now().After(w.NotAfter) {
			return attestationError(fmt.Errorf("%w: key %q appended at %s, after its window closed at %s", verify.ErrKeyWindow, kid,
				s.now().UTC().Format(time.RFC3339), w.NotAfter.UTC().Format(time.RFC3339)))
		}
		if iat := a.Time(); iat.After(s.now().Add(verify.DefaultSkew)) {
			return contract.Errorf(http.StatusBadRequest, contract.CodeInvalidAttestation, "attestation iat %s is in the future", iat.UTC().Format(time.RFC3339))
		}
		if seen, err := s.st.attestationSeen(ctx, c.ContractID, a.Issuer, a.ID); err != nil {
			return err
		} else if seen {
			return contract.Errorf(http.StatusConflict, contract.CodeConflict, "attestation %q of %q is already in the log", a.ID, a.Issuer)
		}
		if (a.Type == contract.Batch) != (batch != nil) {
			return contract.Errorf(http.StatusBadRequest, contract.CodeInvalidAttestation,
				"a batch attestation is posted with its manifest to /provenance/{id}/batches, any other to /provenance/{id}/events")
		}
		rec = &appendRecord{Issuer: a.Issuer, JTI: a.ID}
		switch a.Type {
		case contract.Batch:
			if err := s.checkBatch(ctx, c, a, batch); err != nil {
				return err
			}
			rec.Batch, rec.Manifest, rec.ManifestSHA256 = batch.m.Objects, batch.raw, a.Batch.ManifestSHA256
		case contract.Contribution, contract.Transformation:
			for _, src := range a.Sources {
				o, err := s.st.object(ctx, c.ContractID, src)
				if errors.Is(err, errNotFound) || (err == nil && o.Redacted != 0) {
					return contract.Errorf(http.StatusConflict, contract.CodeConflict, "transformation source %q is not a live object of the log", src)
				} else if err != nil {
					return err
				}
			}
			if err := s.checkOwner(ctx, c, a.Issuer, "replace", a.Object.Name); err != nil {
				return err
			}
			rec.Object = a.Object
		case contract.Redaction:
			o, err := s.st.object(ctx, c.ContractID, a.Redaction.Name)
			if errors.Is(err, errNotFound) {
				return contract.Errorf(http.StatusNotFound, contract.CodeNotFound, "redaction names %q, which is not in the log", a.Redaction.Name)
			} else if err != nil {
				return err
			}
			if err := s.checkOwner(ctx, c, a.Issuer, "redact", o.Name); err != nil {
				return err
			}
			if o.Redacted != 0 {
				return contract.Errorf(http.StatusConflict, contract.CodeConflict, "object %q was already redacted by entry %d", o.Name, o.Redacted)
			}
			if a.Redaction.Seq != 0 && a.Redaction.Seq != o.Seq {
				return contract.Errorf(http.StatusConflict, contract.CodeConflict, "redaction names entry %d, but %q is from entry %d", a.Redaction.Seq, o.Name, o.Seq)
			}
			rec.Redact = a.Redaction.Name
		case contract.Revocation:
			if len(keys.Key(a.Revocation.KeyID)) == 0 {
				return contract.Errorf(http.StatusBadRequest, contract.CodeInvalidAttestation, "revocation names key %q, which %q does not have", a.Revocation.KeyID, a.Issuer)
			}
			rec.RevokeKID = a.Revocation.KeyID
		}
		h, err := s.head(ctx, c.ContractID)
		if err != nil {
			return err
		}
		return s.appendLocked(ctx, c, h, contract.EntryAttestation, jws, nil, rec)
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, contract.AppendResult{Seq: rec.Seq, LeafHash: contract.LeafHash(rec.Entry)})
	return nil
}

// checkOwner refuses (403) an attestation by which issuer would replace or
// redact a name that another contributor owns, unless issuer is a curator
// of the contract. Callers are in withLog.
func (s *Server) checkOwner(ctx context.Context, c *contract.Contract, issuer, action, name string) error {
	owner, since, err := s.st.owner(ctx, c.ContractID, name)
	if errors.Is(err, errNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	if c.MayRewrite(issuer, owner) {
		return nil
	}
	return contract.Errorf(http.StatusForbidden, contract.CodeForbidden,
		"%q may not %s %q: the name belongs to %q, who attested it first (entry %d); only its owner or a curator of the contract may", issuer, action, name, owner, since)
}
