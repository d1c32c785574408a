package meter

import (
	"context"
	"fmt"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
)

// RequestedTokens is a Tokens for offline tools and tests: it asks the
// registry for a token per contract with Key (Client.Proof must sign
// with it) and reuses it until a minute before it expires. The sidecar
// passes its refreshing token source instead.
type RequestedTokens struct {
	Client  *contract.Client
	Key     *jose.JSONWebKey
	Purpose string
	// Enrolment returns the licensee's enrolment of Key under a contract,
	// sent with its token requests; nil sends none.
	Enrolment func(contractID string) (string, error)

	mu     sync.Mutex
	tokens map[string]contract.TokenResponse
}

var _ Tokens = (*RequestedTokens)(nil)

// Token returns a token for contractID.
func (t *RequestedTokens) Token(ctx context.Context, contractID string) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tr, ok := t.tokens[contractID]; ok && time.Until(tr.ExpiresAt) > time.Minute {
		return tr.Token, nil
	}
	req := contract.TokenRequest{Purpose: t.Purpose, JWK: t.Key.Public()}
	if t.Enrolment != nil {
		var err error
		if req.Enrolment, err = t.Enrolment(contractID); err != nil {
			return "", fmt.Errorf("request token for %s: %w", contractID, err)
		}
	}
	tr, err := t.Client.RequestToken(ctx, contractID, req)
	if err != nil {
		return "", fmt.Errorf("request token for %s: %w", contractID, err)
	}
	if t.tokens == nil {
		t.tokens = map[string]contract.TokenResponse{}
	}
	t.tokens[contractID] = *tr
	return tr.Token, nil
}

// Invalidate forgets the token of contractID, so that the next Token asks
// for a new one (the Syncer calls it after a 401).
func (t *RequestedTokens) Invalidate(contractID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.tokens, contractID)
}
