package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry/registrytest"
)

// TestVerifyLogFromTiles: `verify log --log-url` audits the log from the
// registry's static tiles and from a bucket that `registry
// publish-tiles` filled, with the same verdict as from the dynamic
// endpoints; a tampered bundle in the bucket fails it, naming the bundle.
func TestVerifyLogFromTiles(t *testing.T) {
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:tiles-cli", "bucket", alice))
	for i := range 5 {
		name := fmt.Sprintf("f/%d.txt", i)
		alice.Attest(t, c.ContractID, registrytest.Object(name, []byte(name)))
	}
	dynamic := mustCLI(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID)
	fromRegistry := mustCLI(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID, "--log-url", h.URL+"/logs")
	if !strings.Contains(dynamic, "verify log: OK") || fromRegistry != dynamic {
		t.Fatalf("verify log from tiles:\n%s\nfrom the dynamic endpoints:\n%s", fromRegistry, dynamic)
	}

	s := testenv.MinIO(t)
	bucket := s.Bucket(t)
	policy := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::` + bucket + `/*"]}]}`
	mc := s.Client(t)
	ctx := context.Background()
	if err := mc.SetBucketPolicy(ctx, bucket, policy); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", testenv.MinIOAccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testenv.MinIOSecretKey)
	t.Setenv("AWS_REGION", testenv.MinIORegion)
	out := mustCLI(t, "registry", "publish-tiles", "--db", h.DBPath, "--s3-endpoint", s.URL(), "--bucket", bucket, "--prefix", "p")
	if !strings.Contains(out, "published size 6 (from 0): 1 tiles, 1 entry bundles, checkpoint") {
		t.Fatalf("publish-tiles: %s", out)
	}
	if out = mustCLI(t, "registry", "publish-tiles", "--db", h.DBPath, "--s3-endpoint", s.URL(), "--bucket", bucket, "--prefix", "p"); !strings.Contains(out, "up to date") {
		t.Fatalf("publish-tiles again: %s", out)
	}
	logURL := s.URL() + "/" + bucket + "/p"
	if got := mustCLI(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID, "--log-url", logURL); got != dynamic {
		t.Fatalf("verify log from the bucket:\n%s\nwant:\n%s", got, dynamic)
	}

	key := "p/" + c.ContractID + "/tile/entries/000.p/6"
	bundle := filepath.Join(t.TempDir(), "bundle")
	if err := mc.FGetObject(ctx, bucket, key, bundle, minio.GetObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-2] ^= 1
	if err := os.WriteFile(bundle, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := mc.FPutObject(ctx, bucket, key, bundle, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	code, _, errs := cli(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID, "--log-url", logURL)
	if code == 0 || !strings.Contains(errs, "tile/entries/000.p/6") {
		t.Fatalf("verify log from a tampered bundle: exit %d, stderr %s", code, errs)
	}
	t.Logf("refused: %s", errs)
}
