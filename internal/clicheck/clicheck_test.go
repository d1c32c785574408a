package clicheck_test

import (
	"reflect"
	"testing"

	"github.com/provgate/provgate/internal/clicheck"
)

func TestSplit(t *testing.T) {
	for _, tc := range []struct {
		args      []string
		sub, flag []string
	}{
		{[]string{"serve", "--listen=0.0.0.0:8080", "--cache-size", "1G", "-purpose", "p"}, []string{"serve"}, []string{"listen", "cache-size", "purpose"}},
		{[]string{"contract", "create", "--file", "c.json"}, []string{"contract", "create"}, []string{"file"}},
		{[]string{"meter", "report", "--json"}, []string{"meter", "report"}, []string{"json"}},
		{[]string{"serve"}, []string{"serve"}, nil},
	} {
		sub, flags := clicheck.Split(tc.args)
		if !reflect.DeepEqual(sub, tc.sub) || !reflect.DeepEqual(flags, tc.flag) {
			t.Errorf("Split(%q) = %q, %q; want %q, %q", tc.args, sub, flags, tc.sub, tc.flag)
		}
	}
}
