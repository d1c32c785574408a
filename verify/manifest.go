package verify

import (
	"container/list"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/provgate/provgate/contract"
)

// ManifestEntry is one verified object: its claim as signed by the
// contributor, the seq of the entry that introduced it, and who signed it.
type ManifestEntry struct {
	contract.ObjectClaim
	Seq    uint64 `json:"seq"`
	Issuer string `json:"issuer"`
	KeyID  string `json:"kid"`
}

// DefaultManifestCacheEntries is the size of the in-memory cache of
// looked-up manifest entries in front of the on-disk index.
const DefaultManifestCacheEntries = 8192

// Manifest is a contract's verified manifest: the objects of every verified
// contribution, transformation or batch not since redacted. It lives in
// the state database (table manifest, indexed by name), so that memory does
// not grow with the dataset; a small LRU of recent lookups sits in front.
// Readers see the last committed sync (SQLite's WAL snapshot); only the
// log replay changes it. It is safe for concurrent use.
type Manifest struct {
	db       *sql.DB // the store's read handle
	contract string

	mu       sync.Mutex
	gen      uint64 // bumped at every applied sync: a lookup started before caches nothing
	lru      *lru
	objects  int64
	redacted int64

	// fromCache and fromState count lookups by where they were answered
	// (nil: not counted).
	fromCache, fromState prometheus.Counter
}

func (s *Store) manifestFor(ctx context.Context, contractID string) (*Manifest, error) {
	m := &Manifest{db: s.rdb, contract: contractID, lru: newLRU(DefaultManifestCacheEntries)}
	err := s.rdb.QueryRowContext(ctx, "SELECT objects, redacted FROM logs WHERE contract = ?", contractID).Scan(&m.objects, &m.redacted)
	if err == nil && m.objects >= 0 && m.redacted >= 0 {
		return m, nil
	}
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("load manifest: %w", err)
	}
	// No counts kept (a state from before they were, or none): count.
	if err := s.rdb.QueryRowContext(ctx, "SELECT COUNT(*) FROM manifest WHERE contract = ?", contractID).Scan(&m.objects); err != nil {
		return nil, fmt.Errorf("load manifest: %w", err)
	}
	if err := s.rdb.QueryRowContext(ctx, "SELECT COUNT(*) FROM redactions WHERE contract = ?", contractID).Scan(&m.redacted); err != nil {
		return nil, fmt.Errorf("load redactions: %w", err)
	}
	return m, nil
}

const manifestColumns = `name, seq, issuer, kid, stored_sha256, stored_size, encoding, decoded_sha256, decoded_size,
	license, media_type, tokens`

func scanEntry(row interface{ Scan(...any) error }) (*ManifestEntry, error) {
	e := new(ManifestEntry)
	err := row.Scan(&e.Name, &e.Seq, &e.Issuer, &e.KeyID, &e.StoredSHA256, &e.StoredSize, &e.Encoding,
		&e.DecodedSHA256, &e.DecodedSize, &e.License, &e.MediaType, &e.Tokens)
	return e, err
}

// Lookup returns the entry for name, or an error wrapping ErrRedacted or
// ErrNotFound (or the state database's error).
func (m *Manifest) Lookup(name string) (ManifestEntry, error) {
	m.mu.Lock()
	if e, ok := m.lru.get(name); ok {
		m.mu.Unlock()
		if m.fromCache != nil {
			m.fromCache.Inc()
		}
		return *e, nil
	}
	gen := m.gen
	m.mu.Unlock()
	if m.fromState != nil {
		m.fromState.Inc()
	}
	ctx := context.Background()
	e, err := scanEntry(m.db.QueryRowContext(ctx, "SELECT "+manifestColumns+" FROM manifest WHERE contract = ? AND name = ?", m.contract, name))
	if err == nil {
		m.mu.Lock()
		if m.gen == gen {
			m.lru.add(name, e)
		}
		m.mu.Unlock()
		return *e, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return ManifestEntry{}, fmt.Errorf("manifest lookup %q: %w", name, err)
	}
	var seq uint64
	err = m.db.QueryRowContext(ctx, "SELECT seq FROM redactions WHERE contract = ? AND name = ?", m.contract, name).Scan(&seq)
	switch {
	case err == nil:
		return ManifestEntry{}, fmt.Errorf("%q: %w by entry %d", name, ErrRedacted, seq)
	case errors.Is(err, sql.ErrNoRows):
		return ManifestEntry{}, fmt.Errorf("%q: %w", name, ErrNotFound)
	default:
		return ManifestEntry{}, fmt.Errorf("manifest lookup %q: %w", name, err)
	}
}

