package registry_test

import (
	"os"
	"testing"

	"github.com/provgate/provgate/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopMinIO()
	os.Exit(code)
}
