package registry

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// handleTokenRequest issues a capability token: the request must carry a
// DPoP proof signed by the key in the body, to which the token is then
// bound (cnf.jkt), and a licensee's enrolment of that key under the
// contract; the purpose must be one the contract and the licensee's terms
// allow. The token's quota is the key's lease of the licensee's quota
// (see lease), and it expires no later than the enrolment and the terms.
func (s *Server) handleTokenRequest(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	c, err := s.loadContract(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	var req contract.TokenRequest
	if err := decodeBody(w, r, 64<<10, &req); err != nil {
		return err
	}
	if req.JWK.Key == nil || !req.JWK.IsPublic() {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "jwk must be a public key")
	}
	if err := verify.CheckKey(&req.JWK, verify.KeyAlgorithm(&req.JWK)); err != nil {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "jwk: %v", err)
	}
	jkt, err := verify.Thumbprint(&req.JWK)
	if err != nil {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "jwk: %v", err)
	}
	now := s.now()
	proofJKT, err := s.checkProof(ctx, r, "", now)
	if err != nil {
		return err
	}
	if proofJKT != jkt {
		return contract.Errorf(http.StatusUnauthorized, contract.CodeUnauthorized, "the DPoP proof is not signed by the key in the request")
	}
	if !c.Usage.AllowsPurpose(req.Purpose) {
		return contract.Errorf(http.StatusForbidden, contract.CodeForbidden, "purpose %q is not allowed by contract %q", req.Purpose, c.ContractID)
	}
	enrol, lic, err := s.checkEnrolment(ctx, c, req.Enrolment, jkt, req.Purpose, now)
	if err != nil {
		return err
	}
	// The token lives no longer than the enrolment and the terms.
	exp := now.Add(s.cfg.TokenTTL)
	exp = minTime(exp, time.Unix(enrol.Expiry, 0))
	if !lic.Terms.ExpiresAt.IsZero() {
		exp = minTime(exp, lic.Terms.ExpiresAt)
	}
	key, err := s.activeKey(ctx)
	if err != nil {
		return err
	}
	pub, err := json.Marshal(req.JWK.Public())
	if err != nil {
		return err
	}
	if err := s.st.putSidecarKey(ctx, jkt, pub); err != nil {
		return err
	}
	if err := s.st.putEnrolment(ctx, c.ContractID, jkt, lic.ID, time.Unix(enrol.Expiry, 0), req.Enrolment); err != nil {
		return err
	}
	lease, err := s.lease(ctx, c, lic, jkt, req.Usage, now, exp)
	if err != nil {
		return err
	}
	claims := &contract.CapabilityClaims{
		Issuer: s.cfg.Name, Subject: jkt, Contract: c.ContractID, Purpose: req.Purpose,
		Licensee: lic.ID, Lease: lease.ID, Quota: lease.Grant,
		Confirm: contract.Confirmation{JKT: jkt}, IssuedAt: now.Unix(), NotBefore: now.Unix(), Expiry: exp.Unix(),
		ID: verify.NewID(),
	}
	tok, err := verify.SignCapability(key, claims)
	if err != nil {
		return err
	}
	s.logger.Info("token issued", logKeyContract, c.ContractID, "jkt", jkt, "purpose", req.Purpose, logKeyKID, key.KeyID,
		"licensee", lic.ID, "lease", lease.ID, "lease_reused", lease.Reused, "max_samples", lease.Grant.MaxSamples, "max_bytes", lease.Grant.MaxBytes)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, contract.TokenResponse{
		Token: tok, TokenType: contract.AuthSchemeDPoP, ExpiresAt: time.Unix(claims.Expiry, 0).UTC(),
		ExpiresIn: claims.Expiry - now.Unix(), ID: claims.ID,
	})
	return nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// checkProof verifies the request's DPoP proof (for token, or a token
