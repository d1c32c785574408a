package cache

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/tokenize"
	"golang.org/x/sys/unix"
)

// Defaults for Config.
const (
	DefaultMaxFetches    = 8
	DefaultMaxOpenFiles  = 512
	DefaultWindowPercent = 5
	DefaultFetchTimeout  = 30 * time.Minute
	DefaultSweepInterval = time.Minute
	// syncInterval is how often the journal is fsynced when it changed.
	syncInterval = time.Second
	// commitSyncDelay batches commits made durable together.
	commitSyncDelay = 250 * time.Millisecond
)

// Log keys.
const (
	logContract = "contract"
	logName     = "name"
	logErr      = "err"
	logKind     = "kind"
)

// Config configures a Cache. Zero tuning fields take their Default*.
type Config struct {
	// Dir holds the cache; it is created if missing.
	Dir string
	// MaxBytes bounds the decoded bytes on disk, committed and in flight;
	// zero is unbounded (for tools such as the scrubber).
	MaxBytes int64
	// MaxFetches bounds concurrent origin fetches.
	MaxFetches int
	// Policy is the eviction policy (PolicyTinyLFU by default).
	Policy Policy
	// WindowPercent is the share of MaxBytes for TinyLFU's admission window.
	WindowPercent int
	// VerifyOnHit re-checks a committed file's CRC-32C on every hit, a
	// cheap guard against bit-rot (the full sha256 check is Scrub). A
	// size check (fstat) is always done.
	VerifyOnHit bool
	// SyncEachCommit makes every commit durable before it is visible:
	// fsync the temporary file, rename, fsync the directory, journal.
	// By default a verified file is renamed into place at once (readers in
	// this process see complete bytes from the page cache) and made
	// durable in the background in batches (fsync each file, each
	// directory once), and only then journaled; Open
	// deletes files without a journal record, so after a crash or power
	// loss no unsynced file survives. Both are safe; the default is
	// faster on disks where fsync is slow. Either way the journal itself
	// is fsynced every second (and at Purge and Close): losing its tail in
	// a power loss loses cache entries, never exposes a partial one.
	SyncEachCommit bool
	// Retry is the origin retry policy.
	Retry RetryPolicy
	// FetchTimeout bounds one object's fetch.
	FetchTimeout time.Duration
	// SweepInterval is how often retention is enforced.
	SweepInterval time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
	// Now is the clock (time.Now when nil), for retention.
	Now func() time.Time
	// MaxOpenFiles bounds the cached files kept open between reads (an fd
	// cache: a hit reuses a closed handle's file instead of open + fstat);
	// zero takes DefaultMaxOpenFiles, negative keeps none open.
	MaxOpenFiles int
}

// Cache is a verified, size-bounded disk cache of decoded objects. It is
// safe for concurrent use.
type Cache struct {
	cfg    Config
	log    *slog.Logger
	dir    string
	objDir string
	tmpDir string
	// noTmpfile is set once the file system refused an unnamed file.
	noTmpfile atomic.Bool
	lock      *os.File
	fetchSem  chan struct{}
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	mu         sync.Mutex
	closed     bool
	mounts     map[string]*mount
	entries    map[string]*entry // by entryKey(contract, name)
	window     lru
	main       lru
	windowMax  int64
	mainMax    int64
	avgSize    float64 // of objects fetched, EWMA
	pinned     int     // entries with pins > 0
	used       int64   // committed bytes on disk, including purged files still open
	reserved   int64   // bytes of fetches in flight
	spaceFreed chan struct{}
	flights    map[string]*flight // by flightKey
	purgeGen   map[string]uint64  // by entryKey and by contract id
	sketch     *sketch
	journal    *journal
	pending    []*entry // committed, not yet durable nor journaled
	stats      Stats
	syncNotify chan struct{}
	idleFiles  int // open files in entries' idle lists
}

type mount struct {
	origin    Origin
	retention time.Duration
	live      func(name, decodedSHA string) bool // nil: everything is
	tokenizer string                             // counts each object's tokens against its claim
}

// WithTokenizer has every fetch of the contract count the decoded bytes'
// tokens under the named tokenizer (package tokenize) and fail
// verification, like a digest mismatch, unless the count is the claim's
// Tokens: the contract bills that count.
func WithTokenizer(name string) MountOption {
	return func(m *mount) { m.tokenizer = name }
}