// Len is the number of objects.
func (m *Manifest) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int(m.objects)
}

// Redacted is the number of redacted names.
func (m *Manifest) Redacted() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int(m.redacted)
}

// Entries lists the objects sorted by name. On a large dataset prefer
// Each, which does not hold them all.
func (m *Manifest) Entries() []ManifestEntry {
	var out []ManifestEntry
	if err := m.Each(context.Background(), func(e ManifestEntry) error {
		out = append(out, e)
		return nil
	}); err != nil {
		return nil
	}
	return out
}

// Each calls fn with every object, sorted by name, from one consistent
// snapshot, until fn returns an error (which Each returns).
func (m *Manifest) Each(ctx context.Context, fn func(ManifestEntry) error) error {
	rows, err := m.db.QueryContext(ctx, "SELECT "+manifestColumns+" FROM manifest WHERE contract = ? ORDER BY name", m.contract)
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return fmt.Errorf("manifest: %w", err)
		}
		if err := fn(*e); err != nil {
			return err
		}
	}
	return rows.Err()
}

// counts returns the numbers of objects and of redacted names.
func (m *Manifest) counts() (objects, redacted int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.objects, m.redacted
}

// apply makes a committed delta current: the counts move and, when the
// delta applied an attestation, the lookup cache is dropped. A delta of
// other entries only (metering batches, terms) wrote no manifest row, and
// the cache stays: otherwise every metering batch a busy sidecar ships
// would send its next lookups to the database.
func (m *Manifest) apply(d *delta) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if d.attested {
		m.gen++
		m.lru.clear()
	}
	m.objects += d.objDelta
	m.redacted += d.redDelta
}

// lru is a fixed-size least-recently-used map of names to entries.
type lru struct {
	max   int
	ll    *list.List
	items map[string]*list.Element
}

type lruItem struct {
	name string
	e    *ManifestEntry
}

func newLRU(max int) *lru { return &lru{max: max, ll: list.New(), items: map[string]*list.Element{}} }

func (c *lru) get(name string) (*ManifestEntry, bool) {
	el, ok := c.items[name]
	if !ok {
		return nil, false
	}
	c.ll.MoveToFront(el)
	return el.Value.(*lruItem).e, true
}

func (c *lru) add(name string, e *ManifestEntry) {
	if el, ok := c.items[name]; ok {
		el.Value.(*lruItem).e = e
		c.ll.MoveToFront(el)
		return
	}
	c.items[name] = c.ll.PushFront(&lruItem{name: name, e: e})
	if c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.items, old.Value.(*lruItem).name)
	}
}

func (c *lru) clear() {
	c.ll.Init()
	clear(c.items)
}

// delta is the change one sync makes to the manifest, the owners and the
// revocations. The manifest side is written as it is verified into the
// sync's own transaction on the state database (what the delta reads sees
// those writes; readers of the manifest do not until it commits); the
// rest is staged in memory, small.
type delta struct {
	ctx      context.Context
	tx       *sql.Tx
	st       *deltaStmts
	contract string
	// bulkStmts are addBatch's prepared statements, by text.
	bulkStmts map[string]*sql.Stmt

	revs     map[revKey]revocation // base revocations (read-only here)
	newRevs  map[revKey]revocation
	purged   []string // names removed or replaced: the cache must drop them
	rejected []rejection
	terms    *TermsHistory  // the history after the delta
	newTerms []TermsVersion // versions verified in this delta

	objDelta, redDelta int64
	// attested is set when an attestation entry was applied: only those
	// write manifest, redaction and owner rows.
	attested bool
	// redactions is how many redacted names there are, seen through the
	// delta: while none, a new name needs no redaction check.
	redactions int64
	// ownersKept is whether the owners table holds any name of the
	// contract (a name whose versions are all gone, or a state from before
	// owners were kept in the manifest rows): while not, a name without a
	// live version has no owner, and no lookup there is needed.
	ownersKept bool
}

