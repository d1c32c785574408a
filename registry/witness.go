package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/witness"
)

// Witness is a C2SP tlog-witness the registry asks to cosign each new
// checkpoint of every log.
type Witness struct {
	// URL is the witness's submission prefix: the registry POSTs to
	// URL + "/add-checkpoint".
	URL string
	// VKey is the witness's cosignature/v1 verifier key; answers that do
	// not verify with it are dropped.
	VKey string
}

// Witness tuning.
const (
	// DefaultWitnessTimeout bounds one add-checkpoint round trip.
	DefaultWitnessTimeout = 10 * time.Second
	// witnessConcurrency bounds the add-checkpoint calls in flight across
	// all witnesses.
	witnessConcurrency = 4
	// cosignWait bounds how long GET checkpoint waits for the cosignatures
	// of a checkpoint just signed, from witnesses that answered last time.
	cosignWait         = 2 * time.Second
	witnessBaseBackoff = time.Second
	witnessMaxBackoff  = time.Minute
	maxWitnessAnswer   = 16 << 10
	logKeyWitness      = "witness"
)

// witnessClient is the registry's view of one witness: the logs waiting
// for its cosignature and the size it last cosigned for each.
type witnessClient struct {
	Witness
	v  note.Verifier
	id string // "<name>+<key hash>", its storage key

	mu      sync.Mutex
	pending map[string]bool
	sizes   map[string]uint64
	failing bool // the last call failed: readers do not wait for it
	wake    chan struct{}
}

// witnesses is the cosigning machinery: one background loop per witness,
// at most witnessConcurrency calls in flight.
type witnesses struct {
	ws     []*witnessClient
	st     witnessStore
	sem    chan struct{}
	client *http.Client

	// cosigned[contract] is closed when a cosignature of it is stored.
	mu       sync.Mutex
	cosigned map[string]chan struct{}
}

