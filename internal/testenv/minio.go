// Package testenv starts the real servers that provgate's tests talk to:
// a MinIO server on a free loopback port, and a PostgreSQL cluster, each
// shared by the tests of one test binary. MinIO never skips: a test that
// needs it fails when it cannot be had (PostgreSQL: see Postgres).
package testenv

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIO credentials of the test server.
const (
	MinIOAccessKey = "provgate-test"
	MinIOSecretKey = "provgate-test-secret"
	MinIORegion    = "us-east-1"
)

// MinIOServer is a running MinIO server.
type MinIOServer struct {
	// Endpoint is host:port on 127.0.0.1.
	Endpoint string
	cmd      *exec.Cmd
	dir      string
	exited   <-chan struct{} // closed when the process has been waited for
}

// URL is the server's http URL.
func (s *MinIOServer) URL() string { return "http://" + s.Endpoint }

var (
	minioOnce sync.Once
	minioSrv  *MinIOServer
	minioErr  error
	bucketSeq atomic.Int64
)

// MinIO returns the test binary's MinIO server, starting it on first use.
// Call StopMinIO from TestMain after m.Run.
func MinIO(tb testing.TB) *MinIOServer {
	tb.Helper()
	minioOnce.Do(func() { minioSrv, minioErr = startMinIO() })
	if minioErr != nil {
		tb.Fatalf("start MinIO: %v", minioErr)
	}
	return minioSrv
}

// Main runs a test binary's tests and stops its MinIO server and
// PostgreSQL cluster afterwards: func TestMain(m *testing.M) { testenv.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	StopMinIO()
	StopPostgres()
	os.Exit(code)
}

// StopMinIO stops the server if it was started.
func StopMinIO() {
	if minioSrv != nil {
		// The goroutine started with the process already waits for it;
		// a second cmd.Wait would race with it.
		minioSrv.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-minioSrv.exited:
		case <-time.After(5 * time.Second):
			minioSrv.cmd.Process.Kill()
			<-minioSrv.exited
		}
		os.RemoveAll(minioSrv.dir)
	}
}

// Client returns a minio-go client with the server's root credentials.
func (s *MinIOServer) Client(tb testing.TB) *minio.Client {
	tb.Helper()
	c, err := minio.New(s.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(MinIOAccessKey, MinIOSecretKey, ""),
		Region: MinIORegion,
	})
	if err != nil {
		tb.Fatalf("minio client: %v", err)
	}
	return c
}

// Bucket creates a fresh, uniquely named bucket for one test.
func (s *MinIOServer) Bucket(tb testing.TB) string {
	tb.Helper()
	name := fmt.Sprintf("t%d-%d", os.Getpid(), bucketSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Client(tb).MakeBucket(ctx, name, minio.MakeBucketOptions{Region: MinIORegion}); err != nil {
		tb.Fatalf("make bucket %s: %v", name, err)
	}
	return name
}

// MinIOBinary finds the MinIO server binary: $PROVGATE_MINIO_BIN, or the
// project's install script (which builds it once into a cache outside the
// clone and prints its path).
func MinIOBinary() (string, error) {
	if p := os.Getenv("PROVGATE_MINIO_BIN"); p != "" {
		return p, nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	out, err := exec.Command(filepath.Join(root, "scripts", "install-minio.sh")).Output()
	if err != nil {
		return "", fmt.Errorf("scripts/install-minio.sh: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// ModuleRoot is the directory holding go.mod.
func ModuleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot locate module root")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..")), nil
}

// FreePort returns a free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startMinIO() (*MinIOServer, error) {
	bin, err := MinIOBinary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "provgate-minio-*")
	if err != nil {
		return nil, err
	}
	for attempt := 0; attempt < 3; attempt++ {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		cport, err := FreePort()
		if err != nil {
			return nil, err
		}
		endpoint := fmt.Sprintf("127.0.0.1:%d", port)
		cmd := exec.Command(bin, "server", "--quiet", "--address", endpoint,
			"--console-address", fmt.Sprintf("127.0.0.1:%d", cport), filepath.Join(dir, "data"))
		cmd.Env = append(os.Environ(),
			"MINIO_ROOT_USER="+MinIOAccessKey,
			"MINIO_ROOT_PASSWORD="+MinIOSecretKey,
			"MINIO_BROWSER=off",
			"MINIO_UPDATE=off",
			"MINIO_REGION="+MinIORegion,
		)
		logf, err := os.Create(filepath.Join(dir, "minio.log"))
		if err != nil {
			return nil, err
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start %s: %w", bin, err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		if waitReady(endpoint, exited, 60*time.Second) {
			return &MinIOServer{Endpoint: endpoint, cmd: cmd, dir: dir, exited: exited}, nil
		}
		cmd.Process.Kill()
		<-exited
	}
	log, _ := os.ReadFile(filepath.Join(dir, "minio.log"))
	return nil, fmt.Errorf("MinIO did not become ready; log:\n%s", log)
}

func waitReady(endpoint string, exited <-chan struct{}, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	hc := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		resp, err := hc.Get("http://" + endpoint + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}
