package contract

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Client defaults.
const (
	DefaultTimeout     = 30 * time.Second
	DefaultMaxAttempts = 4
	DefaultBaseDelay   = 200 * time.Millisecond
	DefaultMaxDelay    = 5 * time.Second
	// MaxResponseSize bounds every JSON or checkpoint body the client reads.
	MaxResponseSize = 64 << 20
	// MaxStreamEventSize bounds one live-feed event (its data lines
	// together, or one line): room for an entry of MaxEntrySize as
	// WireEntry JSON.
	MaxStreamEventSize = 2 * MaxEntrySize
)

// ProofFunc makes a fresh proof of possession (RFC 9449) for one request
// attempt; token is empty on a token request.
type ProofFunc func(method, url, token string) (string, error)

// Client talks to a registry. The zero value is not usable; use NewClient.
type Client struct {
	base *url.URL
	// HTTP is the underlying client; its Timeout bounds each attempt.
	HTTP *http.Client
	// MaxAttempts, BaseDelay and MaxDelay shape retries of requests that are
	// safe to repeat: capped exponential backoff with full jitter, honouring
	// Retry-After.
	MaxAttempts int
	BaseDelay   time.Duration
	MaxDelay    time.Duration
	// MaxResponseBytes bounds every JSON or checkpoint body the client
	// reads; 0: MaxResponseSize.
	MaxResponseBytes int64
	// Proof signs DPoP proofs; required for token, presign and metering.
	Proof ProofFunc
}

// NewClient returns a client for the registry at baseURL.
func NewClient(baseURL string) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("registry url %q: want http(s)://host[:port]", baseURL)
	}
	return &Client{
		base:        u,
		HTTP:        &http.Client{Timeout: DefaultTimeout},
		MaxAttempts: DefaultMaxAttempts,
		BaseDelay:   DefaultBaseDelay,
		MaxDelay:    DefaultMaxDelay,
	}, nil
}

// BaseURL is the registry's base URL.
func (c *Client) BaseURL() string { return c.base.String() }

// URL joins the registry's base URL with path segments, escaping each.
func (c *Client) URL(segments ...string) string {
	u := *c.base
	var b strings.Builder
	b.WriteString(strings.TrimRight(u.Path, "/"))
	raw := b.String()
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(s)
		raw += "/" + url.PathEscape(s)
	}
	u.Path = b.String()
	u.RawPath = raw
	return u.String()
}

type request struct {
	method  string
	url     string
	body    []byte
	ctype   string
	header  http.Header
	token   string // DPoP-bound access token
	proof   bool   // add a DPoP proof
	retry   bool   // safe to repeat
	accept2 int    // another success status besides 200/201 (e.g. 304)
}

func (c *Client) do(ctx context.Context, r request) (*http.Response, error) {
	attempts := c.MaxAttempts
	if !r.retry || attempts < 1 {
		attempts = 1
	}
	var lastErr error
	for attempt := 0; attempt < attempts; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, c.backoff(attempt, lastErr)); err != nil {
				return nil, errors.Join(err, lastErr)
			}
		}
		resp, err := c.once(ctx, r)
		if err == nil {
			return resp, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			return nil, err
		}
		if st := StatusOf(err); st != 0 && !IsRetryable(st) {
			return nil, err
		}
	}
	return nil, lastErr
}

type retryAfterError struct {
	*APIError
	after time.Duration
}

func (e *retryAfterError) Unwrap() error { return e.APIError }

func (c *Client) once(ctx context.Context, r request) (*http.Response, error) {
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, r.url, body)
	if err != nil {
		return nil, err
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	if r.ctype != "" {
		req.Header.Set("Content-Type", r.ctype)
	}
	if r.token != "" {
		req.Header.Set("Authorization", AuthSchemeDPoP+" "+r.token)
	}
	if r.proof {
		if c.Proof == nil {
			return nil, errors.New("registry client: no proof-of-possession signer configured")
		}
		p, err := c.Proof(r.method, r.url, r.token)
		if err != nil {
			return nil, fmt.Errorf("dpop proof: %w", err)
		}
		req.Header.Set(HeaderDPoP, p)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusCreated ||
		(r.accept2 != 0 && resp.StatusCode == r.accept2) {
		return resp, nil
	}
	defer resp.Body.Close()
	apiErr := ReadError(resp)
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		if s, err := strconv.Atoi(ra); err == nil && s >= 0 {
			return nil, &retryAfterError{APIError: apiErr, after: time.Duration(s) * time.Second}
		}
	}
	return nil, apiErr
}

