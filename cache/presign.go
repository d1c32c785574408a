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

	"golang.org/x/sync/singleflight"

	"github.com/provgate/provgate/contract"
)

// Presigner issues short-lived GET URLs for names of one contract; the
// sidecar wires it to contract.Client.Presign with its capability token.
// It returns one URL per name.
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
// Margin before they expire, batched by Warm, and refreshed once when the
// origin refuses one (403: expired or revoked early).
type PresignedOrigin struct {
	presigner Presigner
	client    *http.Client
	// Margin is the refresh margin (DefaultPresignMargin when zero).
	Margin time.Duration

	group singleflight.Group
	mu    sync.Mutex
	urls  map[string]contract.PresignedURL
}

// NewPresignedOrigin makes a presigned-URL origin; client nil is
// http.DefaultClient.
func NewPresignedOrigin(p Presigner, client *http.Client) *PresignedOrigin {
	if client == nil {
		client = http.DefaultClient
	}
	return &PresignedOrigin{presigner: p, client: client, urls: map[string]contract.PresignedURL{}}
}

// Warm presigns the names that have no fresh URL, in batches of at most
// contract.MaxPresignNames. Prefetch calls it before fetching.
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
		if err := o.presign(ctx, batch); err != nil {
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

func (o *PresignedOrigin) presign(ctx context.Context, names []string) error {
	urls, err := o.presigner.Presign(ctx, names)
	if err != nil {
		return fmt.Errorf("presign: %w", err)
	}
	if len(urls) != len(names) {
		return fmt.Errorf("presign: asked for %d names, got %d URLs", len(names), len(urls))
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, u := range urls {
		if u.Name != names[i] {
			return fmt.Errorf("presign: URL %d is for %q, want %q", i, u.Name, names[i])
		}
		o.urls[u.Name] = u
	}
	return nil
}

// url returns a fresh URL for name, presigning it (single-flight) if
// needed.
func (o *PresignedOrigin) url(ctx context.Context, name string) (string, error) {
	o.mu.Lock()
	if o.freshLocked(name) {
		u := o.urls[name].URL
		o.mu.Unlock()
		return u, nil
	}
	o.mu.Unlock()
	v, err, _ := o.group.Do(name, func() (any, error) {
		if err := o.presign(ctx, []string{name}); err != nil {
			return "", err
		}
		o.mu.Lock()
		defer o.mu.Unlock()
		return o.urls[name].URL, nil
	})
	if err != nil {
		return "", &OriginError{Op: "presign", Name: name, Err: err}
	}
	return v.(string), nil
}

func (o *PresignedOrigin) forget(name string) {
	o.mu.Lock()
	delete(o.urls, name)
	o.mu.Unlock()
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
		if attempt == 0 && errors.As(err, &oe) && oe.Status == http.StatusForbidden {
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
