package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/provgate/provgate/contract"
)

// handlePresign returns short-lived presigned GET URLs for live objects of
// the contract (marketplace mode). The token and its proof authorise the
// caller. Each name is answered on its own: a live object gets a URL; a
// redacted one (451), a name that is no object of the contract (404) or an
// invalid name (400) gets an error in its place, and never fails the other
// names. The distinct live objects presigned under the token's lease, and
// their stored bytes, are counted against the lease's grant (and so against
// the licensee's quota), atomically; a spent lease refuses the whole
// request.
func (s *Server) handlePresign(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	c, err := s.loadContract(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	claims, err := s.authorize(ctx, r, c.ContractID)
	if err != nil {
		return err
	}
	if s.cfg.S3 == nil {
		return contract.Errorf(http.StatusServiceUnavailable, contract.CodeUnavailable, "this registry does not presign (no S3 endpoint configured)")
	}
	var req contract.PresignRequest
	if err := decodeBody(w, r, MaxBodySize, &req); err != nil {
		return err
	}
	if len(req.Names) == 0 || len(req.Names) > contract.MaxPresignNames {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "names: 1 to %d names", contract.MaxPresignNames)
	}
	refused := make([]*contract.APIError, len(req.Names))
	objects := make([]*objectRow, 0, len(req.Names))
	for i, n := range req.Names {
		o, err := s.presignable(ctx, c.ContractID, n)
		var ae *contract.APIError
		if errors.As(err, &ae) {
			refused[i] = ae
			continue
		}
		if err != nil {
			return err
		}
		objects = append(objects, o)
	}
	// Presigned objects count against the token's quota lease, which the
	// licensee's other sidecars cannot spend.
	if claims.Lease == "" {
		return contract.Errorf(http.StatusUnauthorized, contract.CodeUnauthorized, "the token holds no quota lease; request a new token")
	}
	if len(objects) > 0 {
		if err := s.st.presign(ctx, claims.Lease, objects); err != nil {
			return err
		}
	}
	now := s.now()
	ttl := min(s.cfg.PresignTTL, time.Unix(claims.Expiry, 0).Sub(now))
	if ttl < time.Second {
		ttl = time.Second
	}
	resp := contract.PresignResponse{URLs: make([]contract.PresignedURL, 0, len(req.Names))}
	for i, n := range req.Names {
		if ae := refused[i]; ae != nil {
			resp.URLs = append(resp.URLs, contract.PresignedURL{Name: n, Error: &contract.ErrorDetail{Code: ae.Code, Message: ae.Message}})
			continue
		}
		u, err := s.cfg.S3.PresignedGetObject(ctx, c.Origin.Bucket, c.Origin.Key(n), ttl, nil)
		if err != nil {
			return fmt.Errorf("presign %s: %w", n, err)
		}
		resp.URLs = append(resp.URLs, contract.PresignedURL{Name: n, URL: u.String(), ExpiresAt: now.Add(ttl).UTC()})
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// presignable returns the live object named n, or an *APIError saying why
// that name gets no URL (400, 404, 451); any other error is the store's.
func (s *Server) presignable(ctx context.Context, contractID, n string) (*objectRow, error) {
	if err := contract.ValidateName(n); err != nil {
		return nil, contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "%v", err)
	}
	o, err := s.st.object(ctx, contractID, n)
	if errors.Is(err, errNotFound) {
		return nil, contract.Errorf(http.StatusNotFound, contract.CodeNotFound, "%q is not an object of contract %q", n, contractID)
	}
	if err != nil {
		return nil, err
	}
	if o.Redacted != 0 {
		return nil, contract.Errorf(http.StatusUnavailableForLegalReasons, contract.CodeRedacted, "%q was redacted by entry %d", n, o.Redacted)
	}
	return o, nil
}