type revKey struct{ issuer, kid string }

type revocation struct {
	Seq         uint64
	Retroactive bool
}

type rejection struct {
	Seq uint64
	Err error
}

type deltaStmts struct {
	ownerGet, ownerKeep, objGet, objPut, objDel, redGet, redPut, redDel *sql.Stmt
}

// A live name's owner is kept in its manifest row (owner_issuer,
// owner_seq): one row written per new name. When a name's last version
// goes (redaction, retroactive revocation) its owner moves to the owners
// table (a name's owner outlives its versions). A row of a state
// from before has an empty owner_issuer, and its owner in the owners table.
const putColumns = manifestColumns + ", owner_issuer, owner_seq"

func prepareDelta(ctx context.Context, tx *sql.Tx) (*deltaStmts, error) {
	st := &deltaStmts{}
	for _, p := range []struct {
		s **sql.Stmt
		q string
	}{
		{&st.ownerGet, "SELECT issuer, seq FROM owners WHERE contract = ? AND name = ?"},
		{&st.ownerKeep, `INSERT OR IGNORE INTO owners (contract, name, issuer, seq)
			SELECT contract, name, owner_issuer, owner_seq FROM manifest WHERE contract = ? AND name = ? AND owner_issuer != ''`},
		{&st.objGet, "SELECT seq, owner_issuer, owner_seq FROM manifest WHERE contract = ? AND name = ?"},
		{&st.objPut, `INSERT OR REPLACE INTO manifest (contract, ` + putColumns + `) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`},
		{&st.objDel, "DELETE FROM manifest WHERE contract = ? AND name = ?"},
		{&st.redGet, "SELECT seq FROM redactions WHERE contract = ? AND name = ?"},
		{&st.redPut, "INSERT OR REPLACE INTO redactions (contract, name, seq) VALUES (?, ?, ?)"},
		{&st.redDel, "DELETE FROM redactions WHERE contract = ? AND name = ?"},
	} {
		s, err := tx.PrepareContext(ctx, p.q)
		if err != nil {
			return nil, err
		}
		*p.s = s
	}
	return st, nil
}

// rollback ends the delta's transaction unless it committed; it may be
// called more than once.
func (d *delta) rollback() {
	if d != nil && d.tx != nil {
		d.tx.Rollback()
		d.tx = nil
	}
}

func (d *delta) revocation(k revKey) (revocation, bool) {
	if r, ok := d.newRevs[k]; ok {
		return r, true
	}
	r, ok := d.revs[k]
	return r, ok
}

// name returns name's live version's seq (live false when there is
// none) and its owner (owned false when nobody owns it), seen through the
// delta.
func (d *delta) name(name string) (seq uint64, live bool, o owner, owned bool, err error) {
	err = d.st.objGet.QueryRowContext(d.ctx, d.contract, name).Scan(&seq, &o.Issuer, &o.Seq)
	switch {
	case err == nil:
		live = true
		if o.Issuer != "" {
			return seq, true, o, true, nil
		}
	case errors.Is(err, sql.ErrNoRows):
	default:
		return 0, false, owner{}, false, err
	}
	if !d.ownersKept {
		return seq, live, owner{}, false, nil
	}
	o = owner{}
	err = d.st.ownerGet.QueryRowContext(d.ctx, d.contract, name).Scan(&o.Issuer, &o.Seq)
	if errors.Is(err, sql.ErrNoRows) {
		return seq, live, owner{}, false, nil
	}
	return seq, live, o, err == nil, err
}

func (d *delta) putRow(e *ManifestEntry, o owner) error {
	_, err := d.st.objPut.ExecContext(d.ctx, d.contract, e.Name, e.Seq, e.Issuer, e.KeyID, e.StoredSHA256, e.StoredSize, e.Encoding,
		e.DecodedSHA256, e.DecodedSize, e.License, e.MediaType, e.Tokens, o.Issuer, o.Seq)
	return err
}

