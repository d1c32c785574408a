package registry_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

func batchObjects(prefix string, n int) []contract.ObjectClaim {
	out := make([]contract.ObjectClaim, n)
	for i := range out {
		name := fmt.Sprintf("%s/%05d.txt", prefix, i)
		out[i] = registrytest.Object(name, []byte(name))
	}
	return out
}

// mustRefuseBatch posts a batch and checks the refusal, and that the log
// did not grow.
func mustRefuseBatch(t *testing.T, h *registrytest.Harness, contractID, jws string, manifest []byte, status int, code string) {
	t.Helper()
	ctx := context.Background()
	before, err := h.Client.Events(ctx, contractID, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.Client.AppendBatch(ctx, contractID, jws, manifest)
	if contract.StatusOf(err) != status || contract.CodeOf(err) != code {
		t.Fatalf("got %v, want %d %s", err, status, code)
	}
	after, err := h.Client.Events(ctx, contractID, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if after.TreeSize != before.TreeSize {
		t.Fatalf("log grew from %d to %d entries", before.TreeSize, after.TreeSize)
	}
}

// A batch is one entry; its manifest is served by digest, byte for byte,
// and each of its names is an object of the log: one can be redacted alone
// (by name, or naming the batch's entry), and is then gone for good.
func TestBatchAppendServeAndRedactOne(t *testing.T) {
	h, alice, c := setup(t)
	ctx := context.Background()
	objs := batchObjects("b", 3)
	jws, manifest := alice.SignBatch(t, c.ContractID, objs)
	res, err := h.Client.AppendBatch(ctx, c.ContractID, jws, manifest)
	if err != nil {
		t.Fatalf("append batch: %v", err)
	}
	page, err := h.Client.Events(ctx, c.ContractID, res.Seq-1, 1)
	if err != nil || len(page.Entries) != 1 {
		t.Fatalf("events: %v", err)
	}
	e, err := contract.DecodeEntry(page.Entries[0].Entry)
	if err != nil || e.JWS != jws {
		t.Fatalf("entry %d does not carry the batch attestation: %v", res.Seq, err)
	}
	got, err := h.Client.BatchManifest(ctx, c.ContractID, contract.ManifestDigest(manifest))
	if err != nil || !bytes.Equal(got, manifest) {
		t.Fatalf("manifest by digest: %v (equal %v)", err, bytes.Equal(got, manifest))
	}
	if _, err := h.Client.BatchManifest(ctx, c.ContractID, strings.Repeat("0", 64)); contract.StatusOf(err) != http.StatusNotFound {
		t.Fatalf("unknown digest: %v, want 404", err)
	}
	// One member, naming the batch's entry.
	redact := &contract.Attestation{Type: contract.Redaction, Redaction: &contract.RedactionClaim{Name: objs[1].Name, Seq: res.Seq}}
	alice.Append(t, c.ContractID, alice.Sign(t, c.ContractID, redact))
	again := &contract.Attestation{Type: contract.Redaction, Redaction: &contract.RedactionClaim{Name: objs[1].Name}}
	mustRefuse(t, h, c.ContractID, alice.Sign(t, c.ContractID, again), http.StatusConflict, contract.CodeConflict)
	// The others are still live.
	alice.Redact(t, c.ContractID, objs[2].Name)
}

// A manifest whose bytes are not those the attestation signs the digest
// of is refused, and nothing is appended.
func TestBatchManifestNotTheAttestedBytes(t *testing.T) {
	h, alice, c := setup(t)
	objs := batchObjects("b", 2)
	jws, manifest := alice.SignBatch(t, c.ContractID, objs)
	tampered := bytes.Replace(manifest, []byte(objs[0].DecodedSHA256), []byte(strings.Repeat("0", 64)), 2)
	mustRefuseBatch(t, h, c.ContractID, jws, tampered, http.StatusBadRequest, contract.CodeInvalidAttestation)
	mustRefuseBatch(t, h, c.ContractID, jws, manifest[:len(manifest)-1], http.StatusBadRequest, contract.CodeInvalidAttestation)
	// Another (valid) manifest under the same attestation.
	_, other := alice.SignBatch(t, c.ContractID, batchObjects("c", 2))
	mustRefuseBatch(t, h, c.ContractID, jws, other, http.StatusBadRequest, contract.CodeInvalidAttestation)
}

// A batch naming an object another contributor owns is refused whole:
// 403 naming the owner, and none of its names is taken.
func TestBatchClaimingAnothersNameRefused(t *testing.T) {
	h, alice, bob, _, id := ownersSetup(t)
	objs := append(batchObjects("bob", 2), registrytest.Object("img/0001.txt", []byte("poison")))
	jws, manifest := bob.SignBatch(t, id, objs)
	mustRefuseBatch(t, h, id, jws, manifest, http.StatusForbidden, contract.CodeForbidden)
	_, err := h.Client.AppendBatch(context.Background(), id, jws, manifest)
	if err == nil || !strings.Contains(err.Error(), alice.ID) {
		t.Fatalf("error %v does not name the owner %s", err, alice.ID)
	}
	// bob/00000.txt was not taken: alice may claim it.
	alice.Attest(t, id, registrytest.Object("bob/00000.txt", []byte("alice's now")))
}

// A manifest over the bound is refused with 413 before it is read.
func TestBatchManifestOverBound(t *testing.T) {
	h, alice, c := setup(t)
	jws, _ := alice.SignBatch(t, c.ContractID, batchObjects("b", 1))
	big := bytes.Repeat([]byte(" "), contract.MaxBatchManifestSize+1)
	mustRefuseBatch(t, h, c.ContractID, jws, big, http.StatusRequestEntityTooLarge, contract.CodeTooLarge)
	// Without a Content-Length (chunked), the bound holds as well.
	req, err := http.NewRequest(http.MethodPost, h.Client.URL("provenance", c.ContractID, "batches"), io.MultiReader(bytes.NewReader(big)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(contract.HeaderAttestation, jws)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked: status %d, want 413", resp.StatusCode)
	}
	// More objects than a manifest may list: the claim itself is invalid.
	a, _, err := verify.NewBatch(alice.ID, c.ContractID, batchObjects("b", 1))
	if err != nil {
		t.Fatal(err)
	}
	a.Batch.Objects = contract.MaxBatchObjects + 1
	if _, err := verify.SignAttestation(alice.Key, a); err == nil {
		t.Fatal("signed a batch claiming more objects than the bound")
	}
}

// Forged batch attestations (another key under the contributor's kid,
// alg none, HS256 keyed with the public key) are refused, and so is a
// batch posted without its manifest or a revoked key's batch.
func TestBatchForgedAttestationRefused(t *testing.T) {
	h, alice, c := setup(t)
	objs := batchObjects("b", 2)
	a, manifest, err := verify.NewBatch(alice.ID, c.ContractID, objs)
	if err != nil {
		t.Fatal(err)
	}
	mallory, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	mallory.KeyID = alice.Key.KeyID
	wrongKey, err := verify.SignAttestation(mallory, a)
	if err != nil {
		t.Fatal(err)
	}
	pub := alice.Key.Public()
	hs256 := compact(t, map[string]any{"alg": "HS256", "typ": contract.TypeAttestation, "kid": alice.Key.KeyID}, a,
		func(in []byte) []byte {
			m := hmac.New(sha256.New, []byte(pub.Key.(ed25519.PublicKey)))
			m.Write(in)
			return m.Sum(nil)
		})
	none := compact(t, map[string]any{"alg": "none", "typ": contract.TypeAttestation, "kid": alice.Key.KeyID}, a,
		func([]byte) []byte { return nil })
	for name, jws := range map[string]string{"wrong key": wrongKey, "HS256": hs256, "alg none": none} {
		t.Run(name, func(t *testing.T) {
			mustRefuseBatch(t, h, c.ContractID, jws, manifest, http.StatusForbidden, contract.CodeInvalidAttestation)
		})
	}
	t.Run("refused before its body is read", func(t *testing.T) {
		// A forged attestation with a body over the bound, sent without a
		// length: refused for the signature (403), not for the size.
		big := bytes.Repeat([]byte(" "), contract.MaxBatchManifestSize+1)
		req, err := http.NewRequest(http.MethodPost, h.Client.URL("provenance", c.ContractID, "batches"), io.MultiReader(bytes.NewReader(big)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(contract.HeaderAttestation, wrongKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("status %d, want 403", resp.StatusCode)
		}
	})
	t.Run("without its manifest", func(t *testing.T) {
		jws, _ := alice.SignBatch(t, c.ContractID, objs)
		mustRefuse(t, h, c.ContractID, jws, http.StatusBadRequest, contract.CodeInvalidAttestation)
	})
}

// A batch signed by a revoked key is refused.
func TestBatchRevokedKeyRefused(t *testing.T) {
	h, alice, c := setup(t)
	rev := &contract.Attestation{Type: contract.Revocation, Revocation: &contract.RevocationClaim{KeyID: alice.Key.KeyID}}
	alice.Append(t, c.ContractID, alice.Sign(t, c.ContractID, rev))
	jws, manifest := alice.SignBatch(t, c.ContractID, batchObjects("b", 2))
	mustRefuseBatch(t, h, c.ContractID, jws, manifest, http.StatusForbidden, contract.CodeRevokedKey)
}
