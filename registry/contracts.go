package registry

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// Origin returns the log origin of a contract on a registry named name.
func Origin(name, contractID string) string { return name + "/log/" + contractID }

func (s *Server) handleCreateContract(w http.ResponseWriter, r *http.Request) error {
	if err := s.checkAdmin(r); err != nil {
		return err
	}
	var c contract.Contract
	if err := decodeBody(w, r, MaxBodySize, &c); err != nil {
		return err
	}
	if err := checkTerms(&c); err != nil {
		return err
	}
	if c.Origin.Mode == "" {
		c.Origin.Mode = contract.ModeMarketplace
	}
	c.ProvenanceEndpoint = s.baseURL(r) + "/provenance/" + c.ContractID
	c.Log = contract.LogInfo{Origin: Origin(s.cfg.Name, c.ContractID), CheckpointKey: s.cpVKey}
	c.CreatedAt = s.now().UTC().Truncate(time.Second)
	c.TermsSeq = 0
	body, err := json.Marshal(&c)
	if err != nil {
		return err
	}
	var etag string
	if len(body) > maxContractSize {
		// Its terms must fit entry 1 of its log, which is appended after the
		// contract is stored: refuse it before anything is written.
		return contract.Errorf(http.StatusRequestEntityTooLarge, contract.CodeTooLarge,
			"the contract is %d bytes, over the limit of %d bytes (its terms must fit one log entry)", len(body), maxContractSize)
	}
	err = s.withLog(r.Context(), c.ContractID, func(ctx context.Context) error {
		if err := s.st.createContract(ctx, c.ContractID, body, etagOf(body), c.CreatedAt); err != nil {
			if err == errExists {
				return contract.Errorf(http.StatusConflict, contract.CodeConflict, "contract %q already exists", c.ContractID)
			}
			return err
		}
		h, err := s.head(ctx, c.ContractID)
		if err != nil {
			return err
		}
		note, err := s.cpSigner.Sign(c.Log.Origin, 0, h.root())
		if err != nil {
			return err
		}
		if err := s.st.addCheckpoint(ctx, c.ContractID, 0, s.now(), note); err != nil {
			return err
		}
		// Entry 1: the first version of the terms.
		body, etag, err = s.appendTermsLocked(ctx, &c, h, c.CreatedAt)
		return err
	})
	if err != nil {
		return err
	}
	s.logger.Info("contract created", logKeyContract, c.ContractID)
	w.Header().Set("ETag", etag)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	w.Write(body)
	return nil
}

// maxContractSize bounds a contract document so that its terms, signed
// and escaped into a log entry, stay well inside MaxAppendEntrySize.
const maxContractSize = contract.MaxAppendEntrySize / 2

// checkTerms validates a contract's terms as given by its provider.
func checkTerms(c *contract.Contract) error {
	if err := c.Validate(); err != nil {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "invalid contract: %v", err)
	}
	for _, ct := range c.Contributors {
		if ct.JWKS == nil {
			continue
		}
		for i := range ct.JWKS.Keys {
			if err := verify.CheckKey(&ct.JWKS.Keys[i], verify.KeyAlgorithm(&ct.JWKS.Keys[i])); err != nil {
				return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "contributor %q: %v", ct.ID, err)
			}
		}
	}
	for _, l := range c.Licensees {
		if l.JWKS == nil {
			continue
		}
		for i := range l.JWKS.Keys {
			if err := verify.CheckKey(&l.JWKS.Keys[i], verify.KeyAlgorithm(&l.JWKS.Keys[i])); err != nil {
				return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "licensee %q: %v", l.ID, err)
			}
		}
	}
	return nil
}