// unredact clears a redaction of name, if there is one.
func (d *delta) unredact(name string) error {
	if d.redactions == 0 {
		return nil
	}
	res, err := d.st.redDel.ExecContext(d.ctx, d.contract, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n > 0 {
		d.redDelta--
		d.redactions--
	}
	return nil
}

// addObject applies one object of a verified contribution, transformation
// or batch: a new name is owned by its issuer; a live name gets a new
// version (its old bytes must leave the cache), but only from its owner
// or a curator (an *OwnershipError otherwise).
func (d *delta) addObject(t *termsVersion, e *ManifestEntry) error {
	_, live, o, owned, err := d.name(e.Name)
	if err != nil {
		return err
	}
	if !owned {
		// A name nobody owns yet: it is its first attester's for good.
		o = owner{Issuer: e.Issuer, Seq: e.Seq}
	} else if !t.Terms.MayRewrite(e.Issuer, o.Issuer) {
		return &OwnershipError{Seq: e.Seq, Issuer: e.Issuer, Action: "replaces", Name: e.Name, Owner: o.Issuer, OwnedSince: o.Seq}
	}
	if live {
		d.purged = append(d.purged, e.Name)
	} else {
		d.objDelta++
	}
	if err := d.putRow(e, o); err != nil {
		return err
	}
	return d.unredact(e.Name)
}

// redact applies a verified redaction by issuer at seq.
func (d *delta) redact(t *termsVersion, issuer string, seq uint64, r *contract.RedactionClaim) error {
	cur, live, o, owned, err := d.name(r.Name)
	if err != nil {
		return err
	}
	if owned && !t.Terms.MayRewrite(issuer, o.Issuer) {
		return &OwnershipError{Seq: seq, Issuer: issuer, Action: "redacts", Name: r.Name, Owner: o.Issuer, OwnedSince: o.Seq}
	}
	switch {
	case !live:
	case r.Seq == 0 || r.Seq == cur:
		if err := d.remove(r.Name); err != nil {
			return err
		}
	default:
		return nil // it redacts an earlier version of the name, already gone
	}
	var old uint64
	err = d.st.redGet.QueryRowContext(d.ctx, d.contract, r.Name).Scan(&old)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		d.redDelta++
		d.redactions++
	case err != nil:
		return err
	}
	_, err = d.st.redPut.ExecContext(d.ctx, d.contract, r.Name, seq)
	return err
}

// remove deletes name's live version; its owner stays, in the owners
// table.
func (d *delta) remove(name string) error {
	res, err := d.st.ownerKeep.ExecContext(d.ctx, d.contract, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n > 0 {
		d.ownersKept = true
	}
	if _, err := d.st.objDel.ExecContext(d.ctx, d.contract, name); err != nil {
		return err
	}
	d.objDelta--
	d.purged = append(d.purged, name)
	return nil
}

// dropSignedBy removes every object signed by the key k.
func (d *delta) dropSignedBy(k revKey) error {
	rows, err := d.tx.QueryContext(d.ctx, "SELECT name FROM manifest WHERE contract = ? AND issuer = ? AND kid = ?", d.contract, k.issuer, k.kid)
	if err != nil {
		return err
	}
	var names []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return err
		}
		names = append(names, name)
	}
	if err := rows.Close(); err != nil {
		return err
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for _, name := range names {
		if err := d.remove(name); err != nil {
			return err
		}
	}
	return nil
}

// owner is who owns a name: the issuer of its first verified contribution,
// transformation or batch, and that entry's seq. It outlives redactions.
type owner struct {
	Issuer string
	Seq    uint64
}

// Bulk statement sizes: rows per multi-row INSERT and names per IN list,
// well under SQLite's limit of 32766 parameters.
const (
	bulkRows  = 1000
	bulkNames = 2000
)

