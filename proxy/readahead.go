package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/provgate/provgate/contract"
)

// Read-ahead. A loader that knows its epoch's order announces it
// (POST /v1/contracts/{id}/epochs/{n}/order, {"names": [...]}, the job in
// X-Provgate-Job as for reads); the sidecar then fetches the next objects
// of that order into the cache ahead of the reads, a bounded window ahead
// of the furthest object served so far in that (job, epoch). Read-ahead
// goes through the cache like any read: only verified bytes are committed,
// a name the verified manifest no longer has (redacted, dropped) is never
// fetched, and the cache's size bound holds. It never bills: only bytes
// served to a client are metered, by the read that serves them.

// Defaults for read-ahead.
const (
	// DefaultMaxOrderNames bounds one announced order.
	DefaultMaxOrderNames = 1 << 18
	// DefaultReadAheadObjects and DefaultReadAheadBytes bound what one
	// order holds fetched ahead of its reads (pinned in the cache until
	// read or passed) plus what it is fetching.
	DefaultReadAheadObjects = 64
	DefaultReadAheadBytes   = 256 << 20
	// DefaultReadAheadFetches bounds one order's concurrent fetches.
	DefaultReadAheadFetches = 16
	// maxOrders bounds the orders kept; announcing one more drops the
	// least recently used.
	maxOrders = 16
	// orderIdle drops an order nobody has read from for that long.
	orderIdle = 10 * time.Minute
	// maxOrderBodyPerName bounds the body: a name is at most 1024 bytes,
	// JSON-escaped at most 6 times that, plus quotes and a comma.
	maxOrderBodyPerName = 1024 + 3
	// warmAhead is how many names past the fetch window are presigned
	// (in batches of warmBatch) ahead of need: enough that a registry
	// round trip under load (presigning records each object against the
	// lease) does not leave fetches waiting for URLs. With 256, 12 of 16
	// fetches at a time waited behind a 20 ms origin.
	warmAhead = 1024
	warmBatch = 256
	// heldRecheck is how often the objects held for reads are checked
	// against the manifest: a redacted one is let go at once, so that its
	// purged file leaves the disk.
	heldRecheck = time.Second
)

// Warmer is an optional Cache method: prepare names for fetching (a
// presigned origin presigns them in batches).
type Warmer interface {
	Warm(ctx context.Context, contractID string, names []string) error
}

// orderKey names an announced order: a (job, epoch) of a contract.
type orderKey struct {
	contract, job string
	epoch         int64
}

// order is one announced epoch order and its read-ahead.
type order struct {
	s      *Server
	key    orderKey
	src    Source
	names  []string
	index  map[string]int // first position of each name
	cancel context.CancelFunc
	wake   chan struct{}
	// warming is set while a presign batch (warm) is under way: it runs
	// beside the fetches, never in the loop that starts them.
	warming atomic.Bool

	mu         sync.Mutex
	read       int            // 1 + the furthest position served
	next       int            // next position to consider fetching
	warmed     int            // names presigned up to here
	ahead      int            // objects held or being fetched
	aheadBytes int64          // their bytes
	held       map[int]Object // fetched ahead, pinned until read or passed
	heldSize   map[int]int64  // the bytes each planned position counts
	lastUse    time.Time
}

// readAhead holds the announced orders.
type readAhead struct {
	mu     sync.Mutex
	orders map[orderKey]*order
}

// orderRequest is the body of POST .../epochs/{n}/order.
type orderRequest struct {
	Names []string `json:"names"`
}

// orderResponse says what was taken.
type orderResponse struct {
	Contract string `json:"contract_id"`
	Job      string `json:"job,omitempty"`
	Epoch    int64  `json:"epoch"`
	Names    int    `json:"names"`
	// AheadObjects and AheadBytes bound the read-ahead window.
	AheadObjects int   `json:"read_ahead_objects"`
	AheadBytes   int64 `json:"read_ahead_bytes"`
}

