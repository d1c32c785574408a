package e2e_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/internal/testenv"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// provgateBinary builds the provgate binary once per test process.
func provgateBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		root, err := testenv.ModuleRoot()
		if err != nil {
			binErr = err
			return
		}
		dir, err := os.MkdirTemp("", "provgate-bin-*")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "provgate")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/provgate")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = &buildError{out: string(out), err: err}
		}
	})
	if binErr != nil {
		t.Fatalf("build provgate: %v", binErr)
	}
	return binPath
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// exportCA runs `provgate ca export` on the sidecar's state directory.
func exportCA(t testing.TB, sc *sidecar.Sidecar) []byte {
	t.Helper()
	out, err := exec.Command(provgateBinary(t), "ca", "export", "--state-dir", sc.StateDir()).Output()
	if err != nil {
		t.Fatalf("provgate ca export: %v", err)
	}
	return out
}
