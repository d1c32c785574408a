package contract_test

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/provgate/provgate/contract"
)

func batchObject(name string) contract.ObjectClaim {
	h := strings.Repeat("ab", 32)
	return contract.ObjectClaim{Name: name, StoredSHA256: h, StoredSize: 3, Encoding: contract.EncodingIdentity,
		DecodedSHA256: h, DecodedSize: 3, Tokens: 2}
}

// FuzzDecodeBatchManifest: DecodeBatchManifest never panics, refuses
// oversized input, duplicate names and invalid claims, and what it accepts
// re-encodes to bytes that decode to the same manifest.
func FuzzDecodeBatchManifest(f *testing.F) {
	m := &contract.BatchManifest{V: 1, Contract: "did:example:c1",
		Objects: []contract.ObjectClaim{batchObject("a/1.txt"), batchObject("a/2.txt")}}
	b, err := contract.EncodeBatchManifest(m)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(bytes.Replace(b, []byte("a/2.txt"), []byte("a/1.txt"), 1))
	f.Add(bytes.Replace(b, []byte("a/2.txt"), []byte("../x"), 1))
	f.Add([]byte(`{"v":1,"contract":"did:example:c1","objects":[]}`))
	f.Add([]byte(`{"v":1,"contract":"did:example:c1","objects":[{"name":"x"}],"extra":1}`))
	f.Add([]byte(`{"v":2}`))
	f.Add([]byte(`{}{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := contract.DecodeBatchManifest(b)
		if err != nil {
			return
		}
		if len(b) > contract.MaxBatchManifestSize {
			t.Fatalf("accepted %d bytes, over the bound", len(b))
		}
		names := map[string]bool{}
		for _, o := range m.Objects {
			if names[o.Name] {
				t.Fatalf("accepted name %q twice", o.Name)
			}
			names[o.Name] = true
			if err := o.Validate(); err != nil {
				t.Fatalf("accepted an invalid claim: %v", err)
			}
		}
		again, err := contract.EncodeBatchManifest(m)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		m2, err := contract.DecodeBatchManifest(again)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// TestBatchClaimOpen: a manifest is opened only when its bytes are the
// attested ones (size and sha256), for this contract, with the attested
// count.
func TestBatchClaimOpen(t *testing.T) {
	m := &contract.BatchManifest{V: 1, Contract: "did:example:c1", Objects: []contract.ObjectClaim{batchObject("one"), batchObject("two")}}
	b, err := contract.EncodeBatchManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	claim := contract.BatchClaim{ManifestSHA256: contract.ManifestDigest(b), ManifestSize: int64(len(b)), Objects: 2}
	if _, err := claim.Open(b, "did:example:c1"); err != nil {
		t.Fatalf("open: %v", err)
	}
	tampered := bytes.Replace(b, []byte(`"one"`), []byte(`"won"`), 1)
	for _, tc := range []struct {
		name  string
		claim contract.BatchClaim
		b     []byte
		id    string
		want  error
	}{
		{"tampered bytes", claim, tampered, "did:example:c1", contract.ErrManifestDigest},
		{"truncated", claim, b[:len(b)-1], "did:example:c1", contract.ErrManifestDigest},
		{"other contract", claim, b, "did:example:c2", contract.ErrManifestInvalid},
		{"count", contract.BatchClaim{ManifestSHA256: claim.ManifestSHA256, ManifestSize: claim.ManifestSize, Objects: 3}, b, "did:example:c1", contract.ErrManifestInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.claim.Open(tc.b, tc.id); !errorsIs(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func errorsIs(err, target error) bool { return err != nil && errors.Is(err, target) }
