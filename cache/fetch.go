package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/tokenize"
	"github.com/provgate/provgate/verify"
)

// Retry defaults.
const (
	DefaultMaxAttempts   = 5
	DefaultBaseDelay     = 100 * time.Millisecond
	DefaultThrottleDelay = time.Second
	DefaultMaxDelay      = 10 * time.Second
	DefaultIdleTimeout   = 30 * time.Second
	// DefaultMaxWindow bounds a zstd frame's window, so decoder memory is
	// at most about MaxFetches times this (128 MiB with the defaults).
	// zstd's levels up to 19 use at most 8 MiB; frames made with --long
	// or --ultra beyond 16 MiB are refused (as ErrDecode).
	DefaultMaxWindow = 16 << 20
)

// RetryPolicy says how a fetch retries origin faults. A reset, a timeout, a
// short body or a 5xx waits BaseDelay doubling up to MaxDelay; a 429 waits
// the server's Retry-After, or ThrottleDelay doubling; all with full
// jitter. MaxAttempts caps consecutive failures without progress; a fetch
// that makes progress between faults resumes from its verified offset up to
// 10*MaxAttempts times in all.
type RetryPolicy struct {
	// IdleTimeout is how long a body may send nothing before the fetch
	// gives up on that connection and resumes with a new ranged request.
	IdleTimeout   time.Duration
	MaxAttempts   int
	BaseDelay     time.Duration
	ThrottleDelay time.Duration
	MaxDelay      time.Duration
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.BaseDelay <= 0 {
		p.BaseDelay = DefaultBaseDelay
	}
	if p.ThrottleDelay <= 0 {
		p.ThrottleDelay = DefaultThrottleDelay
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = DefaultMaxDelay
	}
	if p.IdleTimeout <= 0 {
		p.IdleTimeout = DefaultIdleTimeout
	}
	return p
}

// delay is the wait before retry number n (1-based) after err.
func (p RetryPolicy) delay(n int, err error) time.Duration {
	base := p.BaseDelay
	var oe *OriginError
	if errors.As(err, &oe) && oe.Status == 429 {
		if oe.RetryAfter > 0 {
			return min(oe.RetryAfter, p.MaxDelay)
		}
		base = p.ThrottleDelay
	}
	d := min(base<<min(n-1, 20), p.MaxDelay)
	return d/2 + rand.N(d/2+1)
}

func retryable(err error) bool {
	if errors.Is(err, errShortBody) {
		return true
	}
	var oe *OriginError
	if errors.As(err, &oe) {
		return oe.retryable()
	}
	return false
}

var (
	errShortBody = errors.New("body ended early")
	errStalled   = errors.New("body stalled")
)

// resumeReader reads an object's stored bytes from the origin, resuming
// with a ranged request from the bytes already read after a fault. It
// never yields more than size bytes, and a body that ends short is a
// fault, not an EOF.
type resumeReader struct {
	ctx    context.Context
	origin Origin
	name   string
	size   int64
	policy RetryPolicy
	// onResume is called before each resume, for stats.
	onResume func()

	off      int64
	eof      bool
	body     io.ReadCloser
	mu       sync.Mutex         // guards cancel against stall
	cancel   context.CancelFunc // of the body's request
	idle     *time.Timer        // cancels a stalled body
	stalled  atomic.Bool
	fails    int // consecutive, without progress
	total    int
	progress bool
}