// ReadError turns a non-success response into an APIError, reading the
// JSON error body when there is one.
func ReadError(resp *http.Response) *APIError {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb ErrorBody
	if json.Unmarshal(b, &eb) == nil && eb.Error.Code != "" {
		return &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	msg := strings.TrimSpace(string(b))
	if len(msg) > 200 {
		msg = msg[:200]
	}
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	return &APIError{Status: resp.StatusCode, Code: codeForStatus(resp.StatusCode), Message: msg}
}

func codeForStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return CodeBadRequest
	case http.StatusUnauthorized:
		return CodeUnauthorized
	case http.StatusForbidden:
		return CodeForbidden
	case http.StatusNotFound:
		return CodeNotFound
	case http.StatusConflict:
		return CodeConflict
	case http.StatusTooManyRequests:
		return CodeRateLimited
	case http.StatusServiceUnavailable:
		return CodeUnavailable
	default:
		return CodeInternal
	}
}

func (c *Client) backoff(attempt int, lastErr error) time.Duration {
	var ra *retryAfterError
	if errors.As(lastErr, &ra) && ra.after > 0 {
		return min(ra.after, c.MaxDelay)
	}
	return Backoff(attempt, c.BaseDelay, c.MaxDelay)
}

// Backoff returns a full-jitter delay for the given attempt (1-based):
// uniform in [0, min(max, base*2^(attempt-1))].
func Backoff(attempt int, base, maxDelay time.Duration) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	d := base << min(attempt-1, 20)
	if d <= 0 || d > maxDelay {
		d = maxDelay
	}
	return time.Duration(rand.Int64N(int64(d) + 1))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (c *Client) doJSON(ctx context.Context, r request, out any) error {
	resp, err := c.do(ctx, r)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return c.decodeJSON(resp.Body, out)
}

func (c *Client) maxResponse() int64 {
	if c.MaxResponseBytes > 0 {
		return c.MaxResponseBytes
	}
	return MaxResponseSize
}

func (c *Client) decodeJSON(r io.Reader, out any) error {
	dec := json.NewDecoder(io.LimitReader(r, c.maxResponse()))
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("decode response: %w", err)
	}
	return nil
}

func jsonBody(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // wire types always marshal
	}
	return b
}

// GetContract fetches contract metadata. With a non-empty etag it makes a
// conditional request and returns ErrNotModified when it still matches.
func (c *Client) GetContract(ctx context.Context, id, etag string) (*Contract, string, error) {
	h := http.Header{}
	if etag != "" {
		h.Set("If-None-Match", etag)
	}
	resp, err := c.do(ctx, request{method: http.MethodGet, url: c.URL("contracts", id), header: h, retry: true, accept2: http.StatusNotModified})
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotModified {
		return nil, etag, ErrNotModified
	}
	var ct Contract
	if err := c.decodeJSON(resp.Body, &ct); err != nil {
		return nil, "", err
	}
	return &ct, resp.Header.Get("ETag"), nil
}

// CreateContract creates a contract with the registry's admin token and
// returns it as the registry completed it.
func (c *Client) CreateContract(ctx context.Context, adminToken string, ct *Contract) (*Contract, error) {
	h := http.Header{"Authorization": {"Bearer " + adminToken}}
	var out Contract
	err := c.doJSON(ctx, request{method: http.MethodPost, url: c.URL("contracts"), body: jsonBody(ct), ctype: "application/json", header: h}, &out)
	return &out, err
}

// RequestToken asks for a capability token bound to req.JWK; Proof must
// sign with that key.
func (c *Client) RequestToken(ctx context.Context, id string, req TokenRequest) (*TokenResponse, error) {
	var out TokenResponse
	err := c.doJSON(ctx, request{method: http.MethodPost, url: c.URL("contracts", id, "request"), body: jsonBody(req), ctype: "application/json", proof: true, retry: true}, &out)
	return &out, err
}

// AppendResult answers POST /provenance/{id}/events.
type AppendResult struct {
	Seq      uint64 `json:"seq"`
	LeafHash []byte `json:"leaf_hash"`
}

