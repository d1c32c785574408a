package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/minio/minio-go/v7"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

func TestPresign(t *testing.T) {
	ctx := context.Background()
	mio := testenv.MinIO(t)
	bucket := mio.Bucket(t)
	h := registrytest.Start(t, registrytest.WithMinIO(mio.Endpoint, testenv.MinIOAccessKey, testenv.MinIOSecretKey))
	alice := h.NewContributor(t, "did:example:alice")
	spec := registrytest.NewContract("did:example:c1", bucket, alice)
	spec.Usage.MaxSamples = 6
	c := h.CreateContract(t, spec)
	for i := range 4 {
		name := fmt.Sprintf("a/%d.txt", i)
		data := []byte("object " + name)
		if _, err := mio.Client(t).PutObject(ctx, bucket, c.Origin.Key(name), bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		alice.Attest(t, c.ContractID, registrytest.Object(name, data))
	}
	alice.Redact(t, c.ContractID, "a/3.txt")
	sc := newSidecar(t, h)
	tok := sc.token(t, c.ContractID, contract.Quota{MaxSamples: 3})

	res, err := sc.client.Presign(ctx, c.ContractID, tok.Token, []string{"a/0.txt", "a/1.txt"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.URLs) != 2 || res.URLs[1].Name != "a/1.txt" || time.Until(res.URLs[0].ExpiresAt) > 6*time.Minute {
		t.Fatalf("presign = %+v", res)
	}
	resp, err := http.Get(res.URLs[1].URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "object a/1.txt" {
		t.Fatalf("GET presigned: %d %q", resp.StatusCode, body)
	}
	// The same URL without its signature reads nothing.
	unsigned := strings.SplitN(res.URLs[1].URL, "?", 2)[0]
	if resp, err := http.Get(unsigned); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("GET unsigned: %v %v", resp.Status, err)
	}

	// Each name is answered on its own: a refused name gets an error in
	// its place, in the wire shape {"name","error":{"code","message"}},
	// and the others their URLs.
	for _, tc := range []struct {
		name  string
		names []string
		codes []string // per name; "" for a URL
	}{
		{"not in the log", []string{"a/9.txt"}, []string{contract.CodeNotFound}},
		{"redacted", []string{"a/3.txt"}, []string{contract.CodeRedacted}},
		{"traversal", []string{"../etc/passwd"}, []string{contract.CodeBadRequest}},
		{"one redacted name fails no other", []string{"a/0.txt", "a/2.txt", "a/1.txt", "a/3.txt", "a/9.txt"},
			[]string{"", "", "", contract.CodeRedacted, contract.CodeNotFound}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := sc.client.Presign(ctx, c.ContractID, tok.Token, tc.names)
			if err != nil {
				t.Fatalf("presign: %v", err)
			}
			if len(res.URLs) != len(tc.names) {
				t.Fatalf("%d results for %d names", len(res.URLs), len(tc.names))
			}
			for i, u := range res.URLs {
				if u.Name != tc.names[i] {
					t.Errorf("result %d is for %q, want %q", i, u.Name, tc.names[i])
				}
				switch want := tc.codes[i]; {
				case want == "" && (u.Error != nil || u.URL == "" || u.ExpiresAt.IsZero()):
					t.Errorf("%s: %+v, want a URL", u.Name, u)
				case want != "" && (u.Error == nil || u.Error.Code != want || u.URL != "" || !u.ExpiresAt.IsZero()):
					t.Errorf("%s: %+v, want only error %s", u.Name, u, want)
				case want == contract.CodeRedacted && contract.StatusOf(u.Err()) != http.StatusUnavailableForLegalReasons:
					t.Errorf("%s: Err() = %v, want 451", u.Name, u.Err())
				}
			}
		})
	}
	// The all-good answer keeps its shape: name, url, expires_at only.
	raw := presignRaw(t, sc, c.ContractID, tok.Token, []string{"a/0.txt"})
	if !strings.Contains(raw, `"url":`) || !strings.Contains(raw, `"expires_at":`) || strings.Contains(raw, `"error"`) {
		t.Errorf("all-good presign response: %s", raw)
	}
	// Three distinct objects fit the quota of 3 (re-presigning one counts
	// once); a fourth does not.
	if _, err := sc.client.Presign(ctx, c.ContractID, tok.Token, []string{"a/0.txt", "a/2.txt"}); err != nil {
		t.Fatalf("third object: %v", err)
	}
	mio.Client(t).PutObject(ctx, bucket, c.Origin.Key("a/4.txt"), bytes.NewReader([]byte("4")), 1, minio.PutObjectOptions{})
	alice.Attest(t, c.ContractID, registrytest.Object("a/4.txt", []byte("4")))
	if _, err := sc.client.Presign(ctx, c.ContractID, tok.Token, []string{"a/4.txt"}); contract.CodeOf(err) != contract.CodeQuotaExceeded {
		t.Fatalf("fourth object: got %v, want quota_exceeded", err)
	}
	// A byte quota counts the stored bytes of distinct objects (another
	// sidecar's lease: the first one's grant is fixed while it is live).
	sc2 := newSidecar(t, h)
	small := sc2.token(t, c.ContractID, contract.Quota{MaxBytes: 20})
	if _, err := sc2.client.Presign(ctx, c.ContractID, small.Token, []string{"a/0.txt"}); err != nil {
		t.Fatalf("14 of 20 bytes: %v", err)
	}
	if _, err := sc2.client.Presign(ctx, c.ContractID, small.Token, []string{"a/1.txt"}); contract.CodeOf(err) != contract.CodeQuotaExceeded {
		t.Fatalf("28 of 20 bytes: got %v, want quota_exceeded", err)
	}
	// Without a token nothing is presigned.
	anon, _ := contract.NewClient(h.URL)
	anon.Proof = func(string, string, string) (string, error) { return "", nil }
	if _, err := anon.Presign(ctx, c.ContractID, "", []string{"a/0.txt"}); contract.StatusOf(err) != http.StatusUnauthorized {
		t.Fatalf("no token: got %v, want 401", err)
	}
}

func TestPresignDisabledWithoutS3(t *testing.T) {
	h, alice, c := setup(t)
	alice.Attest(t, c.ContractID, registrytest.Object("a", []byte("a")))
	sc := newSidecar(t, h)
	tok := sc.token(t, c.ContractID, contract.Quota{})
	_, err := sc.client.Presign(context.Background(), c.ContractID, tok.Token, []string{"a"})
	if contract.StatusOf(err) != http.StatusServiceUnavailable {
		t.Fatalf("got %v, want 503", err)
	}
}

func TestContractETag(t *testing.T) {
	ctx := context.Background()
	h, _, c := setup(t)
	got, etag, err := h.Client.GetContract(ctx, c.ContractID, "")
	if err != nil || etag == "" || got.Log != c.Log {
		t.Fatalf("get: %+v %q %v", got, etag, err)
	}
	if _, _, err := h.Client.GetContract(ctx, c.ContractID, etag); err != contract.ErrNotModified {
		t.Fatalf("conditional get: %v, want ErrNotModified", err)
	}
	if _, _, err := h.Client.GetContract(ctx, "did:example:nope", ""); contract.StatusOf(err) != http.StatusNotFound {
		t.Fatalf("unknown contract: %v", err)
	}
	if _, err := h.Client.CreateContract(ctx, h.AdminToken, registrytest.NewContract(c.ContractID, "b", h.NewContributor(t, "x"))); contract.StatusOf(err) != http.StatusConflict {
		t.Fatalf("duplicate create: %v", err)
	}
	bad := registrytest.NewContract("did:example:bad", "b")
	if _, err := h.Client.CreateContract(ctx, h.AdminToken, bad); contract.StatusOf(err) != http.StatusBadRequest {
		t.Fatalf("contract without contributors: %v", err)
	}
	keys, err := h.Client.JWKS(ctx, h.Client.ContributorJWKSURL("did:example:alice"))
	if err != nil || len(keys.Keys) != 1 || !keys.Keys[0].IsPublic() {
		t.Fatalf("contributor jwks: %+v %v", keys, err)
	}
}

func TestProofsAndVerifyEndpoint(t *testing.T) {
	ctx := context.Background()
	h, alice, c := setup(t)
	v, _ := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	var cps []*verify.Checkpoint
	var leaves [][]byte
	raw, _ := h.Client.Checkpoint(ctx, c.ContractID)
	first, err := v.Parse(raw)
	if err != nil || first.Size != 1 {
		t.Fatalf("a new contract's checkpoint: %+v %v, want size 1 (its terms)", first, err)
	}
	cps = append(cps, first)
	for i := 2; i <= 13; i++ {
		alice.Attest(t, c.ContractID, registrytest.Object(fmt.Sprint(i), []byte{byte(i)}))
		raw, _ := h.Client.Checkpoint(ctx, c.ContractID)
		cp, err := v.Parse(raw)
		if err != nil || cp.Size != uint64(i) {
			t.Fatalf("checkpoint after %d appends: %+v %v", i, cp, err)
		}
		cps = append(cps, cp)
	}
	page, _ := h.Client.Events(ctx, c.ContractID, 0, 100)
	for _, we := range page.Entries {
		leaves = append(leaves, contract.LeafHash(we.Entry))
	}
	for from := 1; from <= 13; from++ {
		for to := from; to <= 13; to++ {
			p, err := h.Client.ConsistencyProof(ctx, c.ContractID, uint64(from), uint64(to))
			if err != nil {
				t.Fatal(err)
			}
			if err := verify.VerifyConsistency(cps[from-1], cps[to-1], p.Hashes); err != nil {
				t.Fatalf("consistency %d->%d: %v", from, to, err)
			}
		}
		ip, err := h.Client.InclusionProof(ctx, c.ContractID, uint64(from), 13)
		if err != nil {
			t.Fatal(err)
		}
		if err := verify.VerifyInclusion(cps[12], uint64(from), leaves[from-1], ip.Hashes); err != nil {
			t.Fatalf("inclusion %d: %v", from, err)
		}
	}
	if _, err := h.Client.ConsistencyProof(ctx, c.ContractID, 5, 14); contract.StatusOf(err) != http.StatusBadRequest {
		t.Fatalf("proof beyond the log: %v", err)
	}

	res, err := h.Client.VerifyCheckpoint(ctx, contract.VerifyRequest{Contract: c.ContractID, Checkpoint: string(cps[4].Raw)})
	if err != nil || !res.Consistent || res.TreeSize != 13 || res.Proof == nil {
		t.Fatalf("verify old checkpoint: %+v %v", res, err)
	}
	latest, _ := v.Parse([]byte(res.Checkpoint))
	if err := verify.VerifyConsistency(cps[4], latest, res.Proof.Hashes); err != nil {
		t.Fatal(err)
	}
	// A checkpoint signed by the log's key for another tree is a fork.
	// (We cannot sign one without the key: a tampered one is refused.)
	forged := bytes.Replace(cps[4].Raw, []byte("\n5\n"), []byte("\n6\n"), 1)
	if _, err := h.Client.VerifyCheckpoint(ctx, contract.VerifyRequest{Contract: c.ContractID, Checkpoint: string(forged)}); contract.CodeOf(err) != contract.CodeVerification {
		t.Fatalf("forged checkpoint: %v", err)
	}
}

func TestSnapshotAndResign(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	offset := time.Duration(0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return time.Now().Add(offset) }
	advance := func(d time.Duration) { mu.Lock(); offset += d; mu.Unlock() }
	h, alice, c := setup(t, registrytest.WithClock(clock))
	v, _ := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	alice.Attest(t, c.ContractID, registrytest.Object("a", []byte("a")))
	t1 := clock()
	advance(time.Hour)
	alice.Attest(t, c.ContractID, registrytest.Object("b", []byte("b")))
	advance(time.Hour)
	if err := h.Server.ResignCheckpoints(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		at   time.Time
		size uint64
	}{{t1, 2}, {t1.Add(90 * time.Minute), 3}, {clock(), 3}} {
		raw, err := h.Client.Snapshot(ctx, c.ContractID, tc.at)
		if err != nil {
			t.Fatal(err)
		}
		cp, err := v.Parse(raw)
		if err != nil || cp.Size != tc.size {
			t.Fatalf("snapshot at %s: %+v %v, want size %d", tc.at, cp, err, tc.size)
		}
	}
	if _, err := h.Client.Snapshot(ctx, c.ContractID, t1.Add(-24*time.Hour)); contract.StatusOf(err) != http.StatusNotFound {
		t.Fatalf("snapshot before the log: %v", err)
	}
}

func TestStream(t *testing.T) {
	h, alice, c := setup(t)
	alice.Attest(t, c.ContractID, registrytest.Object("a", []byte("a")))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := make(chan uint64, 10)
	done := make(chan error, 1)
	go func() {
		done <- h.Client.Stream(ctx, c.ContractID, 0, func(we contract.WireEntry) error {
			got <- we.Seq
			if we.Seq == 3 {
				return io.EOF
			}
			return nil
		})
	}()
	if resp, err := http.Get(h.URL + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %v", err)
	}
	if seq := <-got; seq != 1 {
		t.Fatalf("first streamed seq = %d", seq)
	}
	alice.Attest(t, c.ContractID, registrytest.Object("b", []byte("b")))
	alice.Attest(t, c.ContractID, registrytest.Object("c", []byte("c")))
	for want := uint64(2); want <= 3; want++ {
		select {
		case seq := <-got:
			if seq != want {
				t.Fatalf("streamed seq %d, want %d", seq, want)
			}
		case <-ctx.Done():
			t.Fatal("live entry not streamed")
		}
	}
	if err := <-done; err != io.EOF {
		t.Fatalf("stream ended with %v", err)
	}
}

func TestKeyRotation(t *testing.T) {
	ctx := context.Background()
	h, _, c := setup(t)
	sc := newSidecar(t, h)
	old := sc.token(t, c.ContractID, contract.Quota{})
	oldKID, _ := verify.PeekKeyID(old.Token, contract.TypeCapability)
	next, err := verify.GenerateKey(jose.ES256)
	if err != nil {
		t.Fatal(err)
	}
	// As `provgate registry rotate-key` does, against the live database.
	if err := registry.RotateKey(ctx, h.DBPath, next, time.Now()); err != nil {
		t.Fatal(err)
	}
	keys, err := h.Client.JWKS(ctx, h.Client.RegistryJWKSURL())
	if err != nil || len(keys.Keys) != 2 || len(keys.Key(oldKID)) != 1 || len(keys.Key(next.KeyID)) != 1 {
		t.Fatalf("jwks after rotation: %+v %v", keys, err)
	}
	tok := sc.token(t, c.ContractID, contract.Quota{})
	if kid, _ := verify.PeekKeyID(tok.Token, contract.TypeCapability); kid != next.KeyID {
		t.Fatalf("new token signed by %q, want %q", kid, next.KeyID)
	}
	// A token signed by the old key still works in its transition window.
	if _, err := sc.client.PostMetering(ctx, c.ContractID, old.Token, "k", batch(t, sc, c.ContractID, "b", "e1")); err != nil {
		t.Fatalf("old token after rotation: %v", err)
	}
}

func TestRegistryRestartKeepsState(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg := registry.Config{DBPath: dir + "/r.db", AdminToken: "t", Name: "restart"}
	s1, err := registry.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	vkey := s1.CheckpointVerifierKey()
	s1.Close()
	s2, err := registry.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.CheckpointVerifierKey() != vkey {
		t.Fatal("checkpoint key changed across a restart")
	}
}

func TestRestartContinuesTheLog(t *testing.T) {
	ctx := context.Background()
	db := t.TempDir() + "/r.db"
	opt := registrytest.WithConfig(func(c *registry.Config) { c.DBPath = db })
	h1 := registrytest.Start(t, opt)
	alice := h1.NewContributor(t, "did:example:alice")
	c := h1.CreateContract(t, registrytest.NewContract("did:example:c1", "bucket", alice))
	for i := range 5 {
		alice.Attest(t, c.ContractID, registrytest.Object(fmt.Sprint(i), []byte{byte(i)}))
	}
	h1.Server.Close()

	h2 := registrytest.Start(t, opt)
	res, err := h2.Client.AppendAttestation(ctx, c.ContractID, alice.Sign(t, c.ContractID, attestation(alice.ID, c.ContractID, "after-restart")))
	if err != nil || res.Seq != 7 {
		t.Fatalf("append after restart: %+v %v", res, err)
	}
	page, _ := h2.Client.Events(ctx, c.ContractID, 0, 100)
	chain, _ := verify.NewChain(c.ContractID, nil)
	for _, we := range page.Entries {
		if _, err := chain.Append(we.Seq, we.Entry); err != nil {
			t.Fatal(err)
		}
	}
	v, _ := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	raw, _ := h2.Client.Checkpoint(ctx, c.ContractID)
	cp, err := v.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := chain.CheckCheckpoint(cp); err != nil || cp.Size != 7 {
		t.Fatalf("after restart: size %d, %v", cp.Size, err)
	}
}

// TestCheckpointLoopKeepsAQuietLogFresh: with no appends, the registry
// still signs a newer checkpoint every interval.
func TestCheckpointLoopKeepsAQuietLogFresh(t *testing.T) {
	ctx := context.Background()
	h, _, c := setup(t, registrytest.WithConfig(func(c *registry.Config) { c.CheckpointInterval = 50 * time.Millisecond }))
	v, _ := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	raw, _ := h.Client.Checkpoint(ctx, c.ContractID)
	first, err := v.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		raw, _ := h.Client.Checkpoint(ctx, c.ContractID)
		cp, err := v.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if cp.Time.After(first.Time) { // signed times have one-second resolution
			if err := verify.CheckFresh(cp, time.Now(), 2*time.Second); err != nil || cp.Size != 1 {
				t.Fatalf("re-signed checkpoint %+v: %v", cp, err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no newer checkpoint than %s", first.Time)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestVerifyEndpointDetectsAFork: two registries sign with the same
// checkpoint key for one contract but hold different logs; each one's
// checkpoint is a fork to the other.
func TestVerifyEndpointDetectsAFork(t *testing.T) {
	ctx := context.Background()
	skey, _, _ := verify.GenerateCheckpointKey("fork.test")
	same := registrytest.WithConfig(func(c *registry.Config) { c.CheckpointKey = skey; c.Name = "fork.test" })
	a, b := registrytest.Start(t, same), registrytest.Start(t, same)
	alice := a.NewContributor(t, "did:example:alice")
	spec := registrytest.NewContract("did:example:c1", "bucket", alice)
	a.CreateContract(t, spec)
	b.CreateContract(t, spec)
	alice.Attest(t, spec.ContractID, registrytest.Object("a", []byte("a")))
	if _, err := b.Client.AppendAttestation(ctx, spec.ContractID, alice.Sign(t, spec.ContractID, attestation(alice.ID, spec.ContractID, "b"))); err != nil {
		t.Fatal(err)
	}
	cpA, _ := a.Client.Checkpoint(ctx, spec.ContractID)
	res, err := b.Client.VerifyCheckpoint(ctx, contract.VerifyRequest{Contract: spec.ContractID, Checkpoint: string(cpA)})
	if err != nil || res.Consistent || !strings.Contains(res.Message, "fork") {
		t.Fatalf("fork: %+v %v", res, err)
	}
}

// presignRaw posts a presign request by hand and returns the body as sent.
func presignRaw(t *testing.T, sc *sidecar, contractID, token string, names []string) string {
	t.Helper()
	u := sc.client.URL("contracts", contractID, "objects", "presign")
	body, _ := json.Marshal(contract.PresignRequest{Names: names})
	req, _ := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", contract.AuthSchemeDPoP+" "+token)
	proof, err := sc.client.Proof(http.MethodPost, u, token)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(contract.HeaderDPoP, proof)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("presign: %d %s", resp.StatusCode, b)
	}
	return string(b)
}