func (r *resumeReader) Read(p []byte) (int, error) {
	for {
		if r.eof {
			return 0, io.EOF
		}
		if r.body == nil {
			if r.off == r.size && r.total > 0 {
				r.eof = true
				return 0, io.EOF // the previous body broke exactly at the end
			}
			ctx, cancel := context.WithCancel(r.ctx)
			body, err := r.origin.Open(ctx, r.name, r.off)
			if err != nil {
				cancel()
				if werr := r.fault(err); werr != nil {
					return 0, werr
				}
				continue
			}
			r.mu.Lock()
			r.body, r.cancel = body, cancel
			r.mu.Unlock()
		}
		if r.idle == nil {
			r.idle = time.AfterFunc(r.policy.IdleTimeout, r.stall)
		} else {
			r.idle.Reset(r.policy.IdleTimeout)
		}
		n, err := r.body.Read(p)
		r.idle.Stop()
		if r.stalled.Swap(false) && r.ctx.Err() == nil {
			err = errStalled
		}
		if r.off+int64(n) > r.size {
			r.close()
			return 0, &SizeError{What: "stored", Want: r.size, Got: r.off + int64(n)}
		}
		r.off += int64(n)
		if n > 0 {
			r.progress = true
		}
		switch {
		case err == nil:
			return n, nil
		case err == io.EOF && r.off == r.size:
			r.close()
			r.eof = true
			return n, io.EOF
		case err == io.EOF:
			err = errShortBody
		}
		err = &OriginError{Op: "read", Name: r.name, Err: fmt.Errorf("at byte %d of %d: %w", r.off, r.size, err)}
		r.close()
		if werr := r.fault(err); werr != nil {
			return n, werr
		}
		if n > 0 {
			return n, nil
		}
	}
}

// fault decides whether to retry after err; it waits and returns nil to
// retry, or returns the error to give up with.
func (r *resumeReader) fault(err error) error {
	if r.ctx.Err() != nil {
		return r.ctx.Err()
	}
	var oe *OriginError
	if errors.As(err, &oe) && oe.Status == 416 && r.off > 0 {
		// The object ends before its attested size.
		return &SizeError{What: "stored", Want: r.size, Got: r.off}
	}
	if !retryable(err) {
		return err
	}
	if r.progress {
		r.fails = 0
		r.progress = false
	}
	r.fails++
	r.total++
	if r.fails >= r.policy.MaxAttempts || r.total >= 10*r.policy.MaxAttempts {
		return fmt.Errorf("giving up after %d attempts: %w", r.total, err)
	}
	if r.onResume != nil {
		r.onResume()
	}
	t := time.NewTimer(r.policy.delay(r.fails, err))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-r.ctx.Done():
		return r.ctx.Err()
	}
}

// stall runs when a body sent nothing for IdleTimeout: it cancels the
// body's request, which ends the blocked Read.
func (r *resumeReader) stall() {
	r.mu.Lock()
	cancel := r.cancel
	r.mu.Unlock()
	if cancel != nil {
		r.stalled.Store(true)
		cancel()
	}
}

func (r *resumeReader) close() {
	if r.idle != nil {
		r.idle.Stop()
	}
	if r.body != nil {
		r.body.Close()
		r.body = nil
	}
	r.mu.Lock()
	if r.cancel != nil {
		r.cancel()
		r.cancel = nil
	}
	r.mu.Unlock()
}

// hashReader hashes and counts what is read through it.
type hashReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	return n, err
}

var (
	zstdPool = sync.Pool{New: func() any {
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(false),
			zstd.WithDecoderMaxWindow(DefaultMaxWindow), zstd.WithDecoderMaxMemory(DefaultMaxWindow))
		if err != nil {
			panic(err) // only bad options fail
		}
		return d
	}}
	gzipPool sync.Pool
	bufPool  = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}
)

// decoder returns a reader of the decoded stream and a function that
// releases it.
func decoder(encoding string, r io.Reader) (io.Reader, func(), error) {
	switch encoding {
	case contract.EncodingIdentity:
		return r, func() {}, nil
	case contract.EncodingZstd:
		d := zstdPool.Get().(*zstd.Decoder)
		if err := d.Reset(r); err != nil {
			zstdPool.Put(d)
			return nil, nil, fmt.Errorf("%w: zstd: %v", ErrDecode, err)
		}
		return d, func() { d.Reset(nil); zstdPool.Put(d) }, nil
	case contract.EncodingGzip:
		z, _ := gzipPool.Get().(*gzip.Reader)
		var err error
		if z == nil {
			z, err = gzip.NewReader(r)
		} else {
			err = z.Reset(r)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%w: gzip: %v", ErrDecode, err)
		}
		return z, func() { gzipPool.Put(z) }, nil
	default:
		return nil, nil, fmt.Errorf("%w: unknown encoding %q", ErrDecode, encoding)
	}
}

// fetchResult is what a verified fetch wrote.
type fetchResult struct {
	crc uint32 // CRC-32C of the decoded bytes, for the cheap hit check
}

