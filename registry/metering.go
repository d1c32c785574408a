package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// MaxIdempotencyKey bounds the Idempotency-Key header.
const MaxIdempotencyKey = 256

// handleMetering ingests a sidecar-signed metering batch. The token and
// its proof authorise the sidecar; the batch must be signed by the key the
// token is bound to, and that key must be enrolled for the contract by a
// licensee, to whom the events are attributed. Every event's amounts are
// checked against the contract's price (contract.CheckEventAmounts), and
// the contract's sums must stay within int64; a batch that fails either is
// refused whole. Events are counted once per sender, whatever batch they
// arrive in (a durable unique constraint on contract, sender and event
// id), so that no sender can claim another's ids: the new ones go into one
// metering log entry listing their ids. A repeated Idempotency-Key of the
// same sender with the same body answers what it answered before. An
// aggregate batch (sums and the root of the sender's ledger rows it
// covers) is checked and counted whole by ingestAggregate.
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
	sender := claims.Confirm.JKT
	licensee, err := s.meteringLicensee(ctx, c, sender)
	if err != nil {
		return err
	}
	idem := r.Header.Get(contract.HeaderIdempotencyKey)
	if len(idem) > MaxIdempotencyKey {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "Idempotency-Key longer than %d bytes", MaxIdempotencyKey)
	}
	if idem != "" {
		// Scoped to the sender: a key another sender used is not this one's.
		// A thumbprint is base64url, so the space cannot be part of it.
		idem = sender + " " + idem
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
	key, err := s.sidecarJWK(ctx, sender)
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
	if batch.Sidecar != sender {
		return contract.Errorf(http.StatusForbidden, contract.CodeForbidden, "batch is from sidecar %q, token is bound to %q", batch.Sidecar, sender)
	}
	if batch.Contract != c.ContractID {
		return contract.Errorf(http.StatusForbidden, contract.CodeForbidden, "batch is for contract %q, not %q", batch.Contract, c.ContractID)
	}
	if batch.Aggregated() {
		return s.ingestAggregate(w, r, c, &meteringInput{batch: batch, jws: jws, sender: sender, licensee: licensee,
			lease: claims.Lease, idem: idem, bodyHash: bodyHash})
	}
	var batchSums contract.Sums
	prices := termsPrices{c: c}
	for i := range batch.Events {
		e := &batch.Events[i]
		p, err := prices.at(ctx, s, e)
		if err != nil {
			return err
		}
		if err := contract.CheckEventAmounts(e, p); err != nil {
			return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "metering batch refused: %v", err)
		}
		if !batchSums.Add(e.Sums()) {
			return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "metering batch refused: its sums overflow")
		}
	}

	var (
		replay []byte // the stored answer to a retry that landed meanwhile
		resp   contract.MeteringResponse
	)
	err = s.withLog(ctx, c.ContractID, func(ctx context.Context) error {
		if idem != "" { // a concurrent retry may have landed while we verified
			var err error
			if replay, err = s.idempotentAnswer(ctx, c.ContractID, idem, bodyHash); replay != nil || err != nil {
				return err
			}
		}
		ids := make([]string, len(batch.Events))
		for i, e := range batch.Events {
			ids[i] = e.ID
		}
		known, err := s.st.knownEvents(ctx, c.ContractID, sender, ids)
		if err != nil {
			return err
		}
		rec := &appendRecord{Sender: sender, Licensee: licensee, IdemKey: idem, IdemBodyHash: bodyHash, Lease: claims.Lease}
		resp = contract.MeteringResponse{Licensee: licensee}
		var accepted []string
		for _, e := range batch.Events {
			if known[e.ID] {
				resp.DuplicateIDs = append(resp.DuplicateIDs, e.ID)
				continue
			}
			rec.Events = append(rec.Events, e)
			accepted = append(accepted, e.ID)
			resp.Counted.Add(e.Sums()) // within batchSums, which fit
		}
		resp.Accepted, resp.Duplicates = len(accepted), len(resp.DuplicateIDs)
		if len(accepted) == 0 {
			if idem != "" {
				b, _ := json.Marshal(resp)
				return s.st.putIdempotent(ctx, c.ContractID, idem, bodyHash, b)
			}
			return nil
		}
		total, err := s.st.meteringSums(ctx, c.ContractID)
		if err != nil {
			return err
		}
		if !total.Add(resp.Counted) {
			return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest,
				"metering batch refused: it would make the contract's metering totals overflow int64")
		}
		h, err := s.head(ctx, c.ContractID)
		if err != nil {
			return err
		}
		resp.Seq = h.size() + 1 // appendLocked assigns exactly this seq
		rec.Metering = &resp    // appendLocked adds the receipt and stores the answer
		return s.appendLocked(ctx, c, h, contract.EntryMetering, jws, accepted, rec)
	})
	if err != nil {
		return err
	}
	if replay != nil {
		writeReplay(w, replay)
		return nil
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// meteringInput is a verified metering batch and what came with it.
type meteringInput struct {
	batch *contract.MeteringBatch
	jws   string
	// sender is the sidecar key thumbprint the token is bound to (and that
	// signed the batch), licensee the one that enrolled it, lease the
	// token's quota lease.
	sender, licensee, lease string
	idem, bodyHash          string
}

// meteringLicensee is the licensee whose enrolment lets sender send
// metering for c: 403 when no unexpired enrolment does. A contract that
// names no licensees takes metering from any token holder, attributed to
// no licensee ("").
func (s *Server) meteringLicensee(ctx context.Context, c *contract.Contract, sender string) (string, error) {
	licensee, expires, err := s.st.enrolment(ctx, c.ContractID, sender)
	switch {
	case errors.Is(err, errNotFound):
		if len(c.Licensees) == 0 {
			return "", nil
		}
		return "", contract.Errorf(http.StatusForbidden, contract.CodeForbidden,
			"sidecar %s is not enrolled for contract %q: only a sidecar its licensee enrolled may send metering", sender, c.ContractID)
	case err != nil:
		return "", err
	case !s.now().Before(expires):
		return "", contract.Errorf(http.StatusForbidden, contract.CodeForbidden,
			"the enrolment of sidecar %s for contract %q expired at %s", sender, c.ContractID, expires.UTC().Format(time.RFC3339))
	case len(c.Licensees) > 0 && c.Licensee(licensee) == nil:
		return "", contract.Errorf(http.StatusForbidden, contract.CodeForbidden,
			"sidecar %s is enrolled by %q, not a licensee of contract %q", sender, licensee, c.ContractID)
	}
	return licensee, nil
}

// replayIdempotent answers a request whose Idempotency-Key was seen: the
// stored response for the same body, 409 for another body.
func (s *Server) replayIdempotent(w http.ResponseWriter, r *http.Request, contractID, key, bodyHash string) (bool, error) {
	resp, err := s.idempotentAnswer(r.Context(), contractID, key, bodyHash)
	if resp == nil || err != nil {
		return err != nil, err
	}
	writeReplay(w, resp)
	return true, nil
}

// idempotentAnswer is the stored answer to a request whose
// Idempotency-Key was seen with the same body (nil: the key is new); 409
// for another body.
func (s *Server) idempotentAnswer(ctx context.Context, contractID, key, bodyHash string) ([]byte, error) {
	h, resp, err := s.st.idempotent(ctx, contractID, key)
	if errors.Is(err, errNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if h != bodyHash {
		return nil, contract.Errorf(http.StatusConflict, contract.CodeConflict, "Idempotency-Key %q was used with another batch", key)
	}
	return s.withReceiptEntry(ctx, contractID, resp)
}

func writeReplay(w http.ResponseWriter, resp []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Idempotent-Replayed", "true")
	w.WriteHeader(http.StatusOK)
	w.Write(append(resp, '\n'))
}

// withReceiptEntry puts the log entry back into a stored answer's
// receipt (stored without it).
func (s *Server) withReceiptEntry(ctx context.Context, contractID string, stored []byte) ([]byte, error) {
	var resp contract.MeteringResponse
	if err := json.Unmarshal(stored, &resp); err != nil {
		return nil, fmt.Errorf("%w: stored answer: %v", errCorrupted, err)
	}
	if resp.Receipt == nil || resp.Receipt.Entry != nil {
		return stored, nil
	}
	es, err := s.st.entries(ctx, contractID, resp.Seq-1, 1, s.cfg.MaxPageBytes)
	if err != nil {
		return nil, err
	}
	if len(es) != 1 || es[0].Seq != resp.Seq {
		return nil, fmt.Errorf("%w: entry %d of a stored answer is gone", errCorrupted, resp.Seq)
	}
	resp.Receipt.Entry = es[0].Entry
	return json.Marshal(resp)
}

// handleTotals sums the events the registry counted, optionally for one
// job, one epoch and one licensee, with the detail by outcome and by
// licensee, and the objects presigned beside them.
func (s *Server) handleTotals(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	c, err := s.loadContract(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	q := r.URL.Query()
	f := contract.TotalsFilter{Job: q.Get("job"), Epoch: -1, Licensee: q.Get("licensee")}
	if v := q.Get("epoch"); v != "" {
		if f.Epoch, err = strconv.ParseInt(v, 10, 64); err != nil || f.Epoch < 0 {
			return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "epoch=%q: want a non-negative integer", v)
		}
	}
	t, err := s.st.meteringTotals(ctx, c.ContractID, f)
	if err != nil {
		return err
	}
	// Presigned fetches are per licensee, not per job or epoch.
	if t.PresignedObjects, t.PresignedBytes, err = s.st.presignedTotals(ctx, c.ContractID, f.Licensee); err != nil {
		return err
	}
	for id, lt := range t.Licensees {
		if id == "" {
			continue // events of senders no licensee enrolled
		}
		if lt.PresignedObjects, lt.PresignedBytes, err = s.st.presignedTotals(ctx, c.ContractID, id); err != nil {
			return err
		}
		t.Licensees[id] = lt
	}
	writeJSON(w, http.StatusOK, t)
	return nil
}

// termsPrices finds the pricing of the terms version an event names, so
// that rows priced before a contract update and synced after it are
// checked against the terms they were billed under. A version counts only
// for what happened while it was in force (within a clock skew either
// way): a sender can pick neither older, cheaper terms for later reads nor
// newer, cheaper terms for earlier ones. What names no version (terms_seq
// 0: rows written before terms were logged) is priced under the version in
// force at its time, not under the latest.
type termsPrices struct {
	c    *contract.Contract
	byAt map[uint64]termsSpan
	seqs []uint64 // byAt's keys in log order
}

type termsSpan struct {
	pricing contract.Pricing
	from    time.Time // effective_from
	until   time.Time // the next version's effective_from; zero: none
}

// termsSkew is how far an event's time may pass either end of its terms.
const termsSkew = 5 * time.Minute

// at is the pricing of the terms entry an event names for that event.
func (t *termsPrices) at(ctx context.Context, s *Server, e *contract.MeteringEvent) (contract.Pricing, error) {
	return t.atSeq(ctx, s, e.TermsSeq, e.Time, e.Time, fmt.Sprintf("event %q", e.ID))
}

// atSeq is the pricing of the terms entry seq (0: the version in force at
// last) for what happened from first to last (an event, or the rows of an
// aggregate), named what in errors. A seq that is no terms entry of the
// log, terms superseded before last or not yet in force at first (the
// first version covers all before it) is a 400.
func (t *termsPrices) atSeq(ctx context.Context, s *Server, seq uint64, first, last time.Time, what string) (contract.Pricing, error) {
	if t.byAt == nil {
		if err := t.load(ctx, s); err != nil {
			return contract.Pricing{}, err
		}
	}
	if last.IsZero() {
		// What is not dated is priced as of now: undated rows cannot
		// pick superseded terms.
		last = time.Now()
	}
	if first.IsZero() || first.After(last) {
		first = last
	}
	if len(t.seqs) == 0 {
		// A log from before terms were logged: the contract's own.
		if seq != 0 && seq != t.c.TermsSeq {
			return contract.Pricing{}, contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest,
				"metering batch refused: %s: terms_seq %d is not a terms entry of contract %q", what, seq, t.c.ContractID)
		}
		return t.c.Pricing, nil
	}
	if seq == 0 {
		seq = t.seqs[0]
		for _, v := range t.seqs[1:] {
			if !last.Before(t.byAt[v].from) {
				seq = v
			}
		}
	}
	span, ok := t.byAt[seq]
	if !ok {
		return contract.Pricing{}, contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest,
			"metering batch refused: %s: terms_seq %d is not a terms entry of contract %q", what, seq, t.c.ContractID)
	}
	if !span.until.IsZero() && last.After(span.until.Add(termsSkew)) {
		return contract.Pricing{}, contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest,
			"metering batch refused: %s at %s is priced under terms %d, superseded at %s", what,
			last.UTC().Format(time.RFC3339), seq, span.until.UTC().Format(time.RFC3339))
	}
	if seq != t.seqs[0] && first.Add(termsSkew).Before(span.from) {
		return contract.Pricing{}, contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest,
			"metering batch refused: %s from %s is priced under terms %d, in force only from %s", what,
			first.UTC().Format(time.RFC3339), seq, span.from.UTC().Format(time.RFC3339))
	}
	return span.pricing, nil
}

