package main

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

func writeTar(t *testing.T, path string, members ...string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		tw.WriteHeader(&tar.Header{Name: m, Mode: 0o644, Size: int64(len(m)), Typeflag: tar.TypeReg})
		tw.Write([]byte(m))
	}
	tw.Close()
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestContributeShards: a .tar file is contributed as a shard, its member
// index in the claim (even alone: in a batch attestation); a tar with a
// member twice is refused before anything is appended; --shards=false
// contributes a tar as a plain object.
func TestContributeShards(t *testing.T) {
	mio := testenv.MinIO(t)
	bucket := mio.Bucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", testenv.MinIOAccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testenv.MinIOSecretKey)
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:c1", bucket, alice))
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "alice.jwk")
	verify.SaveKey(keyFile, alice.Key)
	args := func(extra ...string) []string {
		return append([]string{"contribute", "--registry", h.URL, "--contract", c.ContractID, "--key", keyFile, "--s3-endpoint", mio.URL(),
			"--progress-interval", "0s"}, extra...)
	}
	dup := filepath.Join(dir, "bad", "dup.tar")
	os.MkdirAll(filepath.Dir(dup), 0o755)
	writeTar(t, dup, "k1.jpg", "k1.jpg")
	if code, _, errs := cli(t, args(dup)...); code == 0 || !strings.Contains(errs, "appears twice") {
		t.Fatalf("a tar with a member twice: exit %d, stderr %q; want refused", code, errs)
	}
	good := filepath.Join(dir, "good", "shard-000000.tar")
	os.MkdirAll(filepath.Dir(good), 0o755)
	writeTar(t, good, "k1.jpg", "k1.cls", "k2.jpg")
	mustCLI(t, args(good)...)
	plain := filepath.Join(dir, "plain", "p.tar")
	os.MkdirAll(filepath.Dir(plain), 0o755)
	writeTar(t, plain, "x.y")
	mustCLI(t, args("--shards=false", plain)...)

	objs, err := liveObjects(context.Background(), h.Client, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 {
		t.Fatalf("the log has %d objects, want 2 (the refused tar appended nothing)", len(objs))
	}
	s := objs["shard-000000.tar"]
	if s.Shard == nil || s.Shard.Samples != 2 || len(s.Shard.Members) != 3 || s.Shard.Members[2].Name != "k2.jpg" {
		t.Fatalf("shard claim %+v: want an index of 3 members, 2 samples", s.Shard)
	}
	if p := objs["p.tar"]; p.Shard != nil {
		t.Fatalf("--shards=false: the tar has an index")
	}
}
