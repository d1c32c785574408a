package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/provgate/provgate/contract"
)

// resolve finds the verified entry for (contract, name) and checks that it
// may be served now: contract state, capability and quota.
func (s *Server) resolve(id, name string) (Source, *ManifestEntry, Grant, error) {
	src, err := s.source(id)
	if err != nil {
		return nil, nil, Grant{}, err
	}
	if err := contract.ValidateName(name); err != nil {
		return nil, nil, Grant{}, contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "%v", err)
	}
	if st := src.Status(); !st.Serving() {
		return nil, nil, Grant{}, stateError(st)
	}
	e, err := src.Lookup(name)
	if err != nil {
		return nil, nil, Grant{}, err
	}
	g, err := src.Grant()
	if err != nil {
		return nil, nil, Grant{}, err
	}
	return src, e, g, nil
}

// checkQuota refuses when serving samples more samples of bytes in all
// would pass the token's quota or the contract's. Concurrent requests can
// overrun it by at most the requests in flight.
func (s *Server) checkQuota(src Source, g Grant, samples, bytes int64) error {
	return s.cfg.Meter.CheckQuota(src.ID(), g.TokenID, g.Quota, src.Contract().Usage, samples, bytes)
}

// recheck looks the name up again after a (possibly long) fetch: a
// redaction (or a revocation that dropped the name) that landed meanwhile
// wins, and the name's bytes are purged from the cache.
func (s *Server) recheck(src Source, name string) error {
	_, err := src.Lookup(name)
	if errors.Is(err, ErrRedacted) || errors.Is(err, ErrNotFound) {
		if perr := s.cfg.Cache.Purge(src.ID(), name); perr != nil {
			s.log.Error("purging a redacted object failed", "contract", src.ID(), "name", name, "err", perr)
		}
	}
	return err
}

// fetchError is the error a failed fetch of name answers: if the name was
// redacted (or dropped) meanwhile that wins, as 451 (404), whatever the
// fetch ran into; otherwise the fetch's own error.
func (s *Server) fetchError(src Source, name string, err error) error {
	if rerr := s.recheck(src, name); errors.Is(rerr, ErrRedacted) || errors.Is(rerr, ErrNotFound) {
		return rerr
	}
	return err
}

// stableModTime is Last-Modified when the contract has no creation time.
var stableModTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func etag(sha string) string { return `"` + sha + `"` }

// object serves GET and HEAD of one verified object. HEAD and a matching
// If-None-Match are answered from the manifest without touching the
// origin; GET streams the verified file (Range supported) and meters the
// bytes that went out.
func (s *Server) object(w http.ResponseWriter, r *http.Request) error {
	return s.serveObject(w, r, r.PathValue("id"), r.PathValue("name"))
}