// load reads every terms version of the log, checked with the log's key.
func (t *termsPrices) load(ctx context.Context, s *Server) error {
	// Terms entries never change once logged: a contract's history is read
	// and its signatures checked once per latest version (another
	// replica's update moves TermsSeq, and so reloads), not per batch.
	if h, ok := s.termsHistories.Load(t.c.ContractID); ok && h.(*termsHistory).latest == t.c.TermsSeq {
		t.byAt, t.seqs = h.(*termsHistory).byAt, h.(*termsHistory).seqs
		return nil
	}
	bodies, err := s.st.termsEntries(ctx, t.c.ContractID)
	if err != nil {
		return err
	}
	cpv, err := verify.NewCheckpointVerifier(t.c.Log.Origin, t.c.Log.CheckpointKey)
	if err != nil {
		return err
	}
	byAt := map[uint64]termsSpan{}
	var seqs []uint64
	var prev uint64
	for _, b := range bodies {
		e, err := contract.DecodeEntry(b)
		if err != nil {
			return fmt.Errorf("%w: %v", errCorrupted, err)
		}
		v, err := cpv.OpenTerms(e.Note)
		if err != nil {
			return fmt.Errorf("%w: terms entry %d: %v", errCorrupted, e.Seq, err)
		}
		if prev != 0 {
			span := byAt[prev]
			span.until = v.EffectiveFrom
			byAt[prev] = span
		}
		byAt[e.Seq] = termsSpan{pricing: v.Terms.Pricing, from: v.EffectiveFrom}
		seqs = append(seqs, e.Seq)
		prev = e.Seq
	}
	t.byAt, t.seqs = byAt, seqs
	if len(seqs) == 0 || seqs[len(seqs)-1] == t.c.TermsSeq {
		s.termsHistories.Store(t.c.ContractID, &termsHistory{latest: t.c.TermsSeq, byAt: byAt, seqs: seqs})
	}
	return nil
}

// termsHistory is a contract's checked terms versions up to latest, shared
// read-only by the batches priced under them.
type termsHistory struct {
	latest uint64
	byAt   map[uint64]termsSpan
	seqs   []uint64
}
