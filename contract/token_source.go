package contract

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// ErrTokenUnavailable: there is no unexpired capability token and the
// registry did not give a new one. The sidecar answers 503 for the
// contract.
var ErrTokenUnavailable = errors.New("capability token expired and not refreshable")

// TokenRequester asks the registry for a token; *Client satisfies it (its
// Proof must sign with the key in the request).
type TokenRequester interface {
	RequestToken(ctx context.Context, id string, req TokenRequest) (*TokenResponse, error)
}

var _ TokenRequester = (*Client)(nil)

// Token source defaults.
const (
	// DefaultRefreshFraction: a token is refreshed when this fraction of
	// its lifetime has passed ...
	DefaultRefreshFraction = 2.0 / 3.0
	// DefaultRefreshJitter: ... plus or minus this fraction of its
	// lifetime, so that many sidecars do not refresh at once.
	DefaultRefreshJitter = 0.05
	DefaultTokenMinRetry = time.Second
	DefaultTokenMaxRetry = 30 * time.Second
)

// Token source states, as TokenStatus.State.
const (
	TokenPending  = "pending"  // no token yet
	TokenValid    = "valid"    // a token, refreshed on schedule
	TokenDegraded = "degraded" // refresh failing; the current token is still valid
	TokenExpired  = "expired"  // no unexpired token: fail closed
)

// TokenSourceConfig configures a TokenSource. Registry, Contract, Purpose,
// JWK and Check are required.
type TokenSourceConfig struct {
	Registry TokenRequester
	Contract string
	Purpose  string
	Usage    Quota
	// JWK is the sidecar's public key; tokens are bound to it.
	JWK jose.JSONWebKey
	// Enrolment returns the licensee's enrolment of JWK under Contract
	// (JWS compact), sent with every token request; it is called each
	// time, so that a renewed enrolment is picked up. Nil: none is sent
	// (a registry that requires one refuses the request).
	Enrolment func(ctx context.Context) (string, error)
	// Check verifies each new token and returns its claims: the
	// registry's signature, the contract and the key binding
	// (verify.NewCapabilityChecker). A token that fails it is not used.
	Check  func(ctx context.Context, token string) (*CapabilityClaims, error)
	Logger *slog.Logger
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time

	RefreshFraction float64
	RefreshJitter   float64
	MinRetry        time.Duration
	MaxRetry        time.Duration
}

