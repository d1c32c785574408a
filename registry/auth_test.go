package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// sidecar is a token holder: its key and a client that signs proofs.
type sidecar struct {
	key    *jose.JSONWebKey
	jkt    string
	client *contract.Client
	h      *registrytest.Harness
}

func newSidecar(t *testing.T, h *registrytest.Harness) *sidecar {
	t.Helper()
	k, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	jkt, _ := verify.Thumbprint(k)
	c, err := contract.NewClient(h.URL)
	if err != nil {
		t.Fatal(err)
	}
	c.MaxAttempts = 1
	c.Proof = func(method, url, token string) (string, error) {
		return verify.NewDPoPProof(k, method, url, token, time.Now())
	}
	return &sidecar{key: k, jkt: jkt, client: c, h: h}
}

func (s *sidecar) token(t *testing.T, contractID string, q contract.Quota) *contract.TokenResponse {
	t.Helper()
	tok, err := s.client.RequestToken(context.Background(), contractID, s.request(t, contractID, q))
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	return tok
}

// request is a token request for contractID enrolled by the harness's
// default licensee.
func (s *sidecar) request(t *testing.T, contractID string, q contract.Quota) contract.TokenRequest {
	t.Helper()
	return contract.TokenRequest{Purpose: "training", Usage: q, JWK: s.key.Public(), Enrolment: s.h.Enrol(t, contractID, s.key)}
}

func setup(t *testing.T, opts ...registrytest.Option) (*registrytest.Harness, *registrytest.Contributor, *contract.Contract) {
	t.Helper()
	h := registrytest.Start(t, opts...)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:c1", "bucket", alice))
	return h, alice, c
}