// request when empty), refuses a proof id seen before within its window,
// and returns the thumbprint of the proof's key.
func (s *Server) checkProof(ctx context.Context, r *http.Request, token string, now time.Time) (string, error) {
	p := r.Header.Values(contract.HeaderDPoP)
	if len(p) != 1 || p[0] == "" {
		return "", contract.Errorf(http.StatusUnauthorized, contract.CodeUnauthorized, "exactly one DPoP proof header is required")
	}
	claims, jkt, err := verify.VerifyDPoPProof(p[0], r.Method, s.requestURL(r), token, now)
	if err != nil {
		return "", contract.Errorf(http.StatusUnauthorized, contract.CodeUnauthorized, "%v", err)
	}
	exp := time.Unix(claims.IssuedAt, 0).Add(verify.DefaultProofMaxAge + verify.DefaultSkew)
	if err := s.st.useProofID(ctx, jkt+"/"+claims.ID, exp); err != nil {
		if errors.Is(err, errReplay) {
			return "", contract.Errorf(http.StatusUnauthorized, contract.CodeReplay, "DPoP proof %q was already used", claims.ID)
		}
		return "", err
	}
	return jkt, nil
}

// authorize checks a request's capability token (signed by a key in the
// registry's JWKS, unexpired, for contractID) and its proof of possession
// (signed by the token's cnf key, fresh, not replayed).
func (s *Server) authorize(ctx context.Context, r *http.Request, contractID string) (*contract.CapabilityClaims, error) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, contract.AuthSchemeDPoP) || token == "" {
		return nil, contract.Errorf(http.StatusUnauthorized, contract.CodeUnauthorized, "a DPoP-bound capability token is required (Authorization: DPoP <token>)")
	}
	keys, err := s.publicJWKS(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now()
	claims, err := verify.VerifyCapability(token, keys, now)
	if err != nil {
		return nil, contract.Errorf(http.StatusUnauthorized, contract.CodeUnauthorized, "capability token: %v", err)
	}
	if claims.Issuer != s.cfg.Name {
		return nil, contract.Errorf(http.StatusUnauthorized, contract.CodeUnauthorized, "capability token issued by %q", claims.Issuer)
	}
	if claims.Contract != contractID {
		return nil, contract.Errorf(http.StatusForbidden, contract.CodeForbidden, "the token is for contract %q, not %q", claims.Contract, contractID)
	}
	jkt, err := s.checkProof(ctx, r, token, now)
	if err != nil {
		return nil, err
	}
	if jkt != claims.Confirm.JKT {
		return nil, contract.Errorf(http.StatusUnauthorized, contract.CodeUnauthorized, "%v: proof key %s, token bound to %s", verify.ErrWrongKey, jkt, claims.Confirm.JKT)
	}
	return claims, nil
}

// sidecarJWK is the public key stored for a thumbprint at token issuance.
func (s *Server) sidecarJWK(ctx context.Context, jkt string) (*jose.JSONWebKey, error) {
	b, err := s.st.sidecarKey(ctx, jkt)
	if errors.Is(err, errNotFound) {
		return nil, contract.Errorf(http.StatusUnauthorized, contract.CodeUnauthorized, "no key known for %s", jkt)
	}
	if err != nil {
		return nil, err
	}
	var k jose.JSONWebKey
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, errCorrupted
	}
	return &k, nil
}

// handleSidecarJWKS publishes the public key a sidecar proved possession of
// when it got a token, as a one-key JWKS, so that anyone can check the
// metering batches it signed. The key is self-certifying: its RFC 7638
// thumbprint is the jkt in the path and the batches' kid.
func (s *Server) handleSidecarJWKS(w http.ResponseWriter, r *http.Request) error {
	k, err := s.sidecarJWK(r.Context(), r.PathValue("jkt"))
	if contract.StatusOf(err) == http.StatusUnauthorized {
		return contract.Errorf(http.StatusNotFound, contract.CodeNotFound, "no sidecar %q", r.PathValue("jkt"))
	}
	if err != nil {
		return err
	}
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{*k}})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", contract.JWKSMediaType)
	w.Header().Set("Cache-Control", "public, max-age=86400, immutable")
	w.Write(b)
	return nil
}
