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
	"sync"
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
// would pass the grant's quota or the contract's; it reserves nothing (the
// data path reserves with beginRead).
func (s *Server) checkQuota(src Source, g Grant, samples, bytes int64) error {
	res, err := s.cfg.Meter.Reserve(src.ID(), g, src.Contract().Usage, samples, bytes)
	if err == nil {
		res.Release()
	}
	return err
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
// The billing rule is in beginRead and read (billing.go).
func (s *Server) serveObject(w http.ResponseWriter, r *http.Request, id, name string) error {
	epoch, job, err := meterParams(r)
	if err != nil {
		return err
	}
	src, e, g, err := s.resolve(id, name)
	if err != nil {
		s.countRefusal(err)
		return err
	}
	if x, err := s.shardIndex(r.Context(), src, e); err != nil || x != nil {
		if err != nil {
			return err
		}
		return s.serveShard(w, r, src, e, g, x, epoch, job)
	}
	if r.URL.Query().Has(MemberParam) {
		return fmt.Errorf("%w: %q is not a shard", ErrNotFound, name)
	}
	tag := etag(e.DecodedSHA256)
	inm := r.Header.Get("If-None-Match")
	notModified := inm != "" && etagMatch(inm, tag)
	if r.Method == http.MethodHead || notModified {
		// No object bytes: nothing is billed, but a spent quota refuses.
		if err := s.checkQuota(src, g, 1, e.DecodedSize); err != nil {
			s.countRefusal(err)
			return err
		}
		s.objectHeaders(w, src, e)
		if notModified {
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
		w.Header().Set("Content-Length", strconv.FormatInt(e.DecodedSize, 10))
		return nil
	}
	start, length, partial, err := singleRange(r, e.DecodedSize, tag)
	if err != nil {
		w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(e.DecodedSize, 10))
		return err
	}
	rd, err := s.beginRead(src, e, g, epoch, job, start, length)
	if err != nil {
		s.countRefusal(err)
		return err
	}
	defer rd.end()
	if s.cfg.StreamWhileFetching && !partial {
		rc, err := s.cfg.Cache.Stream(r.Context(), src.ID(), &e.ObjectClaim)
		if err != nil {
			if err = s.fetchError(src, e.Name, err); !errors.Is(err, ErrRedacted) {
				s.countFetchError(src.ID(), e.Name, epoch, job, g, err)
			}
			return err
		}
		defer rc.Close()
		s.served(src.ID(), job, epoch, e.Name)
		s.objectHeaders(w, src, e)
		return s.sendStreamed(r.Context(), w.(*statusWriter), rc, e.DecodedSize, rd, g)
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
	s.served(src.ID(), job, epoch, e.Name)
	s.objectHeaders(w, src, e)
	sw := w.(*statusWriter)
	if partial {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, start+length-1, e.DecodedSize))
		outcome := OutcomeRange
		if rd.claim.Opens {
			outcome = OutcomePartial
		}
		return s.sendMetered(r.Context(), sw, obj.File(), start, length, http.StatusPartialContent, rd, outcome)
	}
	return s.sendMetered(r.Context(), sw, obj.File(), 0, e.DecodedSize, http.StatusOK, rd, OutcomeServed)
}

// Header values every object answer shares, set without copying: each has
// capacity 1, so an Add to one of them by later code reallocates instead of
// writing into the shared array.
var (
	hdrAcceptRanges = []string{"bytes"}
	hdrCacheControl = []string{"private, max-age=0"}
	hdrNosniff      = []string{"nosniff"}
	hdrOctetStream  = []string{"application/octet-stream"}
)

// lastModified is a contract's Last-Modified value, formatted once.
type lastModified struct {
	t time.Time
	v []string
}

// lastModifiedOf returns the Last-Modified header value for modTime,
// formatting it only when it changes (one contract's is fixed).
func (s *Server) lastModifiedOf(modTime time.Time) []string {
	if lm := s.lastMod.Load(); lm != nil && lm.t.Equal(modTime) {
		return lm.v
	}
	v := []string{modTime.UTC().Format(http.TimeFormat)}
	s.lastMod.Store(&lastModified{t: modTime, v: v})
	return v
}

