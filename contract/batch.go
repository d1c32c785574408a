package contract

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Batch is the attestation type of a batch contribution: one signature
// over the digest of a manifest that lists many objects.
const Batch AttestationType = "batch"

// Batch manifest format and bounds. A manifest is at most
// MaxBatchManifestSize bytes and lists 1 to MaxBatchObjects objects; a
// registry refuses a larger one with 413 before it reads further, and a
// verifier refuses one served larger than its attested size.
const (
	BatchManifestVersion   = 1
	BatchManifestMediaType = "application/vnd.provgate.batch-manifest+json"
	MaxBatchManifestSize   = 8 << 20
	MaxBatchObjects        = 20000
	// HeaderAttestation carries the batch attestation (compact JWS) of
	// POST /provenance/{id}/batches, whose body is the manifest.
	HeaderAttestation = "Provgate-Attestation"
)

// BatchClaim is what a batch attestation signs about its manifest: its
// sha256, its size and how many objects it lists. The manifest's bytes are
// stored by the registry and fetched by digest; nothing in them is trusted
// until their sha256 and size match the claim.
type BatchClaim struct {
	ManifestSHA256 string `json:"manifest_sha256"`
	ManifestSize   int64  `json:"manifest_size"`
	Objects        int    `json:"objects"`
}

// BatchManifest is the document a batch attestation covers: every object
// of the batch, each with the same claims a single contribution makes.
type BatchManifest struct {
	V        int           `json:"v"`
	Contract string        `json:"contract"`
	Objects  []ObjectClaim `json:"objects"`
}

// Validate checks a batch claim's form.
func (c *BatchClaim) Validate() error {
	if !isSHA256Hex(c.ManifestSHA256) {
		return errors.New("attestation: batch manifest_sha256 must be 64 lowercase hex digits")
	}
	if c.ManifestSize <= 0 || c.ManifestSize > MaxBatchManifestSize {
		return fmt.Errorf("attestation: batch manifest_size must be 1 to %d bytes", MaxBatchManifestSize)
	}
	if c.Objects <= 0 || c.Objects > MaxBatchObjects {
		return fmt.Errorf("attestation: batch objects must be 1 to %d", MaxBatchObjects)
	}
	return nil
}

// ManifestDigest is the lowercase hex sha256 of a manifest's bytes.
func ManifestDigest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Open checks that b are the bytes the claim signs (size and sha256) and
// decodes them strictly for contract contractID: the object count must be
// the claimed one. Errors wrap ErrManifestDigest when the bytes are not
// the attested ones, ErrManifestInvalid when they are but do not decode.
func (c *BatchClaim) Open(b []byte, contractID string) (*BatchManifest, error) {
	if int64(len(b)) != c.ManifestSize {
		return nil, fmt.Errorf("%w: %d bytes, attested %d", ErrManifestDigest, len(b), c.ManifestSize)
	}
	if got := ManifestDigest(b); got != c.ManifestSHA256 {
		return nil, fmt.Errorf("%w: sha256 %s, attested %s", ErrManifestDigest, got, c.ManifestSHA256)
	}
	m, err := DecodeBatchManifest(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrManifestInvalid, err)
	}
	if m.Contract != contractID {
		return nil, fmt.Errorf("%w: manifest is for contract %q, not %q", ErrManifestInvalid, m.Contract, contractID)
	}
	if len(m.Objects) != c.Objects {
		return nil, fmt.Errorf("%w: manifest lists %d objects, attested %d", ErrManifestInvalid, len(m.Objects), c.Objects)
	}
	return m, nil
}

// Manifest errors.
var (
	ErrManifestDigest  = errors.New("batch manifest bytes are not the attested ones")
	ErrManifestInvalid = errors.New("batch manifest is invalid")
)

// EncodeBatchManifest returns the bytes of m (what a contributor signs the
// digest of), after checking it as DecodeBatchManifest would.
func EncodeBatchManifest(m *BatchManifest) ([]byte, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode batch manifest: %w", err)
	}
	if len(b) > MaxBatchManifestSize {
		return nil, fmt.Errorf("encode batch manifest: %d bytes exceeds %d", len(b), MaxBatchManifestSize)
	}
	return b, nil
}

// DecodeBatchManifest parses a manifest strictly: bounded in bytes and
// objects, one JSON object, no unknown fields, known version, every object
// claim valid, no name twice.
func DecodeBatchManifest(b []byte) (*BatchManifest, error) {
	if len(b) > MaxBatchManifestSize {
		return nil, fmt.Errorf("decode batch manifest: %d bytes exceeds %d", len(b), MaxBatchManifestSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m BatchManifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode batch manifest: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("decode batch manifest: trailing data after the object")
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("decode batch manifest: %w", err)
	}
	return &m, nil
}

func (m *BatchManifest) check() error {
	if m.V != BatchManifestVersion {
		return fmt.Errorf("version %d, want %d", m.V, BatchManifestVersion)
	}
	if err := ValidateID(m.Contract); err != nil {
		return fmt.Errorf("contract: %w", err)
	}
	if len(m.Objects) == 0 || len(m.Objects) > MaxBatchObjects {
		return fmt.Errorf("%d objects: want 1 to %d", len(m.Objects), MaxBatchObjects)
	}
	seen := make(map[string]struct{}, len(m.Objects))
	for i := range m.Objects {
		o := &m.Objects[i]
		if err := o.Validate(); err != nil {
			return fmt.Errorf("object %d: %w", i, err)
		}
		if _, dup := seen[o.Name]; dup {
			return fmt.Errorf("object %d: name %q is listed twice", i, o.Name)
		}
		seen[o.Name] = struct{}{}
	}
	return nil
}

func isSHA256Hex(h string) bool {
	if len(h) != 64 || strings.ToLower(h) != h {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil
}

// AppendBatch submits a batch attestation with its manifest: POST
// /provenance/{id}/batches, the manifest as the body and the compact JWS
// in the Provgate-Attestation header.
func (c *Client) AppendBatch(ctx context.Context, id, jws string, manifest []byte) (*AppendResult, error) {
	var out AppendResult
	h := http.Header{HeaderAttestation: {jws}}
	err := c.doJSON(ctx, request{method: http.MethodPost, url: c.URL("provenance", id, "batches"), body: manifest,
		ctype: BatchManifestMediaType, header: h}, &out)
	return &out, err
}

// BatchManifest fetches a batch manifest by its sha256 (GET
// /provenance/{id}/manifests/{sha256}). The bytes are untrusted: check
// them with BatchClaim.Open.
func (c *Client) BatchManifest(ctx context.Context, id, sha256Hex string) ([]byte, error) {
	resp, err := c.do(ctx, request{method: http.MethodGet, url: c.URL("provenance", id, "manifests", sha256Hex), retry: true})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxBatchManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", sha256Hex, err)
	}
	if len(b) > MaxBatchManifestSize {
		return nil, fmt.Errorf("manifest %s: over %d bytes", sha256Hex, MaxBatchManifestSize)
	}
	return b, nil
}
