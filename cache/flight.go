package cache

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/provgate/provgate/contract"
)

// flight is one object's fetch, shared by everyone who asks for the object
// while it runs (single-flight). Streaming readers follow its temporary
// file as it grows.
type flight struct {
	key  string
	size int64
	gen  uint64 // purge generations at start: name, contract
	cgen uint64

	// Guarded by Cache.mu.
	waiters  int
	finished bool

	// Set before done is closed.
	done  chan struct{}
	err   error
	entry *entry

	mu      sync.Mutex
	tmpPath string
	written int64
	changed chan struct{} // closed and replaced on progress
}

func (f *flight) progress(n int64) {
	f.mu.Lock()
	f.written += n
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// open opens the file the fetch writes (or has installed), under the
// flight's lock: a /proc/self/fd path names the fetch's descriptor only
// until the fetch clears it, which it does before closing it.
func (f *flight) open() (*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tmpPath == "" {
		return nil, os.ErrNotExist
	}
	return os.Open(f.tmpPath)
}

func (f *flight) state() (tmp string, written int64, changed chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tmpPath, f.written, f.changed
}

// flightWriter writes to the temporary file and reports progress.
type flightWriter struct {
	f  *os.File
	fl *flight
}

func (w *flightWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.fl.progress(int64(n))
	return n, err
}

func (c *Cache) runFlight(f *flight, contractID string, m *mount, obj contract.ObjectClaim) {
	defer c.wg.Done()
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.FetchTimeout)
	defer cancel()
	start := time.Now()
	err := c.fetchAndCommit(ctx, f, contractID, m, &obj)
	if err != nil && !errors.Is(err, context.Canceled) && !m.isLive(&obj) {
		// Whatever broke the fetch (the registry's 451 for the name's URL,
		// the object gone from the bucket), the name was redacted meanwhile.
		err = fmt.Errorf("%w (%v)", ErrPurged, err)
	}
	if err != nil {
		c.mu.Lock()
		if !errors.Is(err, context.Canceled) && !errors.Is(err, ErrPurged) {
			c.stats.Failures[FailureKind(err)]++
		}
		c.finishLocked(f, nil, fmt.Errorf("cache: %s: %w", obj.Name, err))
		c.mu.Unlock()
		if !errors.Is(err, context.Canceled) {
			c.log.Warn("cache fetch failed", logContract, contractID, logName, obj.Name, logKind, FailureKind(err), logErr, err)
		}
		return
	}
	c.log.Debug("cache fetch", logContract, contractID, logName, obj.Name, "bytes", obj.DecodedSize, "took", time.Since(start))
}

// finishLocked publishes the flight's outcome; a committed entry gets one
// pin per waiter.
func (c *Cache) finishLocked(f *flight, e *entry, err error) {
	if e != nil {
		c.pinLocked(e, f.waiters)
	}
	f.entry, f.err, f.finished = e, err, true
	delete(c.flights, f.key)
	close(f.done)
}

func (c *Cache) fetchAndCommit(ctx context.Context, f *flight, contractID string, m *mount, obj *contract.ObjectClaim) error {
	select {
	case c.fetchSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-c.fetchSem }()
	if err := c.reserve(ctx, obj.DecodedSize); err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			c.mu.Lock()
			c.reserved -= obj.DecodedSize
			c.signalSpaceLocked()
			c.mu.Unlock()
		}
	}()
	file := fileName(contractID, obj.Name, obj.DecodedSHA256, rand.Text())
	final := c.path(file)
	if err := c.makeDir(filepath.Dir(final)); err != nil {
		return err
	}
	fw, err := c.createFetchFile(filepath.Dir(final))
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.tmpPath = fw.path
	f.mu.Unlock()
	onResume := func() {
		c.mu.Lock()
		c.stats.Resumes++
		c.mu.Unlock()
	}
	res, err := fetchVerified(ctx, m, obj, c.cfg.Retry, onResume, &flightWriter{f: fw.f, fl: f})
	if err == nil && c.cfg.SyncEachCommit {
		err = fw.f.Sync()
	}
	if err == nil {
		err = fw.install(final)
	}
	// From here readers that join open the final file (or see the error);
	// those that opened the fetch file have their own descriptor.
	f.mu.Lock()
	f.tmpPath = ""
	if err == nil {
		f.tmpPath = final
	}
	f.mu.Unlock()
	if cerr := fw.f.Close(); err == nil {
		err = cerr
	}
	if err == nil && c.cfg.SyncEachCommit {
		err = syncDir(filepath.Dir(final))
	}
	if err != nil {
		if !fw.unnamed || fw.linked {
			os.Remove(fw.named(final))
		}
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.OriginBytes += uint64(obj.StoredSize)
	key := entryKey(contractID, obj.Name)
	// Checked under c.mu, which Purge takes after the name's redaction is
	// applied to the manifest: either the redaction is seen here, or the
	// entry exists when Purge runs and goes then. A fetch that started
	// after the purge, for a claim read before it, is refused too.
	if c.purgeGen[key] != f.gen || c.purgeGen[contractID] != f.cgen || !m.isLive(obj) {
		os.Remove(final)
		return ErrPurged
	}
	c.reserved -= obj.DecodedSize
	committed = true
	now := c.cfg.Now()
	e := &entry{key: key, contract: contractID, name: obj.Name, file: file, storedSHA: obj.StoredSHA256,
		decodedSHA: obj.DecodedSHA256, size: obj.DecodedSize, crc: res.crc, committed: now, region: regionWindow}
	if m.retention > 0 {
		e.expires = now.Add(m.retention)
	}
	if old := c.entries[key]; old != nil {
		c.removeLocked(old)
	}
	c.entries[key] = e
	c.window.pushFront(e)
	c.used += e.size
	if c.cfg.SyncEachCommit {
		e.durable = true
		if err := c.journal.append(ptr(putRecord(e))); err != nil {
			c.log.Error("cache index", logErr, err)
		}
	} else {
		c.pending = append(c.pending, e)
		select {
		case c.syncNotify <- struct{}{}:
		default:
		}
	}
	c.finishLocked(f, e, nil)
	c.pinLocked(e, 1) // hold it while rebalancing so that the waiters get it
	c.rebalanceLocked()
	c.pinLocked(e, -1)
	if e.pins == 0 {
		c.rebalanceLocked()
	}
	return nil
}

