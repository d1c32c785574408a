package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/provgate/provgate/contract"
)

// Presigner issues short-lived GET URLs for names of one contract; the
// sidecar wires it to contract.Client.Presign with its capability token.
// It returns one result per name, in order: a URL, or (Error set) that
// name's refusal, which fails that name only.
type Presigner interface {
	Presign(ctx context.Context, names []string) ([]contract.PresignedURL, error)
}

// PresignerFunc adapts a function to Presigner.
type PresignerFunc func(ctx context.Context, names []string) ([]contract.PresignedURL, error)

// Presign calls f.
func (f PresignerFunc) Presign(ctx context.Context, names []string) ([]contract.PresignedURL, error) {
	return f(ctx, names)
}

// DefaultPresignMargin is how long before its expiry a presigned URL is
// refreshed rather than used.
const DefaultPresignMargin = 30 * time.Second

// PresignedOrigin reads objects through presigned GET URLs (marketplace
// mode: the pod holds no bucket credentials). URLs are cached until
// Margin before they expire and refreshed once when the origin refuses one
// (403: expired or revoked early). Names missing a URL are presigned in
// batches: while one presign request is out, the names asked for meanwhile
// wait and go together in the next (group commit, no added latency); Warm
// presigns a whole list up front. A name the registry refuses (redacted:
// 451) fails only the fetches of that name. Forget drops a name's URL, also
// one being presigned at that moment (the cache calls it when it purges
// the name).
type PresignedOrigin struct {
	presigner Presigner
	client    *http.Client
	// Margin is the refresh margin (DefaultPresignMargin when zero).
	Margin time.Duration

	mu      sync.Mutex
	urls    map[string]contract.PresignedURL
	forgets map[string]uint64 // by name: Forget calls, so that a URL asked for before one is not kept
	next    *presignBatch     // names waiting for the next request
	sending bool
}

var _ forgetter = (*PresignedOrigin)(nil)

// presignBatch is one presign request's names and outcome.
type presignBatch struct {
	names []string
	set   map[string]bool
	done  chan struct{}
	err   error            // the whole request's
	nope  map[string]error // the names refused one by one
}

// PresignTimeout bounds one batched presign request.
const PresignTimeout = 30 * time.Second

// NewPresignedOrigin makes a presigned-URL origin; client nil is a client
// whose transport keeps up to presignedIdleConns connections to a bucket
// host (http.DefaultTransport keeps two: fetches running at once beyond
// that opened a connection each). Either way, redirects to another host
// than the presigned URL's are not followed: a hostile registry or origin
// must not point the sidecar at internal addresses.
func NewPresignedOrigin(p Presigner, client *http.Client) *PresignedOrigin {
	c := &http.Client{}
	if client != nil {
		*c = *client
	} else {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 4*presignedIdleConns, presignedIdleConns
		c.Transport = tr
	}
	next := c.CheckRedirect
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if first := via[0].URL; req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
			return fmt.Errorf("%w: refused a redirect from %s to another host, %s", ErrOriginRedirect, first.Host, req.URL.Host)
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	client = c
	return &PresignedOrigin{presigner: p, client: client, urls: map[string]contract.PresignedURL{}, forgets: map[string]uint64{}}
}

// presignedIdleConns is how many idle connections a presigned origin
// keeps per bucket host: more than a sidecar's fetches at once (16 by
// default, --max-fetches).
const presignedIdleConns = 64

// Warm presigns the names that have no fresh URL, in batches of at most
// contract.MaxPresignNames. Prefetch calls it before fetching. Names the
// registry refuses one by one are left out (their fetches fail on their
// own); a refusal of the whole request is returned.
func (o *PresignedOrigin) Warm(ctx context.Context, names []string) error {
	var need []string
	o.mu.Lock()
	for _, n := range names {
		if !o.freshLocked(n) {
			need = append(need, n)
		}
	}
	o.mu.Unlock()
	for len(need) > 0 {
		batch := need[:min(len(need), contract.MaxPresignNames)]
		need = need[len(batch):]
		if _, err := o.presign(ctx, batch); err != nil {
			return err
		}
	}
	return nil
}

func (o *PresignedOrigin) margin() time.Duration {
	if o.Margin > 0 {
		return o.Margin
	}
	return DefaultPresignMargin
}

func (o *PresignedOrigin) freshLocked(name string) bool {
	u, ok := o.urls[name]
	return ok && time.Until(u.ExpiresAt) > o.margin()
}

// presign asks for URLs for names and keeps them; it returns the names
// refused one by one with their errors, or the whole request's error.
func (o *PresignedOrigin) presign(ctx context.Context, names []string) (map[string]error, error) {
	o.mu.Lock()
	forgets := make([]uint64, len(names))
	for i, n := range names {
		forgets[i] = o.forgets[n]
	}
	o.mu.Unlock()
	urls, err := o.presigner.Presign(ctx, names)
	if err != nil {
		return nil, fmt.Errorf("presign: %w", err)
	}
	if len(urls) != len(names) {
		return nil, fmt.Errorf("presign: asked for %d names, got %d results", len(names), len(urls))
	}
	for i, u := range urls {
		if u.Name != names[i] {
			return nil, fmt.Errorf("presign: result %d is for %q, want %q", i, u.Name, names[i])
		}
	}
	var refused map[string]error
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, u := range urls {
		err := u.Err()
		if err == nil && u.URL == "" {
			err = errors.New("no URL returned")
		}
		if err != nil {
			if refused == nil {
				refused = map[string]error{}
			}
			refused[u.Name] = err
			continue
		}
		if o.forgets[u.Name] != forgets[i] {
			continue // purged while it was presigned: not kept
		}
		o.urls[u.Name] = u
	}
	return refused, nil
}

