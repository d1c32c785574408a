package testenv_test

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/provgate/provgate/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestMinIORoundTrip(t *testing.T) {
	srv := testenv.MinIO(t)
	bucket := srv.Bucket(t)
	c := srv.Client(t)
	ctx := context.Background()
	want := []byte("hello provgate")
	if _, err := c.PutObject(ctx, bucket, "a/b.txt", bytes.NewReader(want), int64(len(want)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("put: %v", err)
	}
	obj, err := c.GetObject(ctx, bucket, "a/b.txt", minio.GetObjectOptions{})
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	got, err := io.ReadAll(obj)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}