// appendTermsLocked appends a version of c's terms (signed by the log's
// key) to its log, and makes it the document GET /contracts/{id} serves.
// The caller is in withLog; h is the log's head.
func (s *Server) appendTermsLocked(ctx context.Context, c *contract.Contract, h *head, effective time.Time) ([]byte, string, error) {
	terms := *c
	terms.TermsSeq = 0
	signed, err := s.cpSigner.SignTerms(&contract.TermsVersion{Contract: c.ContractID, EffectiveFrom: effective.UTC(), Terms: terms})
	if err != nil {
		return nil, "", err
	}
	served := terms
	served.TermsSeq = h.size() + 1
	body, err := json.Marshal(&served)
	if err != nil {
		return nil, "", err
	}
	rec := &appendRecord{ContractBody: body, ContractETag: etagOf(body)}
	if err := s.appendLocked(ctx, c, h, contract.EntryContract, signed, nil, rec); err != nil {
		return nil, "", err
	}
	return body, rec.ContractETag, nil
}

// handleUpdateContract appends a new version of a contract's terms (admin).
// The log (origin, checkpoint key), the provenance endpoint and the
// creation time are the registry's and do not change.
func (s *Server) handleUpdateContract(w http.ResponseWriter, r *http.Request) error {
	if err := s.checkAdmin(r); err != nil {
		return err
	}
	var u contract.ContractUpdate
	if err := decodeBody(w, r, MaxBodySize, &u); err != nil {
		return err
	}
	id := r.PathValue("id")
	var (
		body []byte
		etag string
		seq  uint64
	)
	err := s.withLog(r.Context(), id, func(ctx context.Context) error {
		cur, err := s.loadContract(ctx, id)
		if err != nil {
			return err
		}
		c := u.Terms
		if c.ContractID != id {
			return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "the terms are of contract %q, not %q", c.ContractID, id)
		}
		if (c.Log != contract.LogInfo{}) && c.Log != cur.Log {
			return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "a contract's log (origin and checkpoint key) cannot change")
		}
		if err := checkTerms(&c); err != nil {
			return err
		}
		if c.Origin.Mode == "" {
			c.Origin.Mode = contract.ModeMarketplace
		}
		c.Log, c.ProvenanceEndpoint, c.CreatedAt = cur.Log, cur.ProvenanceEndpoint, cur.CreatedAt
		now := s.now().UTC()
		eff := u.EffectiveFrom
		switch {
		case eff.IsZero():
			eff = now
		case eff.Before(now.Add(-time.Minute)):
			return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "effective_from %s is in the past: terms cannot change what was billed", eff.Format(time.RFC3339))
		case eff.After(now.Add(time.Minute)):
			// Tokens, presigning and metering checks here use the latest
			// terms; scheduled terms would make them disagree with sidecars.
			return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "effective_from %s is in the future: this registry applies new terms at once", eff.Format(time.RFC3339))
		}
		h, err := s.head(ctx, id)
		if err != nil {
			return err
		}
		seq = h.size() + 1
		body, etag, err = s.appendTermsLocked(ctx, &c, h, eff)
		return err
	})
	if err != nil {
		return err
	}
	s.logger.Info("contract terms updated", logKeyContract, id, logKeySeq, seq)
	w.Header().Set("ETag", etag)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	w.Write(body)
	return nil
}

// handleContractVersions lists the log entries that hold a contract's
// terms, oldest first. Each verifies offline with the contract's
// checkpoint key; the entries verify against the log's checkpoints.
func (s *Server) handleContractVersions(w http.ResponseWriter, r *http.Request) error {
	c, err := s.loadContract(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	bodies, err := s.st.termsEntries(r.Context(), c.ContractID)
	if err != nil {
		return err
	}
	out := []contract.WireEntry{}
	for _, b := range bodies {
		e, err := contract.DecodeEntry(b)
		if err != nil {
			return fmt.Errorf("%w: %v", errCorrupted, err)
		}
		out = append(out, contract.WireEntry{Seq: e.Seq, Entry: b})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) checkAdmin(r *http.Request) error {
	if s.cfg.AdminToken == "" {
		return contract.Errorf(http.StatusForbidden, contract.CodeForbidden, "contract creation is disabled (no admin token configured)")
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.AdminToken)) != 1 {
		return contract.Errorf(http.StatusUnauthorized, contract.CodeUnauthorized, "admin bearer token required")
	}
	return nil
}

func etagOf(body []byte) string {
	h := sha256.Sum256(body)
	return `"` + hex.EncodeToString(h[:16]) + `"`
}

func (s *Server) handleGetContract(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := contract.ValidateID(id); err != nil {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "contract id: %v", err)
	}
	body, etag, err := s.st.contract(r.Context(), id)
	if err == errNotFound {
		return contract.Errorf(http.StatusNotFound, contract.CodeNotFound, "no contract %q", id)
	}
	if err != nil {
		return err
	}
	w.Header().Set("ETag", etag)
	w.Header().Set("Cache-Control", "public, max-age=60")
	if inm := r.Header.Get("If-None-Match"); inm != "" && etagMatch(inm, etag) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
	return nil
}

