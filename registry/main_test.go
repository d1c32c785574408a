package registry_test

import (
	"testing"

	"github.com/provgate/provgate/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
