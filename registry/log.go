package registry

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// streamPoll is how often a live stream reads the log for entries that
// another replica appended, when replicas share the database.
const streamPoll = time.Second

var rangeFactory = compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}

// head is a log's Merkle state: the compact range over all entries and the
// last entry's leaf hash. Heads are only touched under Server.mu.
type head struct {
	rng  *compact.Range
	last []byte
}

func (h *head) size() uint64 { return h.rng.End() }

func (h *head) root() []byte {
	if h.size() == 0 {
		return rfc6962.DefaultHasher.EmptyRoot()
	}
	root, err := h.rng.GetRootHash(nil)
	if err != nil {
		panic(err) // a non-empty range from 0 always has a root
	}
	return root
}

// withLog runs fn as the one writer of a contract's log: it holds the
// log's lock in this process (logLock) and the store's log lock across the
// replicas that share the database, and fn's store calls (made with the
// context it is given) run in one transaction. Appends become visible
// together, when it commits; then live streams are woken and witnesses
// asked. A head cached by a failed fn is dropped, never reused.
func (s *Server) withLog(ctx context.Context, contractID string, fn func(ctx context.Context) error) error {
	l := s.logLock(contractID)
	l.Lock()
	defer l.Unlock()
	before := s.cachedHead(contractID)
	if err := s.st.inLogTx(ctx, contractID, fn); err != nil {
		s.setHead(contractID, nil)
		return err
	}
	if s.cachedHead(contractID) != before { // appended, or found appended by another replica
		s.wake(contractID)
		s.cosign(contractID)
	}
	return nil
}

// logLock is the in-process lock of a contract's log. On SQLite, where a
// write transaction locks the whole database, it is one lock for every
// log (writers queue here rather than in SQLite's busy loop); on
// PostgreSQL one per log, so that appends to different logs run at once.
func (s *Server) logLock(contractID string) *sync.Mutex {
	if s.pollEvery == 0 {
		return &s.allLogs
	}
	s.headsMu.Lock()
	defer s.headsMu.Unlock()
	l, ok := s.logLocks[contractID]
	if !ok {
		l = &sync.Mutex{}
		s.logLocks[contractID] = l
	}
	return l
}

func (s *Server) cachedHead(contractID string) *head {
	s.headsMu.Lock()
	defer s.headsMu.Unlock()
	return s.heads[contractID]
}

// setHead caches a log's head (nil: drops it). Callers hold the log's lock.
func (s *Server) setHead(contractID string, h *head) {
	s.headsMu.Lock()
	defer s.headsMu.Unlock()
	if h == nil {
		delete(s.heads, contractID)
		return
	}
	s.heads[contractID] = h
}

// head returns the Merkle state of a log: the cached one while the log's
// size (read in the log transaction) is the cached size, else loaded from
// the stored nodes, since another replica may have appended. Callers are
// in withLog.
func (s *Server) head(ctx context.Context, contractID string) (*head, error) {
	size, err := s.st.logSize(ctx, contractID)
	if err != nil {
		return nil, err
	}
	if h := s.cachedHead(contractID); h != nil && h.size() == size {
		return h, nil
	}
	h := &head{last: contract.ZeroHash}
	if size == 0 {
		h.rng = rangeFactory.NewEmptyRange(0)
	} else {
		hashes, err := s.st.nodes(ctx, contractID, compact.RangeNodes(0, size, nil))
		if err != nil {
			return nil, err
		}
		if h.rng, err = rangeFactory.NewRange(0, size, hashes); err != nil {
			return nil, fmt.Errorf("%w: %v", errCorrupted, err)
		}
		last, err := s.st.nodes(ctx, contractID, []compact.NodeID{compact.NewNodeID(0, size-1)})
		if err != nil {
			return nil, err
		}
		h.last = last[0]
	}
	s.setHead(contractID, h)
	return h, nil
}