// objectHeaders sets the headers every answer about an object carries.
func (s *Server) objectHeaders(w http.ResponseWriter, src Source, e *ManifestEntry) {
	h := w.Header()
	h["Etag"] = []string{etag(e.DecodedSHA256)}
	h["Accept-Ranges"] = hdrAcceptRanges
	h["Cache-Control"] = hdrCacheControl
	h["X-Content-Type-Options"] = hdrNosniff
	if e.MediaType != "" {
		h["Content-Type"] = []string{e.MediaType}
	} else {
		h["Content-Type"] = hdrOctetStream
	}
	// Objects are immutable under their digest; the contract's creation is
	// their stable Last-Modified (S3 clients require one).
	modTime := src.Contract().CreatedAt
	if modTime.IsZero() {
		modTime = stableModTime
	}
	h["Last-Modified"] = s.lastModifiedOf(modTime)
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
// clean, unmetered one. A response cut short bills what it sent (rd.abort).
// A crash between the commit and the last byte bills bytes the client did
// not finish reading; nothing is ever served unbilled.
//
// A small body (up to smallBody bytes) is read with one pread and written
// from memory: its header and first bytes then leave in one write and the
// rest with the last byte, where sendfile took a write for the header,
// one for the body and one for the last byte (and a pread for it).
func (s *Server) sendMetered(ctx context.Context, w *statusWriter, f *os.File, start, length int64, status int, rd *read, outcome string) error {
	w.Header().Set("Content-Length", strconv.FormatInt(length, 10))
	w.WriteHeader(status)
	if length > 1 && length <= smallBody {
		bp := smallBodies.Get().(*[]byte)
		defer smallBodies.Put(bp)
		body := (*bp)[:length]
		if n, err := f.ReadAt(body, start); n != len(body) {
			s.log.Warn("reading a cached object failed", "contract", rd.a.Contract, "name", rd.a.Name, "err", err)
			rd.abort(ctx, 0)
		}
		if n, err := w.Write(body[:length-1]); err != nil || int64(n) != length-1 {
			rd.abort(ctx, int64(n))
		}
		if err := rd.commit(ctx, outcome); err != nil {
			s.log.Error("metering failed; aborting the response", "contract", rd.a.Contract, "name", rd.a.Name, "err", err)
			panic(http.ErrAbortHandler)
		}
		w.Write(body[length-1:])
		return nil
	}
	if length > 1 {
		// An Object's file is handed out at offset 0.
		if start != 0 {
			if _, err := f.Seek(start, io.SeekStart); err != nil {
				rd.abort(ctx, 0)
			}
		}
		n, err := w.ReadFrom(io.LimitReader(f, length-1))
		if err != nil || n != length-1 {
			rd.abort(ctx, n)
		}
	}
	if err := rd.commit(ctx, outcome); err != nil {
		s.log.Error("metering failed; aborting the response", "contract", rd.a.Contract, "name", rd.a.Name, "err", err)
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

// smallBody is the largest body sendMetered writes from memory.
const smallBody = 32 << 10

var smallBodies = sync.Pool{New: func() any { b := make([]byte, smallBody); return &b }}

// sendStreamed sends an object while it is fetched: all but the last byte
// as they arrive; then the stream must end cleanly (the cache verified
// every byte), the access is committed, and the last byte goes out. A
// client that goes away is billed what was sent (rd.abort); bytes that
// fail verification bill nothing (they are not the attested object), and
// the response is aborted.
func (s *Server) sendStreamed(ctx context.Context, w *statusWriter, rc io.Reader, size int64, rd *read, g Grant) error {
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	cw := &countingWriter{w: w}
	fail := func(err error) {
		if cw.err != nil {
			rd.abort(ctx, cw.n) // the client went away
		}
		if isVerification(err) {
			s.countFetchError(rd.a.Contract, rd.a.Name, rd.a.Epoch, rd.a.Job, g, err)
		} else {
			rd.abort(ctx, cw.n) // the origin failed: what was sent still bills
		}
		s.log.Warn("stream-while-fetching aborted", "contract", rd.a.Contract, "name", rd.a.Name, "err", err)
		panic(http.ErrAbortHandler)
	}
	if size > 1 {
		if _, err := io.CopyN(cw, rc, size-1); err != nil {
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
			err = fmt.Errorf("%w: object longer than its attested %d bytes", ErrVerification, size)
		}
		fail(err)
	}
	if err := rd.commit(ctx, OutcomeServed); err != nil {
		s.log.Error("metering failed; aborting the response", "contract", rd.a.Contract, "name", rd.a.Name, "err", err)
		panic(http.ErrAbortHandler)
	}
	if size > 0 {
		w.Write(last[:])
	}
	return nil
}

// countingWriter counts the bytes written and keeps the first write error.
type countingWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// wait waits until a submitted access is durable, even if the request's
// context has ended.
func (s *Server) wait(ctx context.Context, wait func(context.Context) error) error {
	if err := wait(context.WithoutCancel(ctx)); err != nil {
		s.metrics.meterErrors.Inc()
		return err
	}
	return nil
}

// submit queues an access under its reservation; the returned wait makes
// it durable.
func (s *Server) submit(ctx context.Context, res Reservation, a Access) (func(context.Context) error, error) {
	a.Time = time.Now().UTC()
	wait, err := res.Submit(ctx, a)
	if err != nil {
		s.metrics.meterErrors.Inc()
		return nil, err
	}
	s.metrics.bytesServed.WithLabelValues(a.Contract).Add(float64(a.Bytes))
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
