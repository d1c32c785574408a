package pytorch_test

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

// python is Debian's interpreter, which has python3-torch
// (scripts/install-deps.sh); the pyenv python3 on PATH does not.
const python = "/usr/bin/python3"

// requireTorch fails (never skips) when Debian's PyTorch is missing: CI
// installs it, so its absence is a broken environment.
func requireTorch(t testing.TB) {
	t.Helper()
	out, err := exec.Command(python, "-c", "import torch; print(torch.__version__)").CombinedOutput()
	if err != nil {
		t.Fatalf("%s cannot import torch (run scripts/install-deps.sh): %v\n%s", python, err, out)
	}
}

// TestPythonUnit runs the package's unittest suite, with the package
// installed into a fresh virtual environment (installedPython): the (seed, epoch)
// order, rank/worker sharding and resumption, the batch frame parser
// (every truncation refused), the client's errors, keep-alive and integrity
// checks, and both datasets inside real multi-worker DataLoaders.
func TestPythonUnit(t *testing.T) {
	py := installedPython(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "-m", "unittest", "discover", "-v", "-s", "tests", "-t", ".")
	cmd.Env = append(cmd.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python unit tests failed: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