// appendLocked builds the entry for rec (kind, jws, accepted already set by
// the caller, who is in withLog), computes its Merkle nodes and a checkpoint
// over the new size, and stores all of it in one transaction.
func (s *Server) appendLocked(ctx context.Context, c *contract.Contract, h *head, kind contract.EntryKind, jws string, accepted []string, rec *appendRecord) error {
	rec.Seq = h.size() + 1
	rec.Time = s.now().UTC()
	e := &contract.Entry{
		V: contract.EntryVersion, Seq: rec.Seq, PrevHash: hex.EncodeToString(h.last), Time: rec.Time,
		Contract: c.ContractID, Kind: kind, JWS: jws, Accepted: accepted,
	}
	if kind == contract.EntryContract {
		// jws is the signed terms note.
		e.JWS, e.Note = "", jws
	}
	raw, err := contract.EncodeEntry(e)
	if err != nil {
		return contract.Errorf(http.StatusRequestEntityTooLarge, contract.CodeTooLarge, "%v", err)
	}
	if len(raw) > contract.MaxAppendEntrySize {
		return contract.Errorf(http.StatusRequestEntityTooLarge, contract.CodeTooLarge,
			"the log entry would be %d bytes, over the limit of %d bytes", len(raw), contract.MaxAppendEntrySize)
	}
	rec.Entry = raw
	leaf := contract.LeafHash(raw)
	// The new leaf's audit path: the compact range before it, taken before
	// Append reuses the range's storage.
	left := cloneHashes(h.rng.Hashes())
	rng, err := rangeFactory.NewRange(0, h.size(), cloneHashes(h.rng.Hashes()))
	if err != nil {
		return err
	}
	rec.Nodes = map[compact.NodeID][]byte{}
	if err := rng.Append(leaf, func(id compact.NodeID, hash []byte) { rec.Nodes[id] = bytes.Clone(hash) }); err != nil {
		return err
	}
	next := &head{rng: rng, last: leaf}
	if rec.CheckpointNote, err = s.cpSigner.Sign(c.Log.Origin, next.size(), next.root()); err != nil {
		return err
	}
	if rec.Metering != nil {
		if err := meteringReceipt(rec, h.size(), left, leaf, next.root()); err != nil {
			return err
		}
	}
	if err := s.st.appendEntry(ctx, c.ContractID, rec); err != nil {
		return err
	}
	// withLog drops it if the transaction does not commit.
	s.setHead(c.ContractID, next)
	s.metrics.appends.WithLabelValues(string(kind)).Inc()
	s.logger.Debug("appended", logKeyContract, c.ContractID, logKeySeq, rec.Seq, logKeyKind, string(kind))
	return nil
}

// meteringReceipt puts the receipt of the metering entry rec appends into
// its answer (and the answer into the stored idempotent response): the
// entry, its leaf, the checkpoint just signed and the inclusion proof at
// that size. The new leaf is the last one, so its audit path is the
// compact range of the leaves before it, smallest subtree first.
func meteringReceipt(rec *appendRecord, index uint64, left [][]byte, leaf, root []byte) error {
	path := make([][]byte, 0, len(left))
	for i := len(left) - 1; i >= 0; i-- {
		path = append(path, left[i])
	}
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, index, index+1, leaf, path, root); err != nil {
		return fmt.Errorf("%w: receipt of entry %d: %v", errCorrupted, rec.Seq, err)
	}
	// The stored answer leaves the entry out (it is in the log already);
	// a replay puts it back.
	rec.Metering.Receipt = &contract.MeteringReceipt{Leaf: leaf, Index: index,
		Checkpoint: string(rec.CheckpointNote), Inclusion: path}
	var err error
	if rec.IdemResponse, err = json.Marshal(rec.Metering); err != nil {
		return err
	}
	rec.Metering.Receipt.Entry = rec.Entry
	return nil
}

func cloneHashes(hs [][]byte) [][]byte {
	out := make([][]byte, len(hs))
	for i, h := range hs {
		out[i] = bytes.Clone(h)
	}
	return out
}

// wake tells live streams of a log that it grew.
func (s *Server) wake(contractID string) {
	s.notifyMu.Lock()
	defer s.notifyMu.Unlock()
	if ch, ok := s.notify[contractID]; ok {
		close(ch)
		delete(s.notify, contractID)
	}
}

// waiter returns a channel closed at the log's next append.
func (s *Server) waiter(contractID string) <-chan struct{} {
	s.notifyMu.Lock()
	defer s.notifyMu.Unlock()
	ch, ok := s.notify[contractID]
	if !ok {
		ch = make(chan struct{})
		s.notify[contractID] = ch
	}
	return ch
}

func queryUint(r *http.Request, name string, def uint64) (uint64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "%s=%q: want a non-negative integer", name, v)
	}
	return n, nil
}

