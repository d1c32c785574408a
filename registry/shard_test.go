package registry_test

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry/registrytest"
)

// TestShardIndexAttacksRefusedAtAppend: a batch whose manifest carries a
// shard claim with an index that overlaps, points outside the tar, lists a
// member twice, or claims more or fewer samples than keys is refused
// (400) and the log does not grow; the true index is accepted.
func TestShardIndexAttacksRefusedAtAppend(t *testing.T) {
	h, alice, c := setup(t)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range []string{"k1.jpg", "k1.cls", "k2.jpg", "k2.cls"} {
		tw.WriteHeader(&tar.Header{Name: m, Mode: 0o644, Size: int64(len(m)), Typeflag: tar.TypeReg})
		tw.Write([]byte(m))
	}
	tw.Close()
	b := buf.Bytes()
	index := func() *contract.ShardIndex {
		x, err := contract.BuildShardIndex(bytes.NewReader(b), nil)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	// batchOf signs a batch over a manifest built without the encoder's
	// checks, as a forger would.
	batchOf := func(x *contract.ShardIndex) (string, []byte) {
		o := registrytest.Object("s.tar", b)
		o.Shard = x
		raw, err := json.Marshal(&contract.BatchManifest{V: contract.BatchManifestVersion, Contract: c.ContractID, Objects: []contract.ObjectClaim{o}})
		if err != nil {
			t.Fatal(err)
		}
		jws := alice.Sign(t, c.ContractID, &contract.Attestation{Type: contract.Batch,
			Batch: &contract.BatchClaim{ManifestSHA256: contract.ManifestDigest(raw), ManifestSize: int64(len(raw)), Objects: 1}})
		return jws, raw
	}
	for name, edit := range map[string]func(x *contract.ShardIndex){
		"overlapping offsets":     func(x *contract.ShardIndex) { x.Members[1].Offset = x.Members[0].Offset },
		"offset outside the tar":  func(x *contract.ShardIndex) { x.Members[3].Offset = int64(len(b)) + 512 },
		"member claimed twice":    func(x *contract.ShardIndex) { x.Members[3] = x.Members[2]; x.Members[3].Offset += 1024 },
		"more samples than keys":  func(x *contract.ShardIndex) { x.Samples = 4 },
		"fewer samples than keys": func(x *contract.ShardIndex) { x.Samples = 1 },
	} {
		t.Run(name, func(t *testing.T) {
			x := index()
			edit(x)
			jws, raw := batchOf(x)
			mustRefuseBatch(t, h, c.ContractID, jws, raw, http.StatusBadRequest, contract.CodeInvalidAttestation)
		})
	}
	jws, raw := batchOf(index())
	if _, err := h.Client.AppendBatch(t.Context(), c.ContractID, jws, raw); err != nil {
		t.Fatalf("the true index: %v", err)
	}
	if !strings.Contains(string(raw), `"samples":2`) {
		t.Fatalf("manifest %s does not carry the index", raw)
	}
}