// AppendAttestation submits a contributor-signed attestation (compact JWS).
func (c *Client) AppendAttestation(ctx context.Context, id, jws string) (*AppendResult, error) {
	var out AppendResult
	err := c.doJSON(ctx, request{method: http.MethodPost, url: c.URL("provenance", id, "events"), body: []byte(jws), ctype: "application/jose"}, &out)
	return &out, err
}

// Events reads a page of entries with seq > since.
func (c *Client) Events(ctx context.Context, id string, since uint64, limit int) (*EventsPage, error) {
	u := c.URL("provenance", id, "events") + "?since=" + strconv.FormatUint(since, 10) + "&limit=" + strconv.Itoa(limit)
	var out EventsPage
	err := c.doJSON(ctx, request{method: http.MethodGet, url: u, retry: true}, &out)
	return &out, err
}

// ErrEventTooLarge: a live-feed event went past MaxStreamEventSize; the
// stream was dropped (a caller should poll instead).
var ErrEventTooLarge = errors.New("live feed event too large")

// Stream follows the live feed of entries with seq > since until ctx ends
// or fn returns an error. The feed's "entry" events carry WireEntry JSON.
func (c *Client) Stream(ctx context.Context, id string, since uint64, fn func(WireEntry) error) error {
	u := c.URL("provenance", id, "events", "stream") + "?since=" + strconv.FormatUint(since, 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	hc := *c.HTTP
	hc.Timeout = 0 // a stream lives as long as ctx
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ReadError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), MaxStreamEventSize+64)
	var event string
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case len(line) == 0:
			if event == "entry" && len(data) > 0 {
				var we WireEntry
				if err := json.Unmarshal(data, &we); err != nil {
					return fmt.Errorf("stream: bad entry event: %w", err)
				}
				if err := fn(we); err != nil {
					return err
				}
			}
			event, data = "", data[:0]
		case bytes.HasPrefix(line, []byte("event:")):
			event = strings.TrimSpace(string(line[len("event:"):]))
		case bytes.HasPrefix(line, []byte("data:")):
			d := bytes.TrimSpace(line[len("data:"):])
			if len(data)+len(d) > MaxStreamEventSize {
				return fmt.Errorf("stream: %w: over %d bytes", ErrEventTooLarge, MaxStreamEventSize)
			}
			data = append(data, d...)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("stream: %w: a line over %d bytes", ErrEventTooLarge, MaxStreamEventSize)
		}
		return fmt.Errorf("stream: %w", err)
	}
	return io.ErrUnexpectedEOF
}

func (c *Client) getBytes(ctx context.Context, u string) ([]byte, error) {
	resp, err := c.do(ctx, request{method: http.MethodGet, url: u, retry: true})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, c.maxResponse()))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", u, err)
	}
	return b, nil
}

// Checkpoint fetches the latest signed checkpoint (a C2SP signed note).
func (c *Client) Checkpoint(ctx context.Context, id string) ([]byte, error) {
	return c.getBytes(ctx, c.URL("provenance", id, "checkpoint"))
}

// Snapshot fetches the signed checkpoint in force at time at.
func (c *Client) Snapshot(ctx context.Context, id string, at time.Time) ([]byte, error) {
	return c.getBytes(ctx, c.URL("provenance", id, "snapshot")+"?at="+strconv.FormatInt(at.Unix(), 10))
}

// InclusionProof fetches the proof that entry seq is in the tree of size.
func (c *Client) InclusionProof(ctx context.Context, id string, seq, size uint64) (*InclusionProof, error) {
	u := c.URL("provenance", id, "proof", "inclusion") + "?seq=" + strconv.FormatUint(seq, 10) + "&size=" + strconv.FormatUint(size, 10)
	var out InclusionProof
	err := c.doJSON(ctx, request{method: http.MethodGet, url: u, retry: true}, &out)
	return &out, err
}

// ConsistencyProof fetches the proof that tree size from is a prefix of to.
func (c *Client) ConsistencyProof(ctx context.Context, id string, from, to uint64) (*ConsistencyProof, error) {
	u := c.URL("provenance", id, "proof", "consistency") + "?from=" + strconv.FormatUint(from, 10) + "&to=" + strconv.FormatUint(to, 10)
	var out ConsistencyProof
	err := c.doJSON(ctx, request{method: http.MethodGet, url: u, retry: true}, &out)
	return &out, err
}

