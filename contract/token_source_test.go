package contract_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// outage is a loopback reverse proxy in front of the registry that can be
// switched off (502 from the proxy, as a load balancer would answer).
type outage struct {
	*httptest.Server
	down  atomic.Bool
	proxy atomic.Pointer[httputil.ReverseProxy]
}

func newOutage(t *testing.T) *outage {
	o := &outage{}
	o.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rp := o.proxy.Load()
		if o.down.Load() || rp == nil {
			http.Error(w, "registry unreachable", http.StatusBadGateway)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(o.Close)
	return o
}

func (o *outage) to(t *testing.T, target string) {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	o.proxy.Store(httputil.NewSingleHostReverseProxy(u))
}

type tokenFixture struct {
	h        *registrytest.Harness
	contract *contract.Contract
	key      *jose.JSONWebKey
	client   *contract.Client
	proxy    *outage
}

func newTokenFixture(t *testing.T, ttl time.Duration) *tokenFixture {
	t.Helper()
	// Clients reach the registry through the proxy, so the registry checks
	// DPoP proofs against the proxy's URL.
	p := newOutage(t)
	h := registrytest.Start(t, registrytest.WithConfig(func(c *registry.Config) { c.TokenTTL, c.PublicURL = ttl, p.URL }))
	p.to(t, h.URL)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:tok1", "bucket", alice))
	key, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	client, err := contract.NewClient(p.URL)
	if err != nil {
		t.Fatal(err)
	}
	client.Proof = verify.ProofFunc(key)
	client.BaseDelay, client.MaxDelay, client.MaxAttempts = 5*time.Millisecond, 20*time.Millisecond, 2
	return &tokenFixture{h: h, contract: c, key: key, client: client, proxy: p}
}

func (fx *tokenFixture) source(t *testing.T, req contract.TokenRequester, contractID string) *contract.TokenSource {
	t.Helper()
	// The registry's keys are read directly, not through the outage proxy.
	check, err := verify.NewCapabilityChecker(verify.NewJWKSCache(fx.h.Client.RegistryJWKSURL(), fx.h.Client), contractID, fx.key, nil)
	if err != nil {
		t.Fatal(err)
	}
	enrolment := fx.h.Enrol(t, contractID, fx.key)
	s, err := contract.NewTokenSource(contract.TokenSourceConfig{
		Registry: req, Contract: contractID, Purpose: "training", JWK: fx.key.Public(), Check: check,
		Enrolment: func(context.Context) (string, error) { return enrolment, nil },
		MinRetry:  50 * time.Millisecond, MaxRetry: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func wait(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTokenSourceRefreshAndOutage: a token from the real registry, bound to
// the sidecar key; refreshed at about 2/3 of its life; during an outage the
// current token is kept until it expires, then the source fails closed
// (ErrTokenUnavailable); when the registry is back, a new token comes.
func TestTokenSourceRefreshAndOutage(t *testing.T) {
	fx := newTokenFixture(t, 3*time.Second)
	s := fx.source(t, fx.client, fx.contract.ContractID)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()

	ctx := context.Background()
	tok, claims, err := s.Token(ctx)
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	jkt, _ := verify.Thumbprint(fx.key)
	if claims.Contract != fx.contract.ContractID || claims.Confirm.JKT != jkt || tok == "" {
		t.Fatalf("claims %+v", claims)
	}
	st := s.Status()
	if st.State != contract.TokenValid || st.TokenID != claims.ID {
		t.Fatalf("status %+v", st)
	}
	life := time.Unix(claims.Expiry, 0).Sub(time.Unix(claims.IssuedAt, 0))
	if at := st.RefreshAt.Sub(time.Unix(claims.IssuedAt, 0)); at < life/2 || at > life*3/4 {
		t.Fatalf("refresh scheduled %v into a %v lifetime, want about 2/3", at, life)
	}

	// Refreshed before expiry.
	first := claims.ID
	wait(t, "a refresh", 5*time.Second, func() bool { return s.Status().TokenID != first })
	_, c2, err := s.Token(ctx)
	if err != nil || c2.ID == first {
		t.Fatalf("after refresh: %+v %v", c2, err)
	}

	// Outage: the current token is kept until it expires.
	fx.proxy.down.Store(true)
	held := c2.ID
	wait(t, "a failed refresh", 5*time.Second, func() bool { return s.Status().State == contract.TokenDegraded })
	if _, c3, err := s.Token(ctx); err != nil || c3.ID != held {
		t.Fatalf("during the outage, before expiry: %+v %v", c3, err)
	}
	wait(t, "expiry", 5*time.Second, func() bool { return s.Status().State == contract.TokenExpired })
	if _, _, err := s.Token(ctx); !errors.Is(err, contract.ErrTokenUnavailable) {
		t.Fatalf("after expiry: Token = %v, want ErrTokenUnavailable", err)
	}

	// Back: a new token without a restart.
	fx.proxy.down.Store(false)
	wait(t, "recovery", 5*time.Second, func() bool { return s.Status().State == contract.TokenValid })
	if _, c4, err := s.Token(ctx); err != nil || c4.ID == held {
		t.Fatalf("after recovery: %+v %v", c4, err)
	}
}

// misroute asks the registry for something other than what the source
// wants: a token for another contract, or bound to another key (with the
// enrolment that fits, so that the registry issues it).
type misroute struct {
	*contract.Client
	contract string
	jwk      *jose.JSONWebKey
	enrol    func(contractID string, key *jose.JSONWebKey) string
}

func (m *misroute) RequestToken(ctx context.Context, id string, req contract.TokenRequest) (*contract.TokenResponse, error) {
	if m.contract != "" {
		id = m.contract
	}
	if m.jwk != nil {
		req.JWK = m.jwk.Public()
	}
	req.Enrolment = m.enrol(id, &req.JWK)
	return m.Client.RequestToken(ctx, id, req)
}

// TestTokenSourceRefusesMisboundTokens: a token for another contract or
// bound to another key is refused by the holder, never used.
func TestTokenSourceRefusesMisboundTokens(t *testing.T) {
	fx := newTokenFixture(t, time.Minute)
	alice := fx.h.NewContributor(t, "did:example:alice2")
	other := fx.h.CreateContract(t, registrytest.NewContract("did:example:tok2", "bucket", alice))
	otherKey, _ := verify.GenerateKey(jose.EdDSA)
	otherClient, _ := contract.NewClient(fx.proxy.URL)
	otherClient.Proof = verify.ProofFunc(otherKey)
	enrol := func(id string, k *jose.JSONWebKey) string { return fx.h.Enrol(t, id, k) }

	for _, tc := range []struct {
		name string
		req  contract.TokenRequester
		want error
	}{
		{"another contract", &misroute{Client: fx.client, contract: other.ContractID, enrol: enrol}, verify.ErrWrongContract},
		{"another key", &misroute{Client: otherClient, jwk: otherKey, enrol: enrol}, verify.ErrWrongKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fx.source(t, tc.req, fx.contract.ContractID)
			err := s.Refresh(context.Background())
			if !errors.Is(err, tc.want) {
				t.Fatalf("Refresh = %v, want %v", err, tc.want)
			}
			if _, _, err := s.Token(context.Background()); !errors.Is(err, contract.ErrTokenUnavailable) {
				t.Fatalf("Token = %v, want ErrTokenUnavailable", err)
			}
			if st := s.Status(); st.State != contract.TokenExpired || st.LastError == "" {
				t.Fatalf("status %+v", st)
			}
		})
	}
}

// TestTokenSourceSendsTheEnrolment: without an enrolment the registry
// refuses (403 not_enrolled, kept as the status's last error); the source
// asks for the enrolment at every request, so a renewed one is used
// without a restart.
func TestTokenSourceSendsTheEnrolment(t *testing.T) {
	fx := newTokenFixture(t, time.Minute)
	check, err := verify.NewCapabilityChecker(verify.NewJWKSCache(fx.h.Client.RegistryJWKSURL(), fx.h.Client), fx.contract.ContractID, fx.key, nil)
	if err != nil {
		t.Fatal(err)
	}
	var current atomic.Value
	current.Store("")
	s, err := contract.NewTokenSource(contract.TokenSourceConfig{
		Registry: fx.client, Contract: fx.contract.ContractID, Purpose: "training", JWK: fx.key.Public(), Check: check,
		Enrolment: func(context.Context) (string, error) { return current.Load().(string), nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Refresh(context.Background()); contract.CodeOf(err) != contract.CodeNotEnrolled {
		t.Fatalf("without an enrolment: %v, want not_enrolled", err)
	}
	if st := s.Status(); st.LastError == "" {
		t.Fatalf("status %+v does not say why", st)
	}
	current.Store(fx.h.Enrol(t, fx.contract.ContractID, fx.key))
	if err := s.Refresh(context.Background()); err != nil {
		t.Fatalf("with the enrolment: %v", err)
	}
	if _, claims, err := s.Token(context.Background()); err != nil || claims.Licensee != registrytest.DefaultLicenseeID || claims.Lease == "" {
		t.Fatalf("token = %+v %v, want one of the default licensee's lease", claims, err)
	}
}