// addBatch applies the objects of a verified batch, as addObject does
// each, in a few statements per thousand objects rather than a few per
// object.
func (d *delta) addBatch(t *termsVersion, seq uint64, issuer, kid string, objs []contract.ObjectClaim) error {
	sorted := make([]*contract.ObjectClaim, len(objs))
	for i := range objs {
		sorted[i] = &objs[i]
	}
	// In name order the inserts touch neighbouring index pages.
	slices.SortFunc(sorted, func(a, b *contract.ObjectClaim) int { return strings.Compare(a.Name, b.Name) })
	names := make([]string, len(sorted))
	for i, o := range sorted {
		names[i] = o.Name
	}
	if !d.ownersKept {
		if err := d.addBatchNew(t, seq, issuer, kid, sorted, names); err != nil {
			return err
		}
		return d.unredactAll(names)
	}
	// The live versions and their owners, then the owners of names with
	// none.
	live := map[string]bool{}
	owned := map[string]owner{}
	err := d.inNames(names, "SELECT name, owner_issuer, owner_seq FROM manifest WHERE contract = ? AND name IN ", func(rows *sql.Rows) error {
		var name string
		var o owner
		if err := rows.Scan(&name, &o.Issuer, &o.Seq); err != nil {
			return err
		}
		live[name] = true
		if o.Issuer != "" {
			owned[name] = o
		}
		return nil
	})
	if err != nil {
		return err
	}
	if d.ownersKept {
		var rest []string
		for _, n := range names {
			if _, ok := owned[n]; !ok {
				rest = append(rest, n)
			}
		}
		if err := d.inNames(rest, "SELECT name, issuer, seq FROM owners WHERE contract = ? AND name IN ", func(rows *sql.Rows) error {
			var name string
			var o owner
			if err := rows.Scan(&name, &o.Issuer, &o.Seq); err != nil {
				return err
			}
			owned[name] = o
			return nil
		}); err != nil {
			return err
		}
	}
	owners := make([]owner, len(sorted))
	for i, o := range sorted {
		own, ok := owned[o.Name]
		if !ok {
			// A name nobody owns yet: it is its first attester's for good.
			owners[i] = owner{Issuer: issuer, Seq: seq}
		} else if !t.Terms.MayRewrite(issuer, own.Issuer) {
			return &OwnershipError{Seq: seq, Issuer: issuer, Action: "replaces", Name: o.Name, Owner: own.Issuer, OwnedSince: own.Seq}
		} else {
			owners[i] = own
		}
	}
	for _, o := range sorted {
		if live[o.Name] {
			d.purged = append(d.purged, o.Name) // a new version: the old bytes go
		} else {
			d.objDelta++
		}
	}
	if _, err := d.putRows(seq, issuer, kid, sorted, owners, false); err != nil {
		return err
	}
	return d.unredactAll(names)
}

// addBatchNew is addBatch while no name without a live version has an
// owner (the owners table holds none of the contract's): then a name
// that is not live is new, and its first attester's. Every row is
// written as a new name's, but where a live version is (ON CONFLICT DO
// NOTHING); only when some were live are those looked up (the rows
// whose seq is not this entry's), checked against their owners and
// replaced. The sync's transaction is rolled back on an error, rows
// written before it with it.
func (d *delta) addBatchNew(t *termsVersion, seq uint64, issuer, kid string, sorted []*contract.ObjectClaim, names []string) error {
	added, err := d.putRows(seq, issuer, kid, sorted, nil, true)
	if err != nil {
		return err
	}
	d.objDelta += added
	if added == int64(len(sorted)) {
		return nil
	}
	owned := map[string]owner{}
	if err := d.inNames(names, "SELECT name, seq, owner_issuer, owner_seq FROM manifest WHERE contract = ? AND name IN ", func(rows *sql.Rows) error {
		var name string
		var rowSeq uint64
		var o owner
		if err := rows.Scan(&name, &rowSeq, &o.Issuer, &o.Seq); err != nil {
			return err
		}
		if rowSeq != seq {
			owned[name] = o
		}
		return nil
	}); err != nil {
		return err
	}
	var again []*contract.ObjectClaim
	var owners []owner
	for _, o := range sorted {
		own, ok := owned[o.Name]
		if !ok {
			continue
		}
		if own.Issuer == "" {
			// Not kept in the row, and no owners kept: nobody's.
			own = owner{Issuer: issuer, Seq: seq}
		} else if !t.Terms.MayRewrite(issuer, own.Issuer) {
			return &OwnershipError{Seq: seq, Issuer: issuer, Action: "replaces", Name: o.Name, Owner: own.Issuer, OwnedSince: own.Seq}
		}
		d.purged = append(d.purged, o.Name) // a new version: the old bytes go
		again = append(again, o)
		owners = append(owners, own)
	}
	_, err = d.putRows(seq, issuer, kid, again, owners, false)
	return err
}