// fetchFile is the file a fetch writes: an unnamed file in the object's
// directory (O_TMPFILE), given its name by linkat once verified, or, where
// the file system has no unnamed files, a temporary file renamed into
// place. Either way no file in objects/ ever holds bytes that are not a
// whole verified object, and a crash mid-fetch leaves nothing there (an
// unnamed file goes with its last descriptor; tmp/ is emptied at Open).
// Unnamed files also spare the rename across directories, which was a
// large part of a cold small read's CPU on ext4.
type fetchFile struct {
	f *os.File
	// path opens the file while the fetch runs: /proc/self/fd/N for an
	// unnamed file (valid only while f is open: readers open it under
	// the flight's lock, and the fetch clears it before closing f).
	path    string
	unnamed bool
	linked  bool
}

func (c *Cache) createFetchFile(dir string) (*fetchFile, error) {
	if !c.noTmpfile.Load() {
		fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
		if err == nil {
			return &fetchFile{f: os.NewFile(uintptr(fd), dir), path: "/proc/self/fd/" + strconv.Itoa(fd), unnamed: true}, nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
			return nil, &os.PathError{Op: "open unnamed file in", Path: dir, Err: err}
		}
		c.noTmpfile.Store(true)
		c.log.Info("cache: the file system has no unnamed files (O_TMPFILE); fetches write temporary files", "dir", dir)
	}
	tmp, err := os.CreateTemp(c.tmpDir, "fetch-*")
	if err != nil {
		return nil, err
	}
	return &fetchFile{f: tmp, path: tmp.Name()}, nil
}

// install gives the verified file its final name; f is still open.
func (w *fetchFile) install(final string) error {
	if !w.unnamed {
		return os.Rename(w.path, final)
	}
	if err := unix.Linkat(unix.AT_FDCWD, w.path, unix.AT_FDCWD, final, unix.AT_SYMLINK_FOLLOW); err != nil {
		return &os.LinkError{Op: "link", Old: w.path, New: final, Err: err}
	}
	w.linked = true
	return nil
}

// named is the file's name after a failure: final if it was given it,
// else its temporary name.
func (w *fetchFile) named(final string) string {
	if w.linked {
		return final
	}
	if _, err := os.Stat(final); err == nil {
		return final // renamed before the failure
	}
	return w.path
}

// makeDir makes an object directory when it is missing, durably.
func (c *Cache) makeDir(dir string) error {
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return syncDir(c.objDir)
}

// Stream returns the object as a reader while it is being fetched
// (stream-while-fetching): bytes are handed out as they are decoded, and
// if verification fails at the end the final Read returns the error, never
// io.EOF. A cached object is read from its file. Prefer Get
// (verify-then-serve) unless latency to first byte matters more than a
// clean failure.
func (c *Cache) Stream(ctx context.Context, contractID string, obj *contract.ObjectClaim) (io.ReadCloser, error) {
	for range 3 {
		h, f, err := c.lookup(contractID, obj, true)
		if errors.Is(err, errCorrupt) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if h != nil {
			return h, nil
		}
		return &streamReader{c: c, ctx: ctx, f: f, size: obj.DecodedSize}, nil
	}
	return nil, fmt.Errorf("cache: %s: %w", obj.Name, errCorrupt)
}

type streamReader struct {
	c      *Cache
	ctx    context.Context
	f      *flight
	size   int64
	file   *os.File
	off    int64
	closed bool
	err    error
}

func (r *streamReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for {
		tmp, written, changed := r.f.state()
		done := false
		select {
		case <-r.f.done:
			done = true
			if r.f.err != nil {
				r.err = r.f.err
				return 0, r.err
			}
			written = r.size
		default:
		}
		if r.file == nil && (tmp != "" || done) {
			var f *os.File
			var err error
			if done {
				f, err = os.Open(r.c.path(r.f.entry.file))
			} else {
				f, err = r.f.open()
			}
			switch {
			case err == nil:
				r.file = f
			case errors.Is(err, os.ErrNotExist) && !done:
				// renamed or removed just now: wait for the outcome
			default:
				r.err = err
				return 0, err
			}
		}
		if r.file != nil && r.off < written {
			n, err := r.file.ReadAt(p[:min(int64(len(p)), written-r.off)], r.off)
			r.off += int64(n)
			if err == io.EOF {
				err = nil
			}
			return n, err
		}
		if done && r.off >= r.size {
			return 0, io.EOF
		}
		select {
		case <-changed:
		case <-r.f.done:
		case <-r.ctx.Done():
			r.err = r.ctx.Err()
			return 0, r.err
		}
	}
}

// Close releases the reader; the fetch goes on and commits for others.
func (r *streamReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	var err error
	if r.file != nil {
		err = r.file.Close()
	}
	if r.c.leave(r.f) && r.f.err == nil {
		r.c.unpin(r.f.entry)
	}
	return err
}
