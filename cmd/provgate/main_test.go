package main

import (
	"os"
	"testing"

	"github.com/provgate/provgate/internal/testenv"
)

// TestMain stops the shared MinIO server that tests of this package start
// through testenv.MinIO.
func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopMinIO()
	os.Exit(code)
}
