package contract_test

import (
	"testing"

	"github.com/provgate/provgate/contract"
)

func TestSplitEventID(t *testing.T) {
	for _, tc := range []struct {
		id     string
		ledger string
		seq    int64
		ok     bool
	}{
		{contract.EventID("ab-c_d", 42), "ab-c_d", 42, true}, // a base64url ledger id may hold "-"
		{"abc-1", "abc", 1, true},
		{"abc-0", "", 0, false},
		{"abc-01", "", 0, false},    // not canonical: would count row 1 twice
		{"abc--1", "abc-", 1, true}, // the seq follows the last "-"
		{"abc-+1", "", 0, false},
		{"-5", "", 0, false},
		{"abc", "", 0, false},
		{"abc-", "", 0, false},
		{"abc-99999999999999999999", "", 0, false},
	} {
		ledger, seq, ok := contract.SplitEventID(tc.id)
		if ledger != tc.ledger || seq != tc.seq || ok != tc.ok {
			t.Errorf("SplitEventID(%q) = %q, %d, %v; want %q, %d, %v", tc.id, ledger, seq, ok, tc.ledger, tc.seq, tc.ok)
		}
	}
}