func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) error {
	c, err := s.loadContract(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	since, err := queryUint(r, "since", 0)
	if err != nil {
		return err
	}
	limit, err := queryUint(r, "limit", contract.DefaultEventsLimit)
	if err != nil {
		return err
	}
	if limit == 0 {
		limit = contract.DefaultEventsLimit
	}
	limit = min(limit, contract.MaxEventsLimit)
	size, err := s.st.logSize(r.Context(), c.ContractID)
	if err != nil {
		return err
	}
	entries, err := s.st.entries(r.Context(), c.ContractID, since, int(limit), s.cfg.MaxPageBytes)
	if err != nil {
		return err
	}
	if n := len(entries); n > 0 && entries[n-1].Seq > size {
		size = entries[n-1].Seq
	}
	writeJSON(w, http.StatusOK, contract.EventsPage{Entries: entries, TreeSize: size})
	return nil
}

// handleStream is the live feed: every entry after since, then each new
// one as it is appended, as Server-Sent Events ("event: entry", data =
// WireEntry JSON), with a comment heartbeat.
func (s *Server) handleStream(w http.ResponseWriter, r *http.Request) error {
	c, err := s.loadContract(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	release, err := s.streamSlot(r)
	if err != nil {
		return err
	}
	defer release()
	// A reconnecting EventSource resumes after the last id it saw.
	def, _ := strconv.ParseUint(r.Header.Get("Last-Event-ID"), 10, 64)
	since, err := queryUint(r, "since", def)
	if err != nil {
		return err
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return nil
	}
	heartbeat := time.NewTicker(15 * time.Second)
	defer heartbeat.Stop()
	var poll <-chan time.Time // entries other replicas append wake no one here
	if s.pollEvery > 0 {
		t := time.NewTicker(s.pollEvery)
		defer t.Stop()
		poll = t.C
	}
	ctx := r.Context()
	for {
		wait := s.waiter(c.ContractID)
		entries, err := s.st.entries(ctx, c.ContractID, since, contract.DefaultEventsLimit, s.cfg.MaxPageBytes)
		if err != nil {
			if ctx.Err() == nil {
				s.logger.Error("stream", logKeyContract, c.ContractID, logKeyErr, err)
			}
			return nil
		}
		for _, e := range entries {
			b, _ := json.Marshal(e)
			if _, err := fmt.Fprintf(w, "id: %d\nevent: entry\ndata: %s\n\n", e.Seq, b); err != nil {
				return nil
			}
			since = e.Seq
		}
		if len(entries) > 0 {
			if err := rc.Flush(); err != nil {
				return nil
			}
			// A page is bounded in bytes as well as count: read on until
			// one comes back empty.
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
			return nil
		case <-wait:
		case <-poll:
		case <-heartbeat.C:
			if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil {
				return nil
			}
			if err := rc.Flush(); err != nil {
				return nil
			}
		}
	}
}

// streamSlot takes a place for one live-feed stream, or refuses: 429 when
// the client's address holds MaxStreamsPerClient streams already, 503 when
// the registry holds MaxStreams. The caller calls release when the stream
// ends.
func (s *Server) streamSlot(r *http.Request) (release func(), err error) {
	addr := r.RemoteAddr
	if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	s.streamMu.Lock()
	defer s.streamMu.Unlock()
	if s.streamsBy[addr] >= s.cfg.MaxStreamsPerClient {
		return nil, contract.Errorf(http.StatusTooManyRequests, contract.CodeRateLimited,
			"%s holds %d live feeds already, the limit per client", addr, s.cfg.MaxStreamsPerClient)
	}
	if s.streams >= s.cfg.MaxStreams {
		return nil, contract.Errorf(http.StatusServiceUnavailable, contract.CodeUnavailable,
			"the registry serves %d live feeds already, its limit; poll the events instead", s.cfg.MaxStreams)
	}
	s.streams++
	s.streamsBy[addr]++
	return func() {
		s.streamMu.Lock()
		defer s.streamMu.Unlock()
		s.streams--
		if s.streamsBy[addr]--; s.streamsBy[addr] <= 0 {
			delete(s.streamsBy, addr)
		}
	}, nil
}

func writeNote(w http.ResponseWriter, note []byte) {
	w.Header().Set("Content-Type", contract.CheckpointMediaType)
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(note)
}

func (s *Server) handleCheckpoint(w http.ResponseWriter, r *http.Request) error {
	c, err := s.loadContract(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	note, err := s.cosignedCheckpoint(r.Context(), c.ContractID)
	if err != nil {
		return err
	}
	writeNote(w, note)
	return nil
}

func (s *Server) handleSnapshot(w http.ResponseWriter, r *http.Request) error {
	c, err := s.loadContract(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	v := r.URL.Query().Get("at")
	at, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "at=%q: want unix seconds", v)
	}
	// The checkpoint in force at `at` is the last one signed before the end
	// of that second.
	note, err := s.st.checkpointAt(r.Context(), c.ContractID, time.Unix(at+1, 0).Add(-time.Nanosecond))
	if errors.Is(err, errNotFound) {
		return contract.Errorf(http.StatusNotFound, contract.CodeNotFound, "no checkpoint of %q at or before %d", c.ContractID, at)
	}
	if err != nil {
		return err
	}
	if note, err = s.withCosignatures(r.Context(), c.ContractID, note); err != nil {
		return err
	}
	writeNote(w, note)
	return nil
}

func (s *Server) handleInclusion(w http.ResponseWriter, r *http.Request) error {
	c, err := s.loadContract(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	seq, err := queryUint(r, "seq", 0)
	if err != nil {
		return err
	}
	cur, err := s.st.logSize(r.Context(), c.ContractID)
	if err != nil {
		return err
	}
	size, err := queryUint(r, "size", cur)
	if err != nil {
		return err
	}
	if seq == 0 || seq > size || size > cur {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "need 1 <= seq (%d) <= size (%d) <= log size (%d)", seq, size, cur)
	}
	nodes, err := proof.Inclusion(seq-1, size)
	if err != nil {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "%v", err)
	}
	hashes, err := s.proofHashes(r.Context(), c.ContractID, nodes)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, contract.InclusionProof{Seq: seq, TreeSize: size, Hashes: hashes})
	return nil
}