// TokenStatus is what /v1/contracts shows of a contract's token.
type TokenStatus struct {
	State     string    `json:"state"`
	TokenID   string    `json:"token_jti,omitempty"`
	Licensee  string    `json:"licensee,omitempty"`
	Lease     string    `json:"lease,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	RefreshAt time.Time `json:"refresh_at,omitzero"`
	LastError string    `json:"last_error,omitempty"`
}

// TokenSource keeps a valid capability token for one contract: it asks for
// one at Start, refreshes it at about two thirds of its lifetime (with
// jitter), retries with capped backoff when the registry fails, keeps the
// current token while it is unexpired, and fails closed after.
type TokenSource struct {
	cfg TokenSourceConfig
	log *slog.Logger

	mu      sync.Mutex
	token   string
	claims  *CapabilityClaims
	refresh time.Time
	lastErr error
	first   chan struct{} // closed after the first attempt

	wake   chan struct{}
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewTokenSource makes a token source; Start runs it.
func NewTokenSource(cfg TokenSourceConfig) (*TokenSource, error) {
	if cfg.Registry == nil || cfg.Contract == "" || cfg.Purpose == "" || cfg.JWK.Key == nil || cfg.Check == nil {
		return nil, errors.New("token source: Registry, Contract, Purpose, JWK and Check are required")
	}
	if !cfg.JWK.IsPublic() {
		cfg.JWK = cfg.JWK.Public()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RefreshFraction <= 0 || cfg.RefreshFraction >= 1 {
		cfg.RefreshFraction = DefaultRefreshFraction
	}
	if cfg.RefreshJitter < 0 || cfg.RefreshJitter >= cfg.RefreshFraction {
		cfg.RefreshJitter = DefaultRefreshJitter
	}
	if cfg.MinRetry <= 0 {
		cfg.MinRetry = DefaultTokenMinRetry
	}
	if cfg.MaxRetry < cfg.MinRetry {
		cfg.MaxRetry = max(DefaultTokenMaxRetry, cfg.MinRetry)
	}
	return &TokenSource{cfg: cfg, log: cfg.Logger.With("contract", cfg.Contract), first: make(chan struct{}), wake: make(chan struct{}, 1)}, nil
}

// Start fetches a token in the background and keeps it fresh until ctx
// ends or Stop.
func (s *TokenSource) Start(ctx context.Context) error {
	if s.cancel != nil {
		return errors.New("token source: already started")
	}
	ctx, s.cancel = context.WithCancel(ctx)
	s.wg.Go(func() { s.monitor(ctx) })
	return nil
}

// Stop stops the refresher and waits for it.
func (s *TokenSource) Stop() {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
}

// RefreshNow asks the refresher for a new token at once (for example after
// the registry refused the current one).
func (s *TokenSource) RefreshNow() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *TokenSource) monitor(ctx context.Context) {
	defer s.closeFirst()
	timer := time.NewTimer(0)
	defer timer.Stop()
	attempt := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-s.wake:
		}
		err := s.Refresh(ctx)
		s.closeFirst()
		if ctx.Err() != nil {
			return
		}
		var wait time.Duration
		if err == nil {
			attempt = 0
			s.mu.Lock()
			// Never sooner than MinRetry: a very short-lived token must not
			// turn the refresher into a busy loop.
			wait = max(s.refresh.Sub(s.cfg.Now()), s.cfg.MinRetry)
			s.mu.Unlock()
		} else {
			attempt++
			wait = max(Backoff(attempt, s.cfg.MinRetry, s.cfg.MaxRetry), s.cfg.MinRetry)
			st := s.Status()
			if st.State == TokenExpired {
				s.log.Error("no valid capability token; the contract fails closed", "attempt", attempt, "retry_in", wait, "err", err)
			} else {
				// Retry before the token expires.
				if left := st.ExpiresAt.Sub(s.cfg.Now()); left > 0 {
					wait = min(wait, max(left/2, s.cfg.MinRetry))
				}
				s.log.Warn("capability token refresh failed; keeping the current token", "expires_at", st.ExpiresAt, "retry_in", wait, "err", err)
			}
		}
		timer.Reset(max(wait, 0))
	}
}

func (s *TokenSource) closeFirst() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.first:
	default:
		close(s.first)
	}
}

// Refresh asks the registry for a new token now and, if it passes Check,
// makes it current. On failure the current token stays.
func (s *TokenSource) Refresh(ctx context.Context) error {
	req := TokenRequest{Purpose: s.cfg.Purpose, Usage: s.cfg.Usage, JWK: s.cfg.JWK}
	var err error
	if s.cfg.Enrolment != nil {
		if req.Enrolment, err = s.cfg.Enrolment(ctx); err != nil {
			s.mu.Lock()
			s.lastErr = err
			s.mu.Unlock()
			return fmt.Errorf("token for %s: %w", s.cfg.Contract, err)
		}
	}
	resp, err := s.cfg.Registry.RequestToken(ctx, s.cfg.Contract, req)
	if err == nil && resp.Token == "" {
		err = errors.New("registry returned no token")
	}
	var claims *CapabilityClaims
	if err == nil {
		if claims, err = s.cfg.Check(ctx, resp.Token); err != nil {
			err = fmt.Errorf("token refused: %w", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.lastErr = err
		return fmt.Errorf("token for %s: %w", s.cfg.Contract, err)
	}
	s.token, s.claims, s.lastErr = resp.Token, claims, nil
	s.refresh = s.refreshTime(claims)
	return nil
}

func (s *TokenSource) refreshTime(c *CapabilityClaims) time.Time {
	iat, exp := time.Unix(c.IssuedAt, 0), time.Unix(c.Expiry, 0)
	if c.IssuedAt == 0 || !iat.Before(exp) {
		iat = s.cfg.Now()
	}
	life := exp.Sub(iat)
	jitter := (rand.Float64()*2 - 1) * s.cfg.RefreshJitter
	return iat.Add(time.Duration(float64(life) * (s.cfg.RefreshFraction + jitter)))
}

// Token returns the current token and its claims. Before the first attempt
// has finished it waits for it (or ctx). With no unexpired token it fails
// with an error wrapping ErrTokenUnavailable.
func (s *TokenSource) Token(ctx context.Context) (string, *CapabilityClaims, error) {
	if s.cancel != nil {
		select {
		case <-s.first:
		case <-ctx.Done():
			return "", nil, fmt.Errorf("%w: %w", ErrTokenUnavailable, ctx.Err())
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.claims == nil || !s.cfg.Now().Before(time.Unix(s.claims.Expiry, 0)) {
		if s.lastErr != nil {
			return "", nil, fmt.Errorf("%w: %s: %w", ErrTokenUnavailable, s.cfg.Contract, s.lastErr)
		}
		return "", nil, fmt.Errorf("%w: %s", ErrTokenUnavailable, s.cfg.Contract)
	}
	c := *s.claims
	return s.token, &c, nil
}

// Status reports the token's state.
func (s *TokenSource) Status() TokenStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := TokenStatus{State: TokenPending}
	if s.lastErr != nil {
		st.LastError = s.lastErr.Error()
	}
	if s.claims == nil {
		if s.lastErr != nil {
			st.State = TokenExpired
		}
		return st
	}
	st.TokenID, st.ExpiresAt, st.RefreshAt = s.claims.ID, time.Unix(s.claims.Expiry, 0).UTC(), s.refresh.UTC()
	st.Licensee, st.Lease = s.claims.Licensee, s.claims.Lease
	switch {
	case !s.cfg.Now().Before(st.ExpiresAt):
		st.State = TokenExpired
	case s.lastErr != nil:
		st.State = TokenDegraded
	default:
		st.State = TokenValid
	}
	return st
}
