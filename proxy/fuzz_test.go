package proxy

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzETagMatch: If-None-Match parsing never panics, matches a header that
// lists the tag, and does not match one that lacks it and has no "*".
func FuzzETagMatch(f *testing.F) {
	tag := `"` + strings.Repeat("ab", 32) + `"`
	for _, h := range []string{tag, `W/` + tag, `"x", ` + tag, `*`, `"unterminated`, `,,,`, ``, `"a"` + tag} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, header string) {
		got := etagMatch(header, tag)
		if !got && (header == tag || strings.HasPrefix(header, tag+",") || strings.HasPrefix(header, tag+" ")) {
			t.Fatalf("%q does not match %s", header, tag)
		}
		if got && !strings.Contains(header, tag) && !strings.Contains(header, "*") {
			t.Fatalf("%q matched %s", header, tag)
		}
	})
}

// FuzzMeterParams: epoch and job headers are either accepted as a
// non-negative epoch and a bounded job, or refused with a 400.
func FuzzMeterParams(f *testing.F) {
	for _, s := range [][2]string{{"1", "job"}, {"-1", ""}, {"99999999999999999999", "x"}, {"1e3", ""}, {"0", strings.Repeat("j", 200)}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, epoch, job string) {
		r, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1/v1/contracts/c/objects/a", nil)
		r.Header.Set(HeaderEpoch, epoch)
		r.Header.Set(HeaderJob, job)
		ep, j, err := meterParams(r)
		if err != nil {
			if st, _ := statusOf(err); st != http.StatusBadRequest {
				t.Fatalf("refusal with status %d", st)
			}
			return
		}
		if ep < 0 || len(j) > 128 {
			t.Fatalf("accepted epoch %d job of %d bytes", ep, len(j))
		}
	})
}