func TestTokenIsBoundToTheProofKey(t *testing.T) {
	ctx := context.Background()
	h, _, c := setup(t)
	sc := newSidecar(t, h)
	tok := sc.token(t, c.ContractID, contract.Quota{MaxSamples: 10})
	keys, err := h.Client.JWKS(ctx, h.Client.RegistryJWKSURL())
	if err != nil {
		t.Fatal(err)
	}
	claims, err := verify.VerifyCapability(tok.Token, keys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if claims.Confirm.JKT != sc.jkt || claims.Contract != c.ContractID || claims.Quota.MaxSamples != 10 || claims.Purpose != "training" {
		t.Fatalf("claims = %+v, want bound to %s", claims, sc.jkt)
	}
	if d := time.Until(tok.ExpiresAt); d <= 0 || d > 6*time.Minute {
		t.Fatalf("token expires in %s, want about 5m", d)
	}

	t.Run("purpose not allowed", func(t *testing.T) {
		req := sc.request(t, c.ContractID, contract.Quota{})
		req.Purpose = "ads"
		_, err := sc.client.RequestToken(ctx, c.ContractID, req)
		if contract.StatusOf(err) != http.StatusForbidden {
			t.Fatalf("got %v, want 403", err)
		}
	})
	t.Run("quota above the contract gets what is left", func(t *testing.T) {
		other := newSidecar(t, h)
		tok := other.token(t, c.ContractID, contract.Quota{MaxSamples: 1 << 40})
		claims, err := verify.VerifyCapability(tok.Token, keys, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if want := c.Usage.MaxSamples - 10; claims.Quota.MaxSamples != want {
			t.Fatalf("granted %d samples, want the %d left beside the first lease's 10", claims.Quota.MaxSamples, want)
		}
	})
	t.Run("proof by another key", func(t *testing.T) {
		other := newSidecar(t, h)
		_, err := other.client.RequestToken(ctx, c.ContractID, sc.request(t, c.ContractID, contract.Quota{}))
		if contract.StatusOf(err) != http.StatusUnauthorized {
			t.Fatalf("got %v, want 401", err)
		}
	})
	t.Run("no proof", func(t *testing.T) {
		cl, _ := contract.NewClient(h.URL)
		cl.Proof = func(string, string, string) (string, error) { return "", nil }
		_, err := cl.RequestToken(ctx, c.ContractID, sc.request(t, c.ContractID, contract.Quota{}))
		if contract.StatusOf(err) != http.StatusUnauthorized {
			t.Fatalf("got %v, want 401", err)
		}
	})
}

func batch(t *testing.T, sc *sidecar, contractID, batchID string, ids ...string) string {
	t.Helper()
	b := &contract.MeteringBatch{Contract: contractID, BatchID: batchID, Sidecar: sc.jkt, IssuedAt: time.Now().Unix()}
	for _, id := range ids {
		b.Events = append(b.Events, contract.MeteringEvent{ID: id, Time: time.Now().UTC(), Kind: contract.EventAccess, Name: "a/1.txt",
			Bytes: 100, Samples: 1, Units: 1, CostNanoUSD: 500000, Epoch: 1, Job: "job1"})
	}
	jws, err := verify.SignMeteringBatch(sc.key, b)
	if err != nil {
		t.Fatal(err)
	}
	return jws
}

func TestMeteringSameBatchTwiceCountsOnce(t *testing.T) {
	ctx := context.Background()
	h, _, c := setup(t)
	sc := newSidecar(t, h)
	tok := sc.token(t, c.ContractID, contract.Quota{})
	jws := batch(t, sc, c.ContractID, "b1", "e1", "e2", "e3")
	first, err := sc.client.PostMetering(ctx, c.ContractID, tok.Token, "k1", jws)
	if err != nil {
		t.Fatal(err)
	}
	if first.Accepted != 3 || first.Duplicates != 0 || first.Seq != 2 {
		t.Fatalf("first = %+v", first)
	}
	// Same key: the stored answer. Another key (a retry after losing the
	// idempotency record): the events are still counted once.
	again, err := sc.client.PostMetering(ctx, c.ContractID, tok.Token, "k1", jws)
	if err != nil || !reflect.DeepEqual(again, first) {
		t.Fatalf("retry with same key = %+v, %v; want %+v", again, err, first)
	}
	other, err := sc.client.PostMetering(ctx, c.ContractID, tok.Token, "k2", jws)
	if err != nil || other.Accepted != 0 || other.Duplicates != 3 || other.Seq != 0 {
		t.Fatalf("same batch, new key = %+v, %v", other, err)
	}
	tot, err := h.Client.MeteringTotals(ctx, c.ContractID, "", -1)
	if err != nil {
		t.Fatal(err)
	}
	if tot.Events != 3 || tot.AccessBytes != 300 || tot.CostNanoUSD != 1500000 {
		t.Fatalf("totals = %+v, want 3 events, 300 bytes", tot)
	}
	page, _ := h.Client.Events(ctx, c.ContractID, 1, 10)
	if len(page.Entries) != 1 {
		t.Fatalf("log has %d entries after its terms, want 1 metering entry", len(page.Entries))
	}
	// Reusing a key for another batch is a conflict.
	_, err = sc.client.PostMetering(ctx, c.ContractID, tok.Token, "k1", batch(t, sc, c.ContractID, "b9", "e9"))
	if contract.StatusOf(err) != http.StatusConflict {
		t.Fatalf("key reuse: got %v, want 409", err)
	}
}

func TestMeteringOverlappingBatchCountsEachEventOnce(t *testing.T) {
	ctx := context.Background()
	h, _, c := setup(t)
	sc := newSidecar(t, h)
	tok := sc.token(t, c.ContractID, contract.Quota{})
	if _, err := sc.client.PostMetering(ctx, c.ContractID, tok.Token, "k1", batch(t, sc, c.ContractID, "b1", "e1", "e2", "e3")); err != nil {
		t.Fatal(err)
	}
	resp, err := sc.client.PostMetering(ctx, c.ContractID, tok.Token, "k2", batch(t, sc, c.ContractID, "b2", "e2", "e3", "e4", "e5"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Accepted != 2 || resp.Duplicates != 2 || resp.Seq != 3 {
		t.Fatalf("overlap = %+v, want 2 accepted, 2 duplicates, seq 3", resp)
	}
	tot, err := h.Client.MeteringTotals(ctx, c.ContractID, "job1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if tot.Events != 5 || tot.AccessEvents != 5 || tot.Units != 5 {
		t.Fatalf("totals = %+v, want 5 events", tot)
	}
	page, _ := h.Client.Events(ctx, c.ContractID, 2, 10)
	e, err := contract.DecodeEntry(page.Entries[0].Entry)
	if err != nil {
		t.Fatal(err)
	}
	if e.Kind != contract.EntryMetering || fmt.Sprint(e.Accepted) != "[e4 e5]" {
		t.Fatalf("entry 3 = %s %v, want metering [e4 e5]", e.Kind, e.Accepted)
	}
	if tot, _ := h.Client.MeteringTotals(ctx, c.ContractID, "other-job", -1); tot.Events != 0 {
		t.Fatalf("other job totals = %+v", tot)
	}
}

// rawPost sends a request with exactly the given token and proof.
func rawPost(t *testing.T, url, token, proof string, body []byte) (int, contract.ErrorBody) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Authorization", "DPoP "+token)
	req.Header.Set("DPoP", proof)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var eb contract.ErrorBody
	json.Unmarshal(b, &eb)
	return resp.StatusCode, eb
}

func TestMeteringRefusals(t *testing.T) {
	ctx := context.Background()
	h, alice, c := setup(t)
	c2 := h.CreateContract(t, registrytest.NewContract("did:example:c2", "bucket", alice))
	sc := newSidecar(t, h)
	tok := sc.token(t, c.ContractID, contract.Quota{})
	url := h.Client.URL("provenance", c.ContractID, "metering")

	t.Run("proof by another key", func(t *testing.T) {
		thief := newSidecar(t, h)
		_, err := thief.client.PostMetering(ctx, c.ContractID, tok.Token, "x1", batch(t, thief, c.ContractID, "b", "t1"))
		if contract.StatusOf(err) != http.StatusUnauthorized {
			t.Fatalf("got %v, want 401", err)
		}
	})
	t.Run("replayed proof", func(t *testing.T) {
		proof, _ := verify.NewDPoPProof(sc.key, http.MethodPost, url, tok.Token, time.Now())
		if st, eb := rawPost(t, url, tok.Token, proof, []byte(batch(t, sc, c.ContractID, "b", "r1"))); st != http.StatusOK {
			t.Fatalf("first use: %d %+v", st, eb)
		}
		st, eb := rawPost(t, url, tok.Token, proof, []byte(batch(t, sc, c.ContractID, "b", "r2")))
		if st != http.StatusUnauthorized || eb.Error.Code != contract.CodeReplay {
			t.Fatalf("replay: %d %+v, want 401 replay", st, eb)
		}
	})
	t.Run("token for another contract", func(t *testing.T) {
		_, err := sc.client.PostMetering(ctx, c2.ContractID, tok.Token, "x2", batch(t, sc, c2.ContractID, "b", "o1"))
		if contract.StatusOf(err) != http.StatusForbidden {
			t.Fatalf("got %v, want 403", err)
		}
	})
	t.Run("batch signed by another key", func(t *testing.T) {
		other := newSidecar(t, h)
		_, err := sc.client.PostMetering(ctx, c.ContractID, tok.Token, "x3", batch(t, other, c.ContractID, "b", "s1"))
		if st := contract.StatusOf(err); st != http.StatusForbidden && st != http.StatusBadRequest {
			t.Fatalf("got %v, want 403", err)
		}
	})
	t.Run("no token", func(t *testing.T) {
		st, _ := rawPost(t, url, "", "", []byte("x"))
		if st != http.StatusUnauthorized {
			t.Fatalf("got %d, want 401", st)
		}
	})
	if tot, _ := h.Client.MeteringTotals(ctx, c.ContractID, "", -1); tot.Events != 1 {
		t.Fatalf("totals after refusals = %+v, want only r1", tot)
	}
}