func (s *Server) initWitnesses(ctx context.Context) error {
	if len(s.cfg.Witnesses) == 0 {
		return nil
	}
	st, ok := s.st.(witnessStore)
	if !ok {
		return errors.New("witnesses need the SQLite store")
	}
	if err := st.initWitnessTables(ctx); err != nil {
		return fmt.Errorf("witnesses: %w", err)
	}
	timeout := s.cfg.WitnessTimeout
	if timeout <= 0 {
		timeout = DefaultWitnessTimeout
	}
	w := &witnesses{st: st, sem: make(chan struct{}, witnessConcurrency), cosigned: map[string]chan struct{}{}, client: &http.Client{
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
	for _, cfg := range s.cfg.Witnesses {
		v, err := fnote.NewVerifierForCosignatureV1(cfg.VKey)
		if err != nil {
			return fmt.Errorf("witness %s: key: %w", cfg.URL, err)
		}
		if !strings.HasPrefix(cfg.URL, "http://") && !strings.HasPrefix(cfg.URL, "https://") {
			return fmt.Errorf("witness %q: want an http(s) URL", cfg.URL)
		}
		cfg.URL = strings.TrimRight(cfg.URL, "/")
		w.ws = append(w.ws, &witnessClient{Witness: cfg, v: v, id: fmt.Sprintf("%s+%08x", v.Name(), v.KeyHash()),
			pending: map[string]bool{}, sizes: map[string]uint64{}, wake: make(chan struct{}, 1)})
	}
	s.wits = w
	return nil
}

// startWitnesses starts one loop per witness; each first asks for a
// cosignature of every log's current checkpoint.
func (s *Server) startWitnesses(ctx context.Context) {
	if s.wits == nil {
		return
	}
	for _, w := range s.wits.ws {
		s.wg.Add(1)
		go s.witnessLoop(ctx, w)
	}
}

// cosign queues a log's latest checkpoint for every witness. It never
// blocks: appends do not wait for witnesses.
func (s *Server) cosign(contractID string) {
	if s.wits == nil {
		return
	}
	for _, w := range s.wits.ws {
		w.queue(contractID, true)
	}
}

func (w *witnessClient) queue(contractID string, wake bool) {
	w.mu.Lock()
	w.pending[contractID] = true
	w.mu.Unlock()
	if wake {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

func (w *witnessClient) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	ids := make([]string, 0, len(w.pending))
	for id := range w.pending {
		ids = append(ids, id)
	}
	clear(w.pending)
	return ids
}

func (s *Server) witnessLoop(ctx context.Context, w *witnessClient) {
	defer s.wg.Done()
	if bodies, err := s.st.contracts(ctx); err == nil {
		for _, id := range contractIDs(bodies) {
			w.queue(id, true)
		}
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	attempt := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		case <-timer.C:
		}
		failed := false
		ids := w.take()
		for _, id := range ids {
			err := s.cosignWith(ctx, w, id)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				failed = true
				w.queue(id, false)
				s.logger.Warn("witness did not cosign", logKeyWitness, w.URL, logKeyContract, id, "attempt", attempt+1, logKeyErr, err)
			}
		}
		if len(ids) > 0 {
			// One log's success does not make a witness that failed for
			// another healthy: checkpoint reads wait only for healthy ones.
			w.mu.Lock()
			w.failing = failed
			w.mu.Unlock()
		}
		if failed {
			attempt++
			timer.Reset(contract.Backoff(attempt, witnessBaseBackoff, witnessMaxBackoff))
		} else {
			attempt = 0
		}
	}
}

func contractIDs(bodies [][]byte) []string {
	var ids []string
	for _, b := range bodies {
		var c struct {
			ID string `json:"contract_id"`
		}
		if err := json.Unmarshal(b, &c); err == nil && c.ID != "" {
			ids = append(ids, c.ID)
		}
	}
	return ids
}

// cosignWith asks one witness to cosign a log's latest checkpoint, with a
// consistency proof from the size it last cosigned; a 409 names that size
// and the call is made again from it.
func (s *Server) cosignWith(ctx context.Context, w *witnessClient, contractID string) error {
	c, err := s.loadContract(ctx, contractID)
	if err != nil {
		return err
	}
	raw, err := s.st.latestCheckpoint(ctx, contractID)
	if err != nil {
		return err
	}
	cpv, err := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	if err != nil {
		return err
	}
	cp, err := cpv.Parse(raw)
	if err != nil {
		return fmt.Errorf("%w: latest checkpoint: %v", errCorrupted, err)
	}
	w.mu.Lock()
	old, known := w.sizes[contractID]
	w.mu.Unlock()
	if !known {
		if old, err = s.wits.st.cosignedSize(ctx, contractID, w.id); err != nil {
			return err
		}
	}
	for range 3 {
		if old > cp.Size {
			return fmt.Errorf("the witness cosigned size %d, beyond the log's %d", old, cp.Size)
		}
		req := &witness.AddCheckpoint{Old: old, Checkpoint: raw}
		if old > 0 && old < cp.Size {
			if req.Proof, err = s.consistency(ctx, contractID, old, cp.Size); err != nil {
				return err
			}
		}
		status, body, err := s.wits.post(ctx, w, req.Marshal())
		if err != nil {
			return err
		}
		switch status {
		case http.StatusOK:
			return s.keepCosignature(ctx, w, contractID, cp.Size, raw, body)
		case http.StatusConflict:
			n, err := strconv.ParseUint(strings.TrimSpace(string(body)), 10, 64)
			if err != nil {
				return fmt.Errorf("witness answered 409 without a size: %q", body)
			}
			old = n
			w.mu.Lock()
			w.sizes[contractID] = n
			w.mu.Unlock()
		default:
			return fmt.Errorf("witness answered %d: %s", status, bytes.TrimSpace(body))
		}
	}
	return errors.New("witness keeps answering 409")
}

// keepCosignature verifies a witness's answer over the checkpoint and
// stores its line.
func (s *Server) keepCosignature(ctx context.Context, w *witnessClient, contractID string, size uint64, raw, answer []byte) error {
	n, err := note.Open(append(bytes.Clone(raw), answer...), note.VerifierList(w.v))
	if err != nil {
		return fmt.Errorf("witness answer does not verify: %w", err)
	}
	sig := n.Sigs[0]
	line := "— " + sig.Name + " " + sig.Base64 + "\n"
	if err := s.wits.st.putCosignature(ctx, contractID, w.id, size, n.Text, line); err != nil {
		return err
	}
	w.mu.Lock()
	w.sizes[contractID] = size
	w.mu.Unlock()
	s.wits.mu.Lock()
	if ch, ok := s.wits.cosigned[contractID]; ok {
		close(ch)
		delete(s.wits.cosigned, contractID)
	}
	s.wits.mu.Unlock()
	return nil
}

// cosignWaiter returns a channel closed at the next stored cosignature of
// a log.
func (ws *witnesses) cosignWaiter(contractID string) <-chan struct{} {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ch, ok := ws.cosigned[contractID]
	if !ok {
		ch = make(chan struct{})
		ws.cosigned[contractID] = ch
	}
	return ch
}

// cosignedCheckpoint is the latest checkpoint with its witnesses'
// cosignatures. A checkpoint signed a moment ago is usually not cosigned
// yet: it waits, up to cosignWait, for the witnesses that answered their
// last call, so that readers requiring them are not refused for a few
// milliseconds after every append. A failing witness is not waited for.
func (s *Server) cosignedCheckpoint(ctx context.Context, contractID string) ([]byte, error) {
	var deadline <-chan time.Time
	for {
		var wait <-chan struct{}
		if s.wits != nil {
			wait = s.wits.cosignWaiter(contractID)
		}
		raw, err := s.st.latestCheckpoint(ctx, contractID)
		if err != nil {
			return nil, err
		}
		out, missing, err := s.cosignatures(ctx, contractID, raw)
		if err != nil || missing == 0 {
			return out, err
		}
		if deadline == nil {
			// Not asked yet (a log created since the witnesses' last
			// pass): ask now.
			s.cosign(contractID)
			t := time.NewTimer(cosignWait)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-wait:
		case <-deadline:
			return out, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (ws *witnesses) post(ctx context.Context, w *witnessClient, body []byte) (int, []byte, error) {
	select {
	case ws.sem <- struct{}{}:
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
	defer func() { <-ws.sem }()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL+"/add-checkpoint", bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	resp, err := ws.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxWitnessAnswer))
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, b, nil
}

// withCosignatures appends to a checkpoint note the stored witness
// cosignatures of its body (the same body is re-signed every interval,
// so cosignatures of an earlier signing still apply).
func (s *Server) withCosignatures(ctx context.Context, contractID string, raw []byte) ([]byte, error) {
	out, _, err := s.cosignatures(ctx, contractID, raw)
	return out, err
}

// cosignatures is withCosignatures, also counting the witnesses in good
// standing whose cosignature of this body is missing.
func (s *Server) cosignatures(ctx context.Context, contractID string, raw []byte) ([]byte, int, error) {
	if s.wits == nil {
		return raw, 0, nil
	}
	i := bytes.Index(raw, []byte("\n\n"))
	if i < 0 {
		return nil, 0, fmt.Errorf("%w: checkpoint note without signatures", errCorrupted)
	}
	body := string(raw[:i+1])
	rows, err := s.wits.st.cosignatures(ctx, contractID)
	if err != nil {
		return nil, 0, err
	}
	out := bytes.Clone(raw)
	have := map[string]bool{}
	for _, r := range rows {
		if r.Body == body && s.wits.has(r.Witness) {
			out = append(out, r.Line...)
			have[r.Witness] = true
		}
	}
	missing := 0
	for _, w := range s.wits.ws {
		w.mu.Lock()
		failing := w.failing
		w.mu.Unlock()
		if !have[w.id] && !failing {
			missing++
		}
	}
	return out, missing, nil
}

func (ws *witnesses) has(id string) bool {
	for _, w := range ws.ws {
		if w.id == id {
			return true
		}
	}
	return false
}
