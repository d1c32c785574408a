package contract

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/transparency-dev/tessera/client"
)

// MaxTileResource bounds the body of any tlog-tiles resource a follower
// reads: a full entry bundle of the largest entries (256 × (2 + 65535)).
const MaxTileResource = 256 * (2 + 1<<16 - 1)

// LogURL is the base URL of a contract's static tiles under a log URL:
// "<logURL>/<contract id>/". The registry serves its logs' tiles with
// logURL "<registry>/logs"; provgate registry publish-tiles writes the
// same layout under a bucket prefix.
func LogURL(logURL, contractID string) (*url.URL, error) {
	if err := ValidateID(contractID); err != nil {
		return nil, err
	}
	u, err := url.Parse(strings.TrimRight(logURL, "/") + "/")
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("log URL %q: want http(s)://host[/path]", logURL)
	}
	return u.JoinPath(contractID, "/"), nil
}

// NewTileFetcher reads the static tiles of a contract's log over HTTP(S)
// with tessera's client (which falls back from a partial tile to the full
// one). hc nil is a 30-second-timeout client; every body is bounded by
// MaxTileResource.
func NewTileFetcher(logURL, contractID string, hc *http.Client) (*client.HTTPFetcher, error) {
	u, err := LogURL(logURL, contractID)
	if err != nil {
		return nil, err
	}
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	bounded := *hc
	rt := hc.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	bounded.Transport = boundedTransport{rt: rt, max: MaxTileResource}
	return client.NewHTTPFetcher(u, &bounded)
}

// errTooLarge: a tiles server sent more than any tile resource can hold.
var errTooLarge = errors.New("tile resource exceeds its size limit")

// boundedTransport fails any response body past max bytes.
type boundedTransport struct {
	rt  http.RoundTripper
	max int64
}

func (t boundedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	if resp.ContentLength > t.max {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %w: %d bytes, limit %d", r.URL.Redacted(), errTooLarge, resp.ContentLength, t.max)
	}
	resp.Body = &boundedBody{rc: resp.Body, left: t.max, url: r.URL.Redacted()}
	return resp, nil
}

type boundedBody struct {
	rc   io.ReadCloser
	left int64
	url  string
}

func (b *boundedBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, fmt.Errorf("%s: %w", b.url, errTooLarge)
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return 0, fmt.Errorf("%s: %w", b.url, errTooLarge)
	}
	return n, err
}

func (b *boundedBody) Close() error { return b.rc.Close() }