// unredactAll clears the redactions of names, where there are some.
func (d *delta) unredactAll(names []string) error {
	if d.redactions == 0 {
		return nil
	}
	for chunk := range slices.Chunk(names, bulkNames) {
		args := make([]any, 0, len(chunk)+1)
		args = append(args, d.contract)
		for _, n := range chunk {
			args = append(args, n)
		}
		res, err := d.tx.ExecContext(d.ctx, "DELETE FROM redactions WHERE contract = ? AND name IN "+placeholders(len(chunk)), args...)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			d.redDelta -= n
			d.redactions -= n
		}
	}
	return nil
}

// inNames runs query (which ends with "name IN ") for names in chunks,
// calling scan for each row.
func (d *delta) inNames(names []string, query string, scan func(*sql.Rows) error) error {
	for chunk := range slices.Chunk(names, bulkNames) {
		args := make([]any, 0, len(chunk)+1)
		args = append(args, d.contract)
		for _, n := range chunk {
			args = append(args, n)
		}
		rows, err := d.tx.QueryContext(d.ctx, query+placeholders(len(chunk)), args...)
		if err != nil {
			return err
		}
		for rows.Next() {
			if err := scan(rows); err != nil {
				rows.Close()
				return err
			}
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}

// putRows writes a batch's rows with multi-row statements of bulkRows
// rows, and returns how many it wrote. What every row shares (contract,
// seq, issuer, kid) is bound once per statement (?1 to ?4); each row binds
// its own 11 values. With owners nil, each row is owned by issuer at seq.
// With onlyNew, a name's live row is kept (not counted) rather than
// replaced.
func (d *delta) putRows(seq uint64, issuer, kid string, objs []*contract.ObjectClaim, owners []owner, onlyNew bool) (int64, error) {
	const perRow = 11
	var wrote int64
	for start := 0; start < len(objs); start += bulkRows {
		end := min(len(objs), start+bulkRows)
		var q strings.Builder
		if onlyNew {
			q.WriteString("INSERT INTO manifest (contract, " + putColumns + ") VALUES ")
		} else {
			q.WriteString("INSERT OR REPLACE INTO manifest (contract, " + putColumns + ") VALUES ")
		}
		a := make([]any, 0, 4+perRow*(end-start))
		a = append(a, d.contract, seq, issuer, kid)
		for i := start; i < end; i++ {
			if i > start {
				q.WriteString(", ")
			}
			p := len(a) + 1
			fmt.Fprintf(&q, "(?1, ?%d, ?2, ?3, ?4, ?%d, ?%d, ?%d, ?%d, ?%d, ?%d, ?%d, ?%d, ?%d, ?%d)",
				p, p+1, p+2, p+3, p+4, p+5, p+6, p+7, p+8, p+9, p+10)
			o, own := objs[i], owner{Issuer: issuer, Seq: seq}
			if owners != nil {
				own = owners[i]
			}
			a = append(a, o.Name, o.StoredSHA256, o.StoredSize, o.Encoding, o.DecodedSHA256, o.DecodedSize,
				o.License, o.MediaType, o.Tokens, own.Issuer, own.Seq)
		}
		if onlyNew {
			q.WriteString(" ON CONFLICT DO NOTHING")
		}
		n, err := d.exec(q.String(), a...)
		if err != nil {
			return wrote, err
		}
		wrote += n
	}
	return wrote, nil
}

// exec runs a bulk statement, prepared once per sync and kept (a full
// chunk's statement is the same text every time).
func (d *delta) exec(q string, args ...any) (int64, error) {
	st, ok := d.bulkStmts[q]
	if !ok {
		var err error
		if st, err = d.tx.PrepareContext(d.ctx, q); err != nil {
			return 0, err
		}
		if d.bulkStmts == nil {
			d.bulkStmts = map[string]*sql.Stmt{}
		}
		d.bulkStmts[q] = st
	}
	res, err := st.ExecContext(d.ctx, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func placeholders(n int) string {
	return "(?" + strings.Repeat(", ?", n-1) + ")"
}