// announceOrder takes an epoch's order and starts reading ahead of it; it
// replaces an order announced before for the same (job, epoch).
func (s *Server) announceOrder(w http.ResponseWriter, r *http.Request) error {
	src, err := s.source(r.PathValue("id"))
	if err != nil {
		return err
	}
	n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
	if err != nil || n < 0 || n > contract.MaxEventEpoch {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "epoch %q is not an integer from 0 to %d", r.PathValue("n"), int64(contract.MaxEventEpoch))
	}
	_, job, err := meterParams(r)
	if err != nil {
		return err
	}
	limit := int64(s.cfg.MaxOrderNames)*maxOrderBodyPerName + 64
	var req orderRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return contract.Errorf(http.StatusRequestEntityTooLarge, contract.CodeTooLarge, "order body exceeds %d bytes (at most %d names)", limit, s.cfg.MaxOrderNames)
		}
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "order body: %v (want {\"names\": [...]})", err)
	}
	if len(req.Names) > s.cfg.MaxOrderNames {
		return contract.Errorf(http.StatusRequestEntityTooLarge, contract.CodeTooLarge, "order of %d names exceeds %d", len(req.Names), s.cfg.MaxOrderNames)
	}
	if len(req.Names) == 0 {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "order takes 1 to %d names", s.cfg.MaxOrderNames)
	}
	index := make(map[string]int, len(req.Names))
	for i, name := range req.Names {
		if err := contract.ValidateName(name); err != nil {
			return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "order name %d: %v", i, err)
		}
		if _, ok := index[name]; !ok {
			index[name] = i
		}
	}
	if st := src.Status(); !st.Serving() {
		return stateError(st)
	}
	k := orderKey{contract: src.ID(), job: job, epoch: n}
	s.startOrder(k, src, req.Names, index)
	return writeJSON(w, orderResponse{Contract: k.contract, Job: job, Epoch: n, Names: len(req.Names),
		AheadObjects: s.cfg.ReadAheadObjects, AheadBytes: s.cfg.ReadAheadBytes})
}

// startOrder registers the order k and starts its read-ahead.
func (s *Server) startOrder(k orderKey, src Source, names []string, index map[string]int) {
	if s.cfg.ReadAheadObjects < 0 {
		return // read-ahead is off: the order is taken and ignored
	}
	ctx, cancel := context.WithCancel(context.Background())
	o := &order{s: s, key: k, src: src, names: names, index: index, cancel: cancel,
		wake: make(chan struct{}, 1), held: map[int]Object{}, heldSize: map[int]int64{}, lastUse: time.Now()}
	ra := &s.readAhead
	ra.mu.Lock()
	if ra.orders == nil {
		ra.orders = map[orderKey]*order{}
	}
	if old := ra.orders[k]; old != nil {
		old.cancel()
	}
	ra.orders[k] = o
	for len(ra.orders) > maxOrders {
		var oldest *order
		for _, x := range ra.orders {
			if x != o && (oldest == nil || x.used().Before(oldest.used())) {
				oldest = x
			}
		}
		oldest.cancel()
		delete(ra.orders, oldest.key)
	}
	ra.mu.Unlock()
	go o.run(ctx)
}

// forget drops o if it is still the order for its key.
func (ra *readAhead) forget(o *order) {
	ra.mu.Lock()
	if ra.orders[o.key] == o {
		delete(ra.orders, o.key)
	}
	ra.mu.Unlock()
}

// served tells the read-ahead that name was served in (job, epoch): the
// window moves past its position. Cheap when no order was announced.
func (s *Server) served(contractID, job string, epoch int64, name string) {
	ra := &s.readAhead
	ra.mu.Lock()
	if len(ra.orders) == 0 {
		ra.mu.Unlock()
		return
	}
	o := ra.orders[orderKey{contract: contractID, job: job, epoch: epoch}]
	ra.mu.Unlock()
	if o == nil {
		return
	}
	i, ok := o.index[name]
	if !ok {
		return
	}
	o.mu.Lock()
	o.lastUse = time.Now()
	if obj := o.held[i]; obj != nil {
		o.releaseLocked(i, obj)
	}
	if i+1 > o.read {
		o.read = i + 1
		// Objects held far behind the reads were passed by: readers lagging
		// a little (other loader workers) still find them cached.
		for j, obj := range o.held {
			if j < o.read-o.s.cfg.ReadAheadObjects {
				o.releaseLocked(j, obj)
			}
		}
	}
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

func (o *order) used() time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.lastUse
}

// releaseLocked unpins a held object; o.mu is held.
func (o *order) releaseLocked(i int, obj Object) {
	obj.Close()
	delete(o.held, i)
	o.ahead--
	o.aheadBytes -= o.heldSize[i]
	delete(o.heldSize, i)
}

// run keeps the window fetched until the order is done, replaced, or idle.
func (o *order) run(ctx context.Context) {
	defer o.s.readAhead.forget(o)
	var wg sync.WaitGroup
	sem := make(chan struct{}, o.s.cfg.ReadAheadFetches)
	defer func() {
		o.cancel()
		wg.Wait()
		o.mu.Lock()
		for i, obj := range o.held {
			o.releaseLocked(i, obj)
		}
		o.mu.Unlock()
	}()
	idle := time.NewTimer(orderIdle)
	defer idle.Stop()
	recheck := time.NewTicker(heldRecheck)
	defer recheck.Stop()
	for {
		// Presigning ahead is a round trip to the registry: it must not
		// hold up the fetches (with the loop waiting on it, 12 of 16
		// fetches at a time sat waiting for URLs behind a 20 ms origin).
		if o.warming.CompareAndSwap(false, true) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer o.warming.Store(false)
				o.warm(ctx)
			}()
		}
		for {
			i, e := o.nextFetch()
			if e == nil {
				break
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				o.unplan(i)
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				o.fetch(ctx, i, e)
			}()
		}
		if o.finished() {
			return
		}
		select {
		case <-o.wake:
		case <-recheck.C:
			o.dropRedacted()
		case <-ctx.Done():
			return
		case <-idle.C:
			if time.Since(o.used()) >= orderIdle {
				return
			}
			idle.Reset(orderIdle)
		}
	}
}

