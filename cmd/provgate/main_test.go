package main

import (
	"testing"

	"github.com/provgate/provgate/internal/testenv"
)

// TestMain stops the shared MinIO server that tests of this package start
// through testenv.MinIO.
func TestMain(m *testing.M) { testenv.Main(m) }