// fetchVerified streams obj from the origin through the stored digest,
// the decoder and the decoded digest into w, which gets at most
// obj.DecodedSize bytes. It returns an error unless every check passed.
func fetchVerified(ctx context.Context, m *mount, obj *contract.ObjectClaim, policy RetryPolicy, onResume func(), w io.Writer) (fetchResult, error) {
	origin := m.origin
	rr := &resumeReader{ctx: ctx, origin: origin, name: obj.Name, size: obj.StoredSize, policy: policy, onResume: onResume}
	defer rr.close()
	stored := &hashReader{r: rr, h: sha256.New()}
	identity := obj.Encoding == contract.EncodingIdentity

	var res fetchResult
	crc := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	var decodedHash hash.Hash
	if !identity {
		decodedHash = sha256.New()
	}
	var tokens tokenize.Counter
	// A shard's tokens are its members', checked against its index by
	// verify.CheckShard before it is served.
	if m.tokenizer != "" && obj.Shard == nil {
		var err error
		if tokens, err = tokenize.New(m.tokenizer); err != nil {
			return res, err
		}
	}
	var decoded int64
	copyErr := func() error {
		dec, release, err := decoder(obj.Encoding, stored)
		if err != nil {
			return err
		}
		defer release()
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		buf := *bp
		for {
			n, err := dec.Read(buf)
			if n > 0 {
				if decoded+int64(n) > obj.DecodedSize {
					return &SizeError{What: "decoded", Want: obj.DecodedSize, Got: decoded + int64(n)}
				}
				if _, werr := w.Write(buf[:n]); werr != nil {
					return fmt.Errorf("write: %w", werr)
				}
				decoded += int64(n)
				crc.Write(buf[:n])
				if decodedHash != nil {
					decodedHash.Write(buf[:n])
				}
				if tokens != nil {
					tokens.Write(buf[:n]) // its error is Count's
				}
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				if isStoredErr(err) || ctx.Err() != nil {
					return err
				}
				return fmt.Errorf("%w: %s: %v", ErrDecode, obj.Encoding, err)
			}
		}
	}()
	// Read the stored stream to its end (bounded by its attested size) so
	// that its digest covers every byte, and report a stored mismatch, the
	// root cause, before a decoding error.
	var drainErr error
	if copyErr == nil || errors.Is(copyErr, ErrDecode) {
		_, drainErr = io.Copy(io.Discard, stored)
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	if isStoredErr(copyErr) {
		return res, copyErr
	}
	if drainErr != nil {
		if isStoredErr(drainErr) || copyErr == nil {
			return res, drainErr
		}
	}
	if copyErr == nil || errors.Is(copyErr, ErrDecode) {
		if stored.n != obj.StoredSize {
			return res, &SizeError{What: "stored", Want: obj.StoredSize, Got: stored.n}
		}
		if got := hex.EncodeToString(stored.h.Sum(nil)); got != obj.StoredSHA256 {
			want, _ := hex.DecodeString(obj.StoredSHA256)
			return res, &verify.DigestMismatchError{What: "stored", Want: want, Got: stored.h.Sum(nil)}
		}
	}
	if copyErr != nil {
		return res, copyErr
	}
	if decoded != obj.DecodedSize {
		return res, &SizeError{What: "decoded", Want: obj.DecodedSize, Got: decoded}
	}
	if decodedHash != nil {
		if got := hex.EncodeToString(decodedHash.Sum(nil)); got != obj.DecodedSHA256 {
			want, _ := hex.DecodeString(obj.DecodedSHA256)
			return res, &verify.DigestMismatchError{What: "decoded", Want: want, Got: decodedHash.Sum(nil)}
		}
	}
	if tokens != nil {
		got, err := tokens.Count()
		if err != nil || got != obj.Tokens {
			return res, &TokenCountError{Tokenizer: m.tokenizer, Want: obj.Tokens, Got: got, Err: err}
		}
	}
	res.crc = crc.Sum32()
	return res, nil
}

// isStoredErr reports whether err came from the stored stream itself (an
// origin fault or a stored size overrun) rather than the decoder.
func isStoredErr(err error) bool {
	var se *SizeError
	var oe *OriginError
	return (errors.As(err, &se) && se.What == "stored") || errors.As(err, &oe) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