// serveObject is the one path by which object bytes leave the sidecar: the
// data endpoint, the S3 facade and the forward proxy all come through it.
func (s *Server) serveObject(w http.ResponseWriter, r *http.Request, id, name string) error {
	epoch, job, err := meterParams(r)
	if err != nil {
		return err
	}
	src, e, g, err := s.resolve(id, name)
	if err == nil {
		err = s.checkQuota(src, g, 1, e.DecodedSize)
	}
	if err != nil {
		s.countRefusal(err)
		return err
	}
	h := w.Header()
	h.Set("ETag", etag(e.DecodedSHA256))
	h.Set("Accept-Ranges", "bytes")
	h.Set("Cache-Control", "private, max-age=0")
	h.Set("X-Content-Type-Options", "nosniff")
	if e.MediaType != "" {
		h.Set("Content-Type", e.MediaType)
	} else {
		h.Set("Content-Type", "application/octet-stream")
	}
	// Objects are immutable under their digest; the contract's creation is
	// their stable Last-Modified (S3 clients require one).
	modTime := src.Contract().CreatedAt
	if modTime.IsZero() {
		modTime = stableModTime
	}
	h.Set("Last-Modified", modTime.UTC().Format(http.TimeFormat))
	if inm := r.Header.Get("If-None-Match"); inm != "" && etagMatch(inm, etag(e.DecodedSHA256)) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	if r.Method == http.MethodHead {
		h.Set("Content-Length", strconv.FormatInt(e.DecodedSize, 10))
		return nil
	}
	if s.cfg.StreamWhileFetching && r.Header.Get("Range") == "" {
		rc, err := s.cfg.Cache.Stream(r.Context(), src.ID(), &e.ObjectClaim)
		if err != nil {
			if err = s.fetchError(src, e.Name, err); !errors.Is(err, ErrRedacted) {
				s.countFetchError(src.ID(), e.Name, epoch, job, g, err)
			}
			return err
		}
		defer rc.Close()
		a := Access{Contract: src.ID(), Name: e.Name, DecodedSHA: e.DecodedSHA256, Epoch: epoch, Job: job, TokenID: g.TokenID, Outcome: OutcomeServed}
		return s.sendStreamed(r.Context(), w.(*statusWriter), rc, e.DecodedSize, a, g)
	}
	obj, err := s.cfg.Cache.Get(r.Context(), src.ID(), &e.ObjectClaim)
	if err != nil {
		if err = s.fetchError(src, e.Name, err); !errors.Is(err, ErrRedacted) {
			s.countFetchError(src.ID(), e.Name, epoch, job, g, err)
		}
		return err
	}
	defer obj.Close()
	if err := s.recheck(src, e.Name); err != nil {
		s.countRefusal(err)
		return err
	}
	sw := w.(*statusWriter)
	a := Access{Contract: src.ID(), Name: e.Name, DecodedSHA: e.DecodedSHA256, Epoch: epoch, Job: job, TokenID: g.TokenID}
	start, length, partial, err := singleRange(r, e.DecodedSize, etag(e.DecodedSHA256))
	if err != nil {
		h.Set("Content-Range", "bytes */"+strconv.FormatInt(e.DecodedSize, 10))
		return err
	}
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, start+length-1, e.DecodedSize))
		// A range that starts the object counts as the sample; the ranges
		// that continue it bill their bytes only.
		a.Outcome = OutcomePartial
		if start > 0 {
			a.Outcome = OutcomeRange
		}
		return s.sendMetered(r.Context(), sw, obj.File(), start, length, http.StatusPartialContent, a)
	}
	a.Outcome = OutcomeServed
	return s.sendMetered(r.Context(), sw, obj.File(), 0, e.DecodedSize, http.StatusOK, a)
}

// singleRange reads a Range header against an object of size bytes. It
// returns partial=false to serve the whole object: no Range, several
// ranges (which servers may ignore), or an If-Range that does not match.
// An unsatisfiable range is a 416.
func singleRange(r *http.Request, size int64, tag string) (start, length int64, partial bool, err error) {
	spec := r.Header.Get("Range")
	if spec == "" {
		return 0, size, false, nil
	}
	if ir := r.Header.Get("If-Range"); ir != "" && ir != tag {
		return 0, size, false, nil
	}
	spec, ok := strings.CutPrefix(spec, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, size, false, nil
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, 0, false, errUnsatisfiable
	}
	switch {
	case first == "": // the last N bytes
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n <= 0 || size == 0 {
			return 0, 0, false, errUnsatisfiable
		}
		n = min(n, size)
		return size - n, n, true, nil
	default:
		a, err := strconv.ParseInt(first, 10, 64)
		if err != nil || a < 0 || a >= size {
			return 0, 0, false, errUnsatisfiable
		}
		b := size - 1
		if last != "" {
			if b, err = strconv.ParseInt(last, 10, 64); err != nil || b < a {
				return 0, 0, false, errUnsatisfiable
			}
			b = min(b, size-1)
		}
		return a, b - a + 1, true, nil
	}
}

var errUnsatisfiable = contract.Errorf(http.StatusRequestedRangeNotSatisfiable, contract.CodeBadRequest, "range not satisfiable")

// sendMetered sends length bytes of f from start so that the response is
// never complete at the client unless its access is committed to the
// ledger: all but the last byte go out (with sendfile), the access is
// recorded durably, then the last byte. If the ledger cannot take the
// event, the response is aborted: the client sees a broken body, never a
// clean, unmetered one. A crash between the commit and the last byte bills
// bytes the client did not finish reading; nothing is ever served unbilled.
func (s *Server) sendMetered(ctx context.Context, w *statusWriter, f *os.File, start, length int64, status int, a Access) error {
	w.Header().Set("Content-Length", strconv.FormatInt(length, 10))
	w.WriteHeader(status)
	if length > 1 {
		if _, err := f.Seek(start, io.SeekStart); err != nil {
			panic(http.ErrAbortHandler)
		}
		n, err := w.ReadFrom(io.LimitReader(f, length-1))
		if err != nil || n != length-1 {
			// The client went away (or the file failed): not served, not
			// billed; kept in the ledger as an aborted access.
			a.Bytes, a.Outcome = n, OutcomeAborted
			if rerr := s.record(ctx, a); rerr != nil {
				s.log.Warn("recording an aborted access failed", "contract", a.Contract, "name", a.Name, "err", rerr)
			}
			panic(http.ErrAbortHandler)
		}
	}
	a.Bytes = length
	if err := s.record(ctx, a); err != nil {
		s.log.Error("metering failed; aborting the response", "contract", a.Contract, "name", a.Name, "err", err)
		panic(http.ErrAbortHandler)
	}
	if length > 0 {
		var last [1]byte
		if _, err := f.ReadAt(last[:], start+length-1); err != nil {
			panic(http.ErrAbortHandler)
		}
		w.Write(last[:])
	}
	return nil
}