type entry struct {
	// idle are files of this entry that no handle uses: the fd cache.
	// They are closed when the entry leaves the index (eviction, purge,
	// replacement), so that a removed entry's file is never handed out
	// again.
	idle       []*os.File
	key        string
	contract   string
	name       string
	file       string
	storedSHA  string
	decodedSHA string
	size       int64
	crc        uint32
	committed  time.Time
	expires    time.Time // zero: never
	pins       int
	region     int
	elem       *list.Element // while in a region
	zombie     bool
	durable    bool
}

// sketchWidth sizes the frequency sketch for about one counter per 16 KiB
// of cache, between 64Ki and 4Mi counters per row.
func sketchWidth(maxBytes int64) int {
	return int(min(max(maxBytes/(16<<10), 1<<16), 1<<22))
}

func entryKey(contractID, name string) string { return contractID + "\x00" + name }

// fileName names a committed file; nonce (the unique temporary file name)
// makes every commit's file distinct, so that a purged file still open
// never shares a path with its successor.
func fileName(contractID, name, decodedSHA, nonce string) string {
	h := sha256.Sum256([]byte(contractID + "\x00" + name + "\x00" + decodedSHA + "\x00" + nonce))
	return hex.EncodeToString(h[:])
}

func (c *Cache) path(file string) string { return filepath.Join(c.objDir, file[:2], file) }

