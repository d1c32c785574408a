package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// MaxIdempotencyKey bounds the Idempotency-Key header.
const MaxIdempotencyKey = 256

// handleMetering ingests a sidecar-signed metering batch. The token and
// its proof authorise the sidecar; the batch must be signed by the key the
// token is bound to. Events are counted once each, whatever batch they
// arrive in (a durable unique constraint on the event id): the new ones go
// into one metering log entry listing their ids. A repeated
// Idempotency-Key with the same body answers what it answered before.
func (s *Server) handleMetering(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	c, err := s.loadContract(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	claims, err := s.authorize(ctx, r, c.ContractID)
	if err != nil {
		return err
	}
	idem := r.Header.Get(contract.HeaderIdempotencyKey)
	if len(idem) > MaxIdempotencyKey {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "Idempotency-Key longer than %d bytes", MaxIdempotencyKey)
	}
	body, err := readBody(w, r, MaxBodySize)
	if err != nil {
		return err
	}
	jws := strings.TrimSpace(string(body))
	sum := sha256.Sum256([]byte(jws))
	bodyHash := hex.EncodeToString(sum[:])
	if idem != "" {
		if done, err := s.replayIdempotent(w, r, c.ContractID, idem, bodyHash); done || err != nil {
			return err
		}
	}
	key, err := s.sidecarJWK(ctx, claims.Confirm.JKT)
	if err != nil {
		return err
	}
	batch, err := verify.VerifyMeteringBatch(jws, key)
	if err != nil {
		if errors.Is(err, verify.ErrMalformed) && !errors.Is(err, verify.ErrAlgorithm) {
			return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "metering batch: %v", err)
		}
		return contract.Errorf(http.StatusForbidden, contract.CodeVerification, "metering batch: %v", err)
	}
	if batch.Sidecar != claims.Confirm.JKT {
		return contract.Errorf(http.StatusForbidden, contract.CodeForbidden, "batch is from sidecar %q, token is bound to %q", batch.Sidecar, claims.Confirm.JKT)
	}
	if batch.Contract != c.ContractID {
		return contract.Errorf(http.StatusForbidden, contract.CodeForbidden, "batch is for contract %q, not %q", batch.Contract, c.ContractID)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if idem != "" { // a concurrent retry may have landed while we verified
		if done, err := s.replayIdempotent(w, r, c.ContractID, idem, bodyHash); done || err != nil {
			return err
		}
	}
	ids := make([]string, len(batch.Events))
	for i, e := range batch.Events {
		ids[i] = e.ID
	}
	known, err := s.st.knownEvents(ctx, c.ContractID, ids)
	if err != nil {
		return err
	}
	rec := &appendRecord{IdemKey: idem, IdemBodyHash: bodyHash, Lease: claims.Lease}
	var accepted []string
	for _, e := range batch.Events {
		if !known[e.ID] {
			rec.Events = append(rec.Events, e)
			accepted = append(accepted, e.ID)
		}
	}
	resp := contract.MeteringResponse{Accepted: len(accepted), Duplicates: len(batch.Events) - len(accepted)}
	if len(accepted) == 0 {
		if idem != "" {
			b, _ := json.Marshal(resp)
			if err := s.st.putIdempotent(ctx, c.ContractID, idem, bodyHash, b); err != nil {
				return err
			}
		}
		writeJSON(w, http.StatusOK, resp)
		return nil
	}
	h, err := s.head(ctx, c.ContractID)
	if err != nil {
		return err
	}
	resp.Seq = h.size() + 1 // appendLocked assigns exactly this seq
	rec.IdemResponse, _ = json.Marshal(resp)
	if err := s.appendLocked(ctx, c, h, contract.EntryMetering, jws, accepted, rec); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// replayIdempotent answers a request whose Idempotency-Key was seen: the
// stored response for the same body, 409 for another body.
func (s *Server) replayIdempotent(w http.ResponseWriter, r *http.Request, contractID, key, bodyHash string) (bool, error) {
	h, resp, err := s.st.idempotent(r.Context(), contractID, key)
	if errors.Is(err, errNotFound) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	if h != bodyHash {
		return true, contract.Errorf(http.StatusConflict, contract.CodeConflict, "Idempotency-Key %q was used with another batch", key)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Idempotent-Replayed", "true")
	w.WriteHeader(http.StatusOK)
	w.Write(append(resp, '\n'))
	return true, nil
}

// handleTotals sums the events the registry counted, optionally for one
// job and one epoch.
func (s *Server) handleTotals(w http.ResponseWriter, r *http.Request) error {
	c, err := s.loadContract(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	epoch := int64(-1)
	if v := r.URL.Query().Get("epoch"); v != "" {
		if epoch, err = strconv.ParseInt(v, 10, 64); err != nil || epoch < 0 {
			return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "epoch=%q: want a non-negative integer", v)
		}
	}
	t, err := s.st.meteringTotals(r.Context(), c.ContractID, r.URL.Query().Get("job"), epoch)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, t)
	return nil
}