// url returns a fresh URL for name, presigning it (batched with other
// names asked for at the same time) if needed.
func (o *PresignedOrigin) url(ctx context.Context, name string) (string, error) {
	o.mu.Lock()
	if o.freshLocked(name) {
		u := o.urls[name].URL
		o.mu.Unlock()
		return u, nil
	}
	b := o.next
	switch {
	case b == nil:
		b = newPresignBatch()
		o.next = b
	case !b.set[name] && len(b.names) >= contract.MaxPresignNames:
		// The queued batch is full: this name goes on its own, now.
		b = newPresignBatch()
		b.add(name)
		o.mu.Unlock()
		go o.sendBatch(b)
		return o.await(ctx, b, name)
	}
	b.add(name)
	if !o.sending {
		o.sending = true
		go o.sendLoop()
	}
	o.mu.Unlock()
	return o.await(ctx, b, name)
}

func newPresignBatch() *presignBatch {
	return &presignBatch{set: map[string]bool{}, done: make(chan struct{})}
}

func (b *presignBatch) add(name string) {
	if !b.set[name] {
		b.set[name] = true
		b.names = append(b.names, name)
	}
}

// await waits for b and returns name's URL.
func (o *PresignedOrigin) await(ctx context.Context, b *presignBatch, name string) (string, error) {
	select {
	case <-b.done:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if b.err != nil {
		// The registry's status (403 quota spent, 429, 5xx) decides retries.
		return "", &OriginError{Op: "presign", Name: name, Status: contract.StatusOf(b.err), Err: b.err}
	}
	if err := b.nope[name]; err != nil {
		// This name only (451 redacted, 404): not retried.
		return "", &OriginError{Op: "presign", Name: name, Status: contract.StatusOf(err), Err: err}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	u, ok := o.urls[name]
	if !ok {
		// Forgotten meanwhile (a purge): a retry presigns it again, and
		// the cache decides whether it may still be fetched.
		return "", &OriginError{Op: "presign", Name: name, Err: errors.New("URL dropped by a purge")}
	}
	return u.URL, nil
}

// sendLoop sends the queued batch, then the one queued meanwhile, until
// none is left.
func (o *PresignedOrigin) sendLoop() {
	for {
		o.mu.Lock()
		b := o.next
		o.next = nil
		if b == nil {
			o.sending = false
			o.mu.Unlock()
			return
		}
		o.mu.Unlock()
		o.sendBatch(b)
	}
}

func (o *PresignedOrigin) sendBatch(b *presignBatch) {
	ctx, cancel := context.WithTimeout(context.Background(), PresignTimeout)
	defer cancel()
	b.nope, b.err = o.presign(ctx, b.names)
	close(b.done)
}

// forget drops name's URL (refused by the origin: presign it again).
func (o *PresignedOrigin) forget(name string) {
	o.mu.Lock()
	delete(o.urls, name)
	o.mu.Unlock()
}

// Forget drops name's URL, and any URL for it that a presign request
// already in flight brings back: the name was purged (redacted), and its
// URL must not outlive that.
func (o *PresignedOrigin) Forget(name string) {
	o.mu.Lock()
	delete(o.urls, name)
	o.forgets[name]++
	o.mu.Unlock()
}

// HasURL reports whether a URL is kept for name.
func (o *PresignedOrigin) HasURL(name string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.urls[name]
	return ok
}

// Open implements Origin with a (ranged) GET on the object's URL.
func (o *PresignedOrigin) Open(ctx context.Context, name string, off int64) (io.ReadCloser, error) {
	for attempt := 0; ; attempt++ {
		u, err := o.url(ctx, name)
		if err != nil {
			return nil, err
		}
		body, err := o.get(ctx, name, u, off)
		var oe *OriginError
		if attempt == 0 && errors.As(err, &oe) && oe.Op == "get" && oe.Status == http.StatusForbidden {
			o.forget(name) // expired or revoked early: presign once more
			continue
		}
		return body, err
	}
}

func (o *PresignedOrigin) get(ctx context.Context, name, u string, off int64) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, &OriginError{Op: "get", Name: name, Err: err}
	}
	if off > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-")
	}
	resp, err := o.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &OriginError{Op: "get", Name: name, Err: err}
	}
	switch {
	case resp.StatusCode == http.StatusOK && off == 0:
		return resp.Body, nil
	case resp.StatusCode == http.StatusPartialContent && off > 0:
		if start, ok := contentRangeStart(resp.Header.Get("Content-Range")); !ok || start != off {
			resp.Body.Close()
			return nil, &OriginError{Op: "get", Name: name, Status: resp.StatusCode,
				Err: fmt.Errorf("asked for bytes from %d, got Content-Range %q", off, resp.Header.Get("Content-Range"))}
		}
		return resp.Body, nil
	case resp.StatusCode == http.StatusOK && off > 0:
		// The server ignored the range: skip to off.
		if _, err := io.CopyN(io.Discard, resp.Body, off); err != nil {
			resp.Body.Close()
			return nil, &OriginError{Op: "get", Name: name, Err: err}
		}
		return resp.Body, nil
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, &OriginError{Op: "get", Name: name, Status: resp.StatusCode,
			RetryAfter: parseRetryAfter(resp.Header), Err: fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))}
	}
}

// contentRangeStart parses "bytes START-END/TOTAL".
func contentRangeStart(v string) (int64, bool) {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, false
	}
	s, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}