// Open opens (or creates) the cache in cfg.Dir, taking an exclusive lock on
// it, removing temporary files left by a crash and reconciling the index
// with the files on disk.
func Open(cfg Config) (*Cache, error) {
	if cfg.Dir == "" {
		return nil, errors.New("cache: dir is required")
	}
	if cfg.MaxBytes < 0 {
		return nil, errors.New("cache: max bytes must not be negative")
	}
	switch {
	case cfg.MaxOpenFiles == 0:
		cfg.MaxOpenFiles = DefaultMaxOpenFiles
	case cfg.MaxOpenFiles < 0:
		cfg.MaxOpenFiles = 0
	}
	if cfg.MaxFetches <= 0 {
		cfg.MaxFetches = DefaultMaxFetches
	}
	if cfg.WindowPercent <= 0 || cfg.WindowPercent > 100 {
		cfg.WindowPercent = DefaultWindowPercent
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = DefaultFetchTimeout
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Retry = cfg.Retry.withDefaults()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Cache{
		cfg: cfg, log: log, dir: cfg.Dir,
		objDir: filepath.Join(cfg.Dir, "objects"), tmpDir: filepath.Join(cfg.Dir, "tmp"),
		fetchSem: make(chan struct{}, cfg.MaxFetches),
		mounts:   map[string]*mount{}, entries: map[string]*entry{},
		spaceFreed: make(chan struct{}), flights: map[string]*flight{}, purgeGen: map[string]uint64{},
		sketch: newSketch(sketchWidth(cfg.MaxBytes)), syncNotify: make(chan struct{}, 1),
	}
	c.stats.Failures = map[string]uint64{}
	if cfg.MaxBytes > 0 {
		if cfg.Policy == PolicyLRU {
			c.windowMax = cfg.MaxBytes
		} else {
			c.windowMax = max(1, cfg.MaxBytes*int64(cfg.WindowPercent)/100)
		}
		c.mainMax = cfg.MaxBytes - c.windowMax
	}
	for _, d := range []string{c.dir, c.objDir, c.tmpDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("cache: %w", err)
		}
	}
	lock, err := os.OpenFile(filepath.Join(c.dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("cache: %s: %w", c.dir, ErrLocked)
	}
	c.lock = lock
	if err := c.load(); err != nil {
		lock.Close()
		return nil, fmt.Errorf("cache: %w", err)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.wg.Add(1)
	go c.loop()
	return c, nil
}

// load rebuilds the index from the journal and the files.
func (c *Cache) load() error {
	tmps, err := os.ReadDir(c.tmpDir)
	if err != nil {
		return err
	}
	for _, t := range tmps {
		if err := os.RemoveAll(filepath.Join(c.tmpDir, t.Name())); err != nil {
			return err
		}
	}
	recs, err := readJournal(c.dir)
	if err != nil {
		return fmt.Errorf("index: %w", err)
	}
	byFile := map[string]*record{}
	for i := range recs {
		byFile[recs[i].File] = &recs[i]
	}
	// Files without a record go; records whose file is missing or has the
	// wrong size go.
	present := map[string]bool{}
	subdirs, err := os.ReadDir(c.objDir)
	if err != nil {
		return err
	}
	for _, sd := range subdirs {
		dir := filepath.Join(c.objDir, sd.Name())
		if !sd.IsDir() {
			if err := os.Remove(dir); err != nil {
				return err
			}
			continue
		}
		files, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, f := range files {
			r := byFile[f.Name()]
			info, ierr := f.Info()
			if r == nil || ierr != nil || !info.Mode().IsRegular() || info.Size() != r.Size || sd.Name() != f.Name()[:2] {
				if err := os.Remove(filepath.Join(dir, f.Name())); err != nil {
					return err
				}
				continue
			}
			present[f.Name()] = true
		}
	}
	now := c.cfg.Now()
	for i := range recs {
		r := &recs[i]
		if !present[r.File] {
			continue
		}
		e := &entry{
			key: entryKey(r.Contract, r.Name), contract: r.Contract, name: r.Name, file: r.File,
			storedSHA: r.StoredSHA, decodedSHA: r.DecodedSHA, size: r.Size, crc: r.CRC,
			committed: time.Unix(0, r.Committed), region: regionMain, durable: true,
		}
		if r.Expires != 0 {
			e.expires = time.Unix(0, r.Expires)
		}
		if old := c.entries[e.key]; old != nil { // two versions after a crash: keep the newer
			c.main.remove(old)
			c.used -= old.size
			os.Remove(c.path(old.file))
		}
		c.entries[e.key] = e
		c.main.pushFront(e)
		c.used += e.size
	}
	// The most recently used entries beyond the main region's share start
	// in the window.
	if c.cfg.MaxBytes > 0 {
		for c.main.bytes > c.mainMax && c.main.l.Len() > 0 {
			e := c.main.l.Front().Value.(*entry)
			c.main.remove(e)
			e.region = regionWindow
			c.window.pushBack(e)
		}
	}
	var j *journal
	c.journal = &journal{} // evictions below journal nothing: the index is rewritten next
	for _, e := range c.entries {
		if !e.expires.IsZero() && !now.Before(e.expires) {
			c.evictLocked(e)
			c.stats.Expired++
		}
	}
	c.makeRoomLocked(0)
	if j, err = writeJournal(c.dir, c.snapshotLocked()); err != nil {
		return err
	}
	c.journal = j
	return nil
}

// syncPending makes the pending commits durable (fsync each file, then
// each directory once), then journals them. Files evicted meanwhile are
// skipped; they were never journaled.
func (c *Cache) syncPending() error {
	c.mu.Lock()
	batch := c.pending
	c.pending = nil
	c.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	start := time.Now()
	defer func() { c.log.Debug("cache sync", "batch", len(batch), "took", time.Since(start)) }()
	dirs := map[string]bool{}
	synced := make([]bool, len(batch))
	var errs []error
	c.mu.Lock()
	for i, e := range batch {
		if c.entries[e.key] != e {
			batch[i] = nil // evicted already: no need to sync it
		}
	}
	c.mu.Unlock()
	for i, e := range batch {
		if e == nil {
			continue
		}
		err := syncFile(c.path(e.file))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		synced[i] = true
		dirs[filepath.Dir(c.path(e.file))] = true
	}
	for d := range dirs {
		if err := syncDir(d); err != nil {
			return err // nothing journaled: the files go at the next Open
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, e := range batch {
		if !synced[i] || e == nil || c.entries[e.key] != e {
			continue // evicted or purged meanwhile: never journaled
		}
		e.durable = true
		if err := c.journal.append(ptr(putRecord(e))); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func ptr[T any](v T) *T { return &v }

// snapshotLocked lists the live entries, least recently used first.
func (c *Cache) snapshotLocked() []record {
	recs := make([]record, 0, len(c.entries))
	for _, l := range []*lru{&c.main, &c.window} {
		for el := l.l.Back(); el != nil; el = el.Prev() {
			if e := el.Value.(*entry); e.durable {
				recs = append(recs, putRecord(e))
			}
		}
	}
	return recs
}

func putRecord(e *entry) record {
	r := record{Op: "put", File: e.file, Contract: e.contract, Name: e.name, StoredSHA: e.storedSHA,
		DecodedSHA: e.decodedSHA, Size: e.size, CRC: e.crc, Committed: e.committed.UnixNano()}
	if !e.expires.IsZero() {
		r.Expires = e.expires.UnixNano()
	}
	return r
}

// loop fsyncs the journal, compacts it, and enforces retention.
func (c *Cache) loop() {
	defer c.wg.Done()
	t := time.NewTicker(syncInterval)
	defer t.Stop()
	lastSweep := time.Now()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.syncNotify:
			// Gather a batch: one round of fsyncs per commitSyncDelay at most.
			wait := time.NewTimer(commitSyncDelay)
			select {
			case <-wait.C:
			case <-c.ctx.Done():
				wait.Stop()
				return
			}
			if err := c.syncPending(); err != nil {
				c.log.Error("cache sync", logErr, err)
			}
			continue
		case <-t.C:
		}
		c.mu.Lock()
		if time.Since(lastSweep) >= c.cfg.SweepInterval {
			c.sweepLocked()
			lastSweep = time.Now()
		}
		var err error
		if c.journal.records > 2*len(c.entries)+1024 {
			err = c.compactLocked()
		} else {
			err = c.journal.sync()
		}
		c.mu.Unlock()
		if err != nil {
			c.log.Error("cache index", logErr, err)
		}
	}
}

func (c *Cache) compactLocked() error {
	if err := c.journal.close(); err != nil {
		return err
	}
	j, err := writeJournal(c.dir, c.snapshotLocked())
	if err != nil {
		// Keep appending to the old journal: it is still a valid index.
		f, oerr := os.OpenFile(filepath.Join(c.dir, journalName), os.O_WRONLY|os.O_APPEND, 0o600)
		if oerr != nil {
			return errors.Join(err, oerr)
		}
		c.journal = &journal{dir: c.dir, f: f, w: c.journal.w, records: c.journal.records}
		c.journal.w.Reset(f)
		return err
	}
	c.journal = j
	return nil
}

// Sweep removes the entries older than their contract's retention now; the
// background loop calls it every SweepInterval.
func (c *Cache) Sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweepLocked()
}

func (c *Cache) sweepLocked() {
	now := c.cfg.Now()
	for _, e := range c.entries {
		if !e.expires.IsZero() && !now.Before(e.expires) {
			c.removeLocked(e)
			c.stats.Expired++
		}
	}
}

// Mount registers a contract's origin and retention (zero: no limit).
// Entries of the contract already cached take the retention from their
// commit time, and those already too old are removed; with WithLiveCheck,
// those no longer live in the manifest (redacted while the process was
// down, or before a crash let the purge run) are removed too.
func (c *Cache) Mount(contractID string, origin Origin, retention time.Duration, opts ...MountOption) error {
	if err := contract.ValidateID(contractID); err != nil {
		return fmt.Errorf("cache: mount: %w", err)
	}
	if origin == nil {
		return errors.New("cache: mount: origin is required")
	}
	if retention < 0 {
		return errors.New("cache: mount: retention must not be negative")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	m := &mount{origin: origin, retention: retention}
	for _, o := range opts {
		o(m)
	}
	if m.tokenizer != "" && !tokenize.Known(m.tokenizer) {
		return fmt.Errorf("cache: mount: %w %q", tokenize.ErrUnknown, m.tokenizer)
	}
	c.mounts[contractID] = m
	for _, e := range c.entries {
		if e.contract == contractID {
			e.expires = time.Time{}
			if retention > 0 {
				e.expires = e.committed.Add(retention)
			}
		}
	}
	c.sweepLocked()
	if m.live == nil {
		return nil
	}
	n := 0
	for _, e := range c.entries {
		if e.contract == contractID && !m.live(e.name, e.decodedSHA) {
			c.removeLocked(e)
			n++
		}
	}
	if n == 0 {
		return nil
	}
	c.stats.Purged += uint64(n)
	return c.journal.sync()
}

// removeLocked takes e out of the index: its file goes now if unpinned,
// else when its last reader closes.
func (c *Cache) removeLocked(e *entry) {
	if e.pins == 0 {
		c.evictLocked(e)
		return
	}
	c.detachLocked(e)
	e.zombie = true
}

// detachLocked takes e out of its region, the map and the journal.
func (c *Cache) detachLocked(e *entry) {
	if e.elem != nil {
		if e.region == regionWindow {
			c.window.remove(e)
		} else {
			c.main.remove(e)
		}
	}
	if c.entries[e.key] == e {
		delete(c.entries, e.key)
	}
	c.closeIdleLocked(e)
	if c.journal.f != nil {
		if err := c.journal.append(&record{Op: "del", File: e.file}); err != nil {
			c.log.Error("cache index", logErr, err)
		}
	}
}

// closeIdleLocked closes the files e keeps open for reuse.
func (c *Cache) closeIdleLocked(e *entry) {
	for _, f := range e.idle {
		f.Close()
	}
	c.idleFiles -= len(e.idle)
	e.idle = nil
}

// evictLocked removes an unpinned entry and its file.
func (c *Cache) evictLocked(e *entry) {
	c.detachLocked(e)
	c.deleteFileLocked(e)
}

func (c *Cache) deleteFileLocked(e *entry) {
	if err := os.Remove(c.path(e.file)); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.log.Error("cache remove", logName, e.name, logErr, err)
	}
	c.used -= e.size
	c.signalSpaceLocked()
}

func (c *Cache) signalSpaceLocked() {
	close(c.spaceFreed)
	c.spaceFreed = make(chan struct{})
}

// makeRoomLocked evicts until need more bytes fit, and reports whether
// they do.
func (c *Cache) makeRoomLocked(need int64) bool {
	for c.cfg.MaxBytes > 0 && c.used+c.reserved+need > c.cfg.MaxBytes {
		if e := c.window.oldestUnpinned(); e != nil {
			if c.cfg.Policy == PolicyLRU {
				c.evictLocked(e)
				c.stats.Evictions++
			} else {
				c.admitLocked(e)
			}
			continue
		}
		// The main region gives up entries only beyond its share, or when
		// nothing is in flight; otherwise the fetches in flight commit
		// into the window soon and make room there, so that concurrent
		// misses that TinyLFU will reject do not erode the main region.
		if c.cfg.Policy == PolicyLRU || c.main.bytes > c.mainMax || c.reserved == 0 {
			if e := c.main.oldestUnpinned(); e != nil {
				c.evictLocked(e)
				c.stats.Evictions++
				continue
			}
		}
		return false
	}
	return true
}

// resizeLocked sets the window's share: WindowPercent of the cache, but at
// least enough for MaxFetches objects of the average size fetched (the
// window also holds fetches in flight), at most half the cache.
func (c *Cache) resizeLocked(size int64) {
	if c.cfg.MaxBytes == 0 || c.cfg.Policy == PolicyLRU {
		return
	}
	if c.avgSize == 0 {
		c.avgSize = float64(size)
	} else {
		c.avgSize = 0.9*c.avgSize + 0.1*float64(size)
	}
	share := max(c.cfg.MaxBytes*int64(c.cfg.WindowPercent)/100, int64(float64(c.cfg.MaxFetches)*c.avgSize))
	c.windowMax = max(1, min(share, c.cfg.MaxBytes/2))
	c.mainMax = c.cfg.MaxBytes - c.windowMax
}

// rebalanceLocked moves entries out of an overfull window.
func (c *Cache) rebalanceLocked() {
	if c.cfg.MaxBytes == 0 || c.cfg.Policy == PolicyLRU {
		return
	}
	for c.window.bytes > c.windowMax {
		e := c.window.oldestUnpinned()
		if e == nil {
			return
		}
		c.admitLocked(e)
	}
}

// admitLocked takes the window entry e to the main region if it fits, or
// if it is used more often than the main entries it would displace;
// otherwise e is evicted.
func (c *Cache) admitLocked(e *entry) {
	c.window.remove(e)
	if c.main.bytes+e.size <= c.mainMax {
		e.region = regionMain
		c.main.pushFront(e)
		return
	}
	victims, ok := c.main.victims(c.main.bytes+e.size-c.mainMax, nil)
	if ok && e.size <= c.mainMax {
		// The candidate must beat each victim by more than one access:
		// in an epoch-shuffled read, a candidate seen this epoch is one
		// ahead of a victim not seen yet, and admitting it would turn the
		// main region into LRU.
		freq := int(c.sketch.estimate(e.key))
		admit := true
		for _, v := range victims {
			if int(c.sketch.estimate(v.key))+1 >= freq {
				admit = false
				break
			}
		}
		if admit {
			for _, v := range victims {
				c.evictLocked(v)
				c.stats.Evictions++
			}
			e.region = regionMain
			c.main.pushFront(e)
			return
		}
	}
	c.evictLocked(e)
	c.stats.Evictions++
	c.stats.Rejected++
}

// reserve waits until size bytes fit in the cache and reserves them.
func (c *Cache) reserve(ctx context.Context, size int64) error {
	if c.cfg.MaxBytes > 0 && size > c.cfg.MaxBytes {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, size, c.cfg.MaxBytes)
	}
	for {
		c.mu.Lock()
		c.resizeLocked(size)
		if c.makeRoomLocked(size) {
			c.reserved += size
			c.mu.Unlock()
			return nil
		}
		ch := c.spaceFreed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Handle is an open, pinned, verified cache entry. Its file is the decoded
// object; it stays readable until Close even if the entry is evicted or
// purged meanwhile. Serve it with http.ServeContent(w, r, name, h.ModTime,
// h.File()) and ETag h.SHA256.
type Handle struct {
	c *Cache
	e *entry
	f *os.File
	// Size is the decoded size; SHA256 the decoded sha256 (hex), also the
	// ETag; ModTime the commit time.
	Size    int64
	SHA256  string
	ModTime time.Time
	// Hit is false when this call fetched or waited for a fetch.
	Hit  bool
	once sync.Once
}

// File is the decoded object, open for reading (ReadAt, Seek; sendfile),
// at offset 0 when the handle is returned. It may be a file an earlier
// handle used (the fd cache): do not close it, Close the handle.
func (h *Handle) File() *os.File { return h.f }

// Read reads the object from the file's offset.
func (h *Handle) Read(p []byte) (int, error) { return h.f.Read(p) }

// Close unpins the entry and closes the file, or keeps it open for the
// next hit while the entry is in the index. It is idempotent.
func (h *Handle) Close() error {
	var err error
	h.once.Do(func() {
		if f := h.c.unpinKeep(h.e, h.f); f != nil {
			err = f.Close()
		}
	})
	return err
}

// pinLocked adds n pins to e and keeps the count of pinned entries.
func (c *Cache) pinLocked(e *entry, n int) {
	was := e.pins > 0
	e.pins += n
	if now := e.pins > 0; now != was {
		if now {
			c.pinned++
		} else {
			c.pinned--
		}
	}
}

func (c *Cache) unpin(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.unpinLocked(e)
}

// unpinKeep unpins e and keeps f, a file of e no handle uses any more, for
// the next hit if e is still in the index and the fd cache has room; it
// returns f for the caller to close otherwise.
func (c *Cache) unpinKeep(e *entry, f *os.File) *os.File {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed && !e.zombie && c.entries[e.key] == e && c.idleFiles < c.cfg.MaxOpenFiles {
		e.idle = append(e.idle, f)
		c.idleFiles++
		f = nil
	}
	c.unpinLocked(e)
	return f
}

func (c *Cache) unpinLocked(e *entry) {
	c.pinLocked(e, -1)
	if e.pins == 0 {
		if e.zombie {
			c.deleteFileLocked(e)
			return
		}
		if c.closed {
			return // the index is written; evict at the next Open
		}
		if c.cfg.MaxBytes > 0 && c.window.bytes > c.windowMax {
			c.rebalanceLocked()
		}
		c.signalSpaceLocked()
	}
}

// openFile opens a cached file for reading without os.Open's attempt to
// register it with the network poller: on a regular file that attempt
// costs two fcntl calls and a failing epoll_ctl, on every hit the fd cache
// does not hold.
func openFile(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// errCorrupt is a hit whose file failed the cheap check.
var errCorrupt = errors.New("cached file damaged")

// openEntry opens a pinned entry; on error the pin is released. idle,
// if not nil, is a file of e from the fd cache: it was checked when it was
// opened, so only its offset is reset (and its CRC checked if VerifyOnHit).
func (c *Cache) openEntry(e *entry, idle *os.File, hit bool) (*Handle, error) {
	f, err := idle, error(nil)
	if f != nil {
		if _, err = f.Seek(0, io.SeekStart); err == nil && c.cfg.VerifyOnHit {
			err = c.checkFile(f, e)
		}
	} else {
		f, err = openFile(c.path(e.file))
		if err == nil {
			err = c.checkFile(f, e)
		}
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		c.dropDamaged(e)
		c.unpin(e)
		c.log.Warn("cache entry damaged, refetching", logContract, e.contract, logName, e.name, logErr, err)
		return nil, errCorrupt
	}
	return &Handle{c: c, e: e, f: f, Size: e.size, SHA256: e.decodedSHA, ModTime: e.committed, Hit: hit}, nil
}

// dropDamaged counts a damaged entry and removes it unless it was
// already replaced; its file goes when the last pin is released.
func (c *Cache) dropDamaged(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.Failures[FailScrub]++
	if c.entries[e.key] == e {
		c.removeLocked(e)
	}
}

func (c *Cache) checkFile(f *os.File, e *entry) error {
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if info.Size() != e.size {
		return &SizeError{What: "cached", Want: e.size, Got: info.Size()}
	}
	if !c.cfg.VerifyOnHit {
		return nil
	}
	crc := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	if _, err := io.CopyBuffer(crc, io.NewSectionReader(f, 0, e.size), *bp); err != nil {
		return err
	}
	if crc.Sum32() != e.crc {
		return fmt.Errorf("crc32c %08x, want %08x", crc.Sum32(), e.crc)
	}
	return nil
}

// Get returns the verified, decoded object obj of a mounted contract: from
// the cache when a committed entry matches obj's decoded sha256 and size,
// else after fetching and verifying it (one fetch per object however many
// callers wait). The caller must Close the handle. Verification failures
// satisfy IsVerification; the object is then not cached.
func (c *Cache) Get(ctx context.Context, contractID string, obj *contract.ObjectClaim) (*Handle, error) {
	for range 3 {
		h, f, err := c.lookup(contractID, obj, false)
		if f != nil {
			h, err = c.wait(ctx, f)
		}
		if errors.Is(err, errCorrupt) {
			continue
		}
		return h, err
	}
	return nil, fmt.Errorf("cache: %s: %w", obj.Name, errCorrupt)
}

// lookup pins and opens a hit, or joins (or starts) the object's fetch.
func (c *Cache) lookup(contractID string, obj *contract.ObjectClaim, stream bool) (*Handle, *flight, error) {
	key := entryKey(contractID, obj.Name)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, nil, ErrClosed
	}
	m := c.mounts[contractID]
	if m == nil {
		c.mu.Unlock()
		return nil, nil, fmt.Errorf("cache: %s: %w", contractID, ErrNotMounted)
	}
	c.sketch.add(key)
	if e := c.entries[key]; e != nil && !e.expires.IsZero() && !c.cfg.Now().Before(e.expires) {
		// Past its retention: it goes now, not at the next sweep.
		c.removeLocked(e)
		c.stats.Expired++
	}
	if e := c.entries[key]; e != nil && e.decodedSHA == obj.DecodedSHA256 && e.size == obj.DecodedSize {
		c.pinLocked(e, 1)
		if e.elem != nil {
			if e.region == regionWindow {
				c.window.touch(e)
			} else {
				c.main.touch(e)
			}
		}
		c.stats.Hits++
		var idle *os.File
		if n := len(e.idle); n > 0 {
			idle, e.idle = e.idle[n-1], e.idle[:n-1]
			c.idleFiles--
		}
		c.mu.Unlock()
		h, err := c.openEntry(e, idle, true)
		return h, nil, err
	}
	c.stats.Misses++
	fk := key + "\x00" + obj.DecodedSHA256
	f := c.flights[fk]
	if f == nil {
		if err := obj.Validate(); err != nil {
			c.mu.Unlock()
			return nil, nil, fmt.Errorf("cache: %w: %v", ErrBadClaim, err)
		}
		if !m.isLive(obj) {
			// The caller's claim predates a redaction already applied.
			c.mu.Unlock()
			return nil, nil, fmt.Errorf("cache: %s: %w", obj.Name, ErrPurged)
		}
		f = &flight{key: fk, done: make(chan struct{}), changed: make(chan struct{}), size: obj.DecodedSize,
			gen: c.purgeGen[key], cgen: c.purgeGen[contractID]}
		c.flights[fk] = f
		c.stats.Fetches++
		c.wg.Add(1)
		go c.runFlight(f, contractID, m, *obj)
	}
	f.waiters++
	c.mu.Unlock()
	return nil, f, nil
}

// wait waits for a flight and opens its entry.
func (c *Cache) wait(ctx context.Context, f *flight) (*Handle, error) {
	select {
	case <-f.done:
	case <-ctx.Done():
	}
	if !c.leave(f) {
		return nil, ctx.Err()
	}
	if f.err != nil {
		return nil, f.err
	}
	if ctx.Err() != nil {
		c.unpin(f.entry)
		return nil, ctx.Err()
	}
	return c.openEntry(f.entry, nil, false)
}

// leave reports whether f finished with this waiter counted (so that it
// holds a pin on f.entry if f succeeded); if not, the waiter is removed.
func (c *Cache) leave(f *flight) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.finished {
		return true
	}
	f.waiters--
	return false
}

// Purge removes a contract's object (a redaction): a fetch of it in
// flight is not committed, readers with open handles finish, and the file
// goes when they close; the origin drops the name's presigned URL.
func (c *Cache) Purge(contractID, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	key := entryKey(contractID, name)
	c.purgeGen[key]++
	c.forgetLocked(contractID, name)
	if e := c.entries[key]; e != nil {
		c.removeLocked(e)
		c.stats.Purged++
	}
	// A redaction must not come back after a power loss.
	return c.journal.sync()
}

// PurgeContract removes every object of a contract and returns how many
// entries it removed.
func (c *Cache) PurgeContract(contractID string) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, ErrClosed
	}
	c.purgeGen[contractID]++
	n := 0
	for _, e := range c.entries {
		if e.contract == contractID {
			c.removeLocked(e)
			c.forgetLocked(contractID, e.name)
			n++
		}
	}
	c.stats.Purged += uint64(n)
	return n, c.journal.sync()
}

// Stats are the cache's counters and gauges, for /metrics.
type Stats struct {
	Hits, Misses uint64
	// Fetches counts origin fetches started; Resumes ranged resumes after
	// a fault; OriginBytes stored bytes received.
	Fetches, Resumes, OriginBytes uint64
	// Evictions counts entries evicted for space, Rejected those of them
	// that TinyLFU refused to admit; Expired those removed by retention;
	// Purged those removed by Purge and PurgeContract.
	Evictions, Rejected, Expired, Purged uint64
	// Failures counts failed fetches and damaged entries by kind (Fail*).
	Failures map[string]uint64
	// Entries and Bytes are what is committed, Reserved what is in flight,
	// MaxBytes the bound (0: none).
	Entries          int
	Bytes, Reserved  int64
	MaxBytes         int64
	WindowBytes      int64
	MainBytes        int64
	Pinned, InFlight int
	Policy           string
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Failures = make(map[string]uint64, len(c.stats.Failures))
	for k, v := range c.stats.Failures {
		s.Failures[k] = v
	}
	s.Entries = len(c.entries)
	s.Bytes, s.Reserved, s.MaxBytes = c.used, c.reserved, c.cfg.MaxBytes
	s.WindowBytes, s.MainBytes = c.window.bytes, c.main.bytes
	s.Pinned = c.pinned
	s.InFlight = len(c.flights)
	s.Policy = c.cfg.Policy.String()
	return s
}

// Close stops fetches in flight and the background loop, writes the index
// and releases the directory. Open handles stay readable.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	err := c.syncPending()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		c.closeIdleLocked(e)
	}
	if cerr := c.compactLocked(); err == nil {
		err = cerr
	}
	if cerr := c.journal.close(); err == nil {
		err = cerr
	}
	if cerr := c.lock.Close(); err == nil {
		err = cerr
	}
	return err
}