func (s *Server) handleConsistency(w http.ResponseWriter, r *http.Request) error {
	c, err := s.loadContract(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	from, err := queryUint(r, "from", 0)
	if err != nil {
		return err
	}
	cur, err := s.st.logSize(r.Context(), c.ContractID)
	if err != nil {
		return err
	}
	to, err := queryUint(r, "to", cur)
	if err != nil {
		return err
	}
	if from == 0 || from > to || to > cur {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "need 1 <= from (%d) <= to (%d) <= log size (%d)", from, to, cur)
	}
	hashes, err := s.consistency(r.Context(), c.ContractID, from, to)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, contract.ConsistencyProof{From: from, To: to, Hashes: hashes})
	return nil
}

func (s *Server) consistency(ctx context.Context, contractID string, from, to uint64) ([][]byte, error) {
	nodes, err := proof.Consistency(from, to)
	if err != nil {
		return nil, contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "%v", err)
	}
	return s.proofHashes(ctx, contractID, nodes)
}

func (s *Server) proofHashes(ctx context.Context, contractID string, nodes proof.Nodes) ([][]byte, error) {
	hashes, err := s.st.nodes(ctx, contractID, nodes.IDs)
	if err != nil {
		return nil, err
	}
	out, err := nodes.Rehash(hashes, rfc6962.DefaultHasher.HashChildren)
	if err != nil {
		return nil, fmt.Errorf("%w: rehash: %v", errCorrupted, err)
	}
	if out == nil {
		out = [][]byte{}
	}
	return out, nil
}

// rootAt is the root of the first size entries, from the stored nodes.
func (s *Server) rootAt(ctx context.Context, contractID string, size uint64) ([]byte, error) {
	return rootOf(ctx, s.st, contractID, size)
}

// handleVerify checks a client's checkpoint against the log: signed by the
// log's key, and a prefix of the current log (with the consistency proof).
func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request) error {
	var req contract.VerifyRequest
	if err := decodeBody(w, r, 64<<10, &req); err != nil {
		return err
	}
	c, err := s.loadContract(r.Context(), req.Contract)
	if err != nil {
		return err
	}
	v, err := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	if err != nil {
		return err
	}
	cp, err := v.Parse([]byte(req.Checkpoint))
	if err != nil {
		return contract.Errorf(http.StatusBadRequest, contract.CodeVerification, "%v", err)
	}
	latest, err := s.st.latestCheckpoint(r.Context(), c.ContractID)
	if err != nil {
		return err
	}
	cur, err := v.Parse(latest)
	if err != nil {
		return fmt.Errorf("%w: latest checkpoint: %v", errCorrupted, err)
	}
	resp := contract.VerifyResponse{TreeSize: cur.Size, Checkpoint: string(latest)}
	if cp.Size > cur.Size {
		resp.Message = fmt.Sprintf("checkpoint size %d is beyond the log's size %d", cp.Size, cur.Size)
		writeJSON(w, http.StatusOK, resp)
		return nil
	}
	root, err := s.rootAt(r.Context(), c.ContractID, cp.Size)
	if err != nil {
		return err
	}
	if !bytes.Equal(root, cp.Hash) {
		resp.Message = fmt.Sprintf("checkpoint root %x at size %d is not the log's root %x: a fork", cp.Hash, cp.Size, root)
		writeJSON(w, http.StatusOK, resp)
		return nil
	}
	resp.Consistent = true
	if cp.Size > 0 && cp.Size < cur.Size {
		hashes, err := s.consistency(r.Context(), c.ContractID, cp.Size, cur.Size)
		if err != nil {
			return err
		}
		resp.Proof = &contract.ConsistencyProof{From: cp.Size, To: cur.Size, Hashes: hashes}
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}