// sendStreamed sends an object while it is fetched: all but the last byte
// as they arrive; then the stream must end cleanly (the cache verified
// every byte), the access is committed, and the last byte goes out. A
// verification failure, at any point, aborts the response.
func (s *Server) sendStreamed(ctx context.Context, w *statusWriter, rc io.Reader, size int64, a Access, g Grant) error {
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	fail := func(err error) {
		if isVerification(err) {
			s.countFetchError(a.Contract, a.Name, a.Epoch, a.Job, g, err)
		}
		s.log.Warn("stream-while-fetching aborted", "contract", a.Contract, "name", a.Name, "err", err)
		panic(http.ErrAbortHandler)
	}
	if size > 1 {
		if _, err := io.CopyN(w, rc, size-1); err != nil {
			fail(err)
		}
	}
	var last [1]byte
	if size > 0 {
		if _, err := io.ReadFull(rc, last[:]); err != nil {
			fail(err)
		}
	}
	// The end of the stream is where verification is decided.
	if n, err := rc.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		if err == nil || err == io.EOF {
			err = fmt.Errorf("object longer than its attested %d bytes", size)
		}
		fail(err)
	}
	a.Bytes = size
	if err := s.record(ctx, a); err != nil {
		s.log.Error("metering failed; aborting the response", "contract", a.Contract, "name", a.Name, "err", err)
		panic(http.ErrAbortHandler)
	}
	if size > 0 {
		w.Write(last[:])
	}
	return nil
}

// record writes an access to the ledger and waits until it is durable,
// even if the request's context has ended.
func (s *Server) record(ctx context.Context, a Access) error {
	wait, err := s.submit(ctx, a)
	if err != nil {
		return err
	}
	if err := wait(context.WithoutCancel(ctx)); err != nil {
		s.metrics.meterErrors.Inc()
		return err
	}
	return nil
}

// submit queues an access; the returned wait makes it durable.
func (s *Server) submit(ctx context.Context, a Access) (func(context.Context) error, error) {
	a.Time = time.Now().UTC()
	if a.Outcome == OutcomeServed || a.Outcome == OutcomePartial {
		s.metrics.bytesServed.WithLabelValues(a.Contract).Add(float64(a.Bytes))
	}
	wait, err := s.cfg.Meter.Submit(context.WithoutCancel(ctx), a)
	if err != nil {
		s.metrics.meterErrors.Inc()
		return nil, err
	}
	return wait, nil
}

// countFetchError counts a failed fetch and records verification failures
// in the ledger.
func (s *Server) countFetchError(contractID, name string, epoch int64, job string, g Grant, err error) {
	if isVerification(err) {
		s.metrics.verifyFailures.WithLabelValues(verificationKind(err)).Inc()
		a := Access{Time: time.Now().UTC(), Contract: contractID, Name: name, Epoch: epoch, Job: job, TokenID: g.TokenID, Outcome: OutcomeVerifyKO}
		if _, merr := s.cfg.Meter.Submit(context.Background(), a); merr != nil && !errors.Is(merr, ErrBusy) {
			s.log.Error("metering failed", "contract", contractID, "err", merr)
		}
	}
}

func (s *Server) countRefusal(err error) {
	status, code := statusOf(err)
	s.metrics.refusals.WithLabelValues(strconv.Itoa(status), code).Inc()
}

// etagMatch implements If-None-Match's weak comparison for a list of tags.
func etagMatch(header, tag string) bool {
	for header != "" {
		var t string
		header = trimOWS(header)
		if header == "" {
			break
		}
		if header[0] == '*' {
			return true
		}
		if len(header) > 2 && header[:2] == "W/" {
			header = header[2:]
		}
		if header[0] != '"' {
			return false
		}
		end := 1
		for end < len(header) && header[end] != '"' {
			end++
		}
		if end == len(header) {
			return false
		}
		t, header = header[:end+1], header[end+1:]
		if t == tag {
			return true
		}
		header = trimOWS(header)
		if header != "" && header[0] == ',' {
			header = header[1:]
		}
	}
	return false
}

func trimOWS(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	return s
}