// VerifyCheckpoint asks the registry to check a checkpoint against its log.
func (c *Client) VerifyCheckpoint(ctx context.Context, req VerifyRequest) (*VerifyResponse, error) {
	var out VerifyResponse
	err := c.doJSON(ctx, request{method: http.MethodPost, url: c.URL("provenance", "verify"), body: jsonBody(req), ctype: "application/json", retry: true}, &out)
	return &out, err
}

// PostMetering sends a signed metering batch. The idempotency key makes
// retries safe; the registry also deduplicates by event id.
func (c *Client) PostMetering(ctx context.Context, id, token, idempotencyKey, jws string) (*MeteringResponse, error) {
	h := http.Header{HeaderIdempotencyKey: {idempotencyKey}}
	var out MeteringResponse
	err := c.doJSON(ctx, request{method: http.MethodPost, url: c.URL("provenance", id, "metering"), body: []byte(jws), ctype: "application/jose", header: h, token: token, proof: true, retry: true}, &out)
	return &out, err
}

// MeteringTotals reads the registry's metering sums; job and epoch filter
// when non-empty / non-negative.
func (c *Client) MeteringTotals(ctx context.Context, id, job string, epoch int64) (*MeteringTotals, error) {
	r, err := c.MeteringReport(ctx, id, TotalsFilter{Job: job, Epoch: epoch})
	if err != nil {
		return &MeteringTotals{}, err
	}
	return &r.MeteringTotals, nil
}

// MeteringReport reads the registry's metering totals with their detail
// by outcome and by licensee.
func (c *Client) MeteringReport(ctx context.Context, id string, f TotalsFilter) (*MeteringReport, error) {
	q := url.Values{}
	if f.Job != "" {
		q.Set("job", f.Job)
	}
	if f.Epoch >= 0 {
		q.Set("epoch", strconv.FormatInt(f.Epoch, 10))
	}
	if f.Licensee != "" {
		q.Set("licensee", f.Licensee)
	}
	u := c.URL("provenance", id, "metering", "totals")
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var out MeteringReport
	err := c.doJSON(ctx, request{method: http.MethodGet, url: u, retry: true}, &out)
	return &out, err
}

// Presign asks for short-lived GET URLs for names of the contract.
func (c *Client) Presign(ctx context.Context, id, token string, names []string) (*PresignResponse, error) {
	var out PresignResponse
	err := c.doJSON(ctx, request{method: http.MethodPost, url: c.URL("contracts", id, "objects", "presign"), body: jsonBody(PresignRequest{Names: names}), ctype: "application/json", token: token, proof: true, retry: true}, &out)
	return &out, err
}

// JWKS fetches a key set: the registry's (RegistryJWKSPath), a
// contributor's, or any jwks_uri.
func (c *Client) JWKS(ctx context.Context, u string) (*jose.JSONWebKeySet, error) {
	var out jose.JSONWebKeySet
	err := c.doJSON(ctx, request{method: http.MethodGet, url: u, retry: true}, &out)
	return &out, err
}

// RegistryJWKSURL is the registry's own key set.
func (c *Client) RegistryJWKSURL() string { return c.URL(".well-known", "jwks.json") }

// ContributorJWKSURL is where the registry serves a contributor's keys.
func (c *Client) ContributorJWKSURL(contributor string) string {
	return c.URL("contributors", contributor, "jwks.json")
}

// UpdateContract appends a new version of a contract's terms (admin) and
// returns the document the registry now serves, with its terms_seq. A
// zero effective is "at once".
func (c *Client) UpdateContract(ctx context.Context, adminToken string, ct *Contract, effective time.Time) (*Contract, error) {
	h := http.Header{"Authorization": {"Bearer " + adminToken}}
	var out Contract
	err := c.doJSON(ctx, request{method: http.MethodPost, url: c.URL("contracts", ct.ContractID, "versions"),
		body: jsonBody(&ContractUpdate{Terms: *ct, EffectiveFrom: effective}), ctype: "application/json", header: h}, &out)
	return &out, err
}

// ContractVersions lists the log entries that hold a contract's terms,
// oldest first (unverified: check them with verify).
func (c *Client) ContractVersions(ctx context.Context, id string) ([]WireEntry, error) {
	var out []WireEntry
	err := c.doJSON(ctx, request{method: http.MethodGet, url: c.URL("contracts", id, "versions"), retry: true}, &out)
	return out, err
}