func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

// contributorKeys returns a contributor's key set: inline, or fetched from
// its jwks_uri (cached for a minute).
func (s *Server) contributorKeys(ctx context.Context, ct *contract.Contributor) (*jose.JSONWebKeySet, error) {
	if ct.JWKS != nil && len(ct.JWKS.Keys) > 0 {
		return ct.JWKS, nil
	}
	return s.fetchJWKS(ctx, ct.JWKSURI)
}

type cachedJWKS struct {
	set     *jose.JSONWebKeySet
	fetched time.Time
}

const jwksCacheTTL = time.Minute

func (s *Server) fetchJWKS(ctx context.Context, uri string) (*jose.JSONWebKeySet, error) {
	s.jwksMu.Lock()
	c, ok := s.jwksCache[uri]
	s.jwksMu.Unlock()
	if ok && s.now().Sub(c.fetched) < jwksCacheTTL {
		return c.set, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, contract.Errorf(http.StatusBadGateway, contract.CodeUnavailable, "fetch contributor keys: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, contract.Errorf(http.StatusBadGateway, contract.CodeUnavailable, "fetch contributor keys %s: status %d", uri, resp.StatusCode)
	}
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(io.LimitReader(resp.Body, MaxBodySize)).Decode(&set); err != nil {
		return nil, contract.Errorf(http.StatusBadGateway, contract.CodeUnavailable, "contributor keys %s: %v", uri, err)
	}
	s.jwksMu.Lock()
	s.jwksCache[uri] = cachedJWKS{set: &set, fetched: s.now()}
	s.jwksMu.Unlock()
	return &set, nil
}

// handleContributorJWKS serves the union of the inline keys that contracts
// list for a contributor, or redirects to its jwks_uri.
func (s *Server) handleContributorJWKS(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	bodies, err := s.st.contracts(r.Context())
	if err != nil {
		return err
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	seen := map[string]bool{}
	uri := ""
	found := false
	for _, b := range bodies {
		var c contract.Contract
		if err := json.Unmarshal(b, &c); err != nil {
			return fmt.Errorf("%w: %v", errCorrupted, err)
		}
		ct := c.Contributor(id)
		if ct == nil {
			continue
		}
		found = true
		if ct.JWKSURI != "" {
			uri = ct.JWKSURI
		}
		if ct.JWKS == nil {
			continue
		}
		for _, k := range ct.JWKS.Keys {
			tp, err := verify.Thumbprint(&k)
			if err != nil || seen[k.KeyID+"/"+tp] {
				continue
			}
			seen[k.KeyID+"/"+tp] = true
			set.Keys = append(set.Keys, k)
		}
	}
	if !found {
		return contract.Errorf(http.StatusNotFound, contract.CodeNotFound, "no contributor %q", id)
	}
	if len(set.Keys) == 0 && uri != "" {
		http.Redirect(w, r, uri, http.StatusFound)
		return nil
	}
	b, err := json.Marshal(set)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", contract.JWKSMediaType)
	w.Header().Set("Cache-Control", "public, max-age=60")
	w.Write(b)
	return nil
}