// dropRedacted lets go of held objects whose names the verified manifest
// no longer serves: the cache purged them, and their files go with the
// last pin.
func (o *order) dropRedacted() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, obj := range o.held {
		if _, err := o.src.Lookup(o.names[i]); err != nil {
			o.releaseLocked(i, obj)
		}
	}
}

// nextFetch plans the next position to fetch within the window, or
// returns nil when the window is full or the order is exhausted. A name
// the verified manifest no longer serves is skipped, never fetched.
func (o *order) nextFetch() (int, *ManifestEntry) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.next = max(o.next, o.read)
	for o.next < len(o.names) && o.ahead < o.s.cfg.ReadAheadObjects && o.aheadBytes < o.s.cfg.ReadAheadBytes {
		i := o.next
		o.next++
		if first := o.index[o.names[i]]; first != i {
			continue // a repeat: its first position fetches it
		}
		e, err := o.src.Lookup(o.names[i])
		if err != nil {
			continue
		}
		if o.aheadBytes > 0 && o.aheadBytes+e.DecodedSize > o.s.cfg.ReadAheadBytes {
			o.next-- // waits for room
			return 0, nil
		}
		o.ahead++
		o.aheadBytes += e.DecodedSize
		o.heldSize[i] = e.DecodedSize
		return i, e
	}
	return 0, nil
}

// unplan gives back the window room of a planned fetch that did not run.
func (o *order) unplan(i int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ahead--
	o.aheadBytes -= o.heldSize[i]
	delete(o.heldSize, i)
}

// fetch brings position i into the cache and holds it there until it is
// read or passed.
func (o *order) fetch(ctx context.Context, i int, e *ManifestEntry) {
	obj, err := o.s.cfg.Cache.Get(ctx, o.key.contract, &e.ObjectClaim)
	if err == nil {
		// A redaction that landed during the fetch wins: nothing is held.
		if _, lerr := o.src.Lookup(e.Name); lerr != nil {
			obj.Close()
			obj, err = nil, lerr
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil || i < o.read || ctx.Err() != nil {
		if obj != nil {
			obj.Close()
		}
		if err != nil && ctx.Err() == nil {
			o.s.log.Debug("read-ahead fetch failed", "contract", o.key.contract, "name", e.Name, "err", err)
		}
		o.ahead--
		o.aheadBytes -= o.heldSize[i]
		delete(o.heldSize, i)
		return
	}
	o.held[i] = obj
}

// warm presigns (in batches) the names up to warmAhead past the window.
func (o *order) warm(ctx context.Context) {
	w, ok := o.s.cfg.Cache.(Warmer)
	if !ok {
		return
	}
	o.mu.Lock()
	from := max(o.warmed, o.next, o.read)
	to := min(len(o.names), max(o.next, o.read)+o.s.cfg.ReadAheadObjects+warmAhead)
	if to-from < warmAhead/2 && to < len(o.names) {
		o.mu.Unlock()
		return // warm in batches, not a name at a time
	}
	o.warmed = to
	o.mu.Unlock()
	// Only names the verified manifest still serves are presigned.
	var names []string
	for i := from; i < to; i++ {
		if o.index[o.names[i]] != i {
			continue
		}
		if _, err := o.src.Lookup(o.names[i]); err == nil {
			names = append(names, o.names[i])
		}
	}
	if len(names) == 0 {
		return
	}
	// In batches of warmBatch, nearest first: the first fetches get their
	// URLs after one small round trip, and a lease that cannot take them
	// all (presigned objects count against it) refuses only the last.
	for chunk := range slices.Chunk(names, warmBatch) {
		if err := w.Warm(ctx, o.key.contract, chunk); err != nil {
			if ctx.Err() == nil {
				o.s.log.Debug("read-ahead presign failed", "contract", o.key.contract, "err", err)
			}
			return
		}
	}
}

// finished reports whether every position was fetched or passed and
// nothing is held any more.
func (o *order) finished() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.next >= len(o.names) && o.ahead == 0
}
