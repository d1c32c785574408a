// Package verifytest builds provenance logs in-process for tests: a fake
// contributor that signs attestations with a real key, and an in-memory
// log that signs real checkpoints and serves pages and consistency proofs
// through the same interfaces the registry client satisfies
// (verify.LogSource). It never touches the network.
package verifytest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// Contributor signs attestations with its own key.
type Contributor struct {
	ID  string
	Key *jose.JSONWebKey
	// Now is the clock for iat; nil is time.Now.
	Now func() time.Time
	mu  sync.Mutex
	n   int
}

// NewContributor makes a contributor with a fresh key of alg.
func NewContributor(tb testing.TB, id string, alg jose.SignatureAlgorithm) *Contributor {
	tb.Helper()
	k, err := verify.GenerateKey(alg)
	if err != nil {
		tb.Fatal(err)
	}
	return &Contributor{ID: id, Key: k}
}

// Info is the contributor as a contract lists it (inline JWKS).
func (c *Contributor) Info() contract.Contributor {
	return contract.Contributor{ID: c.ID, JWKS: verify.PublicJWKS(c.Key)}
}

func (c *Contributor) base(contractID string, typ contract.AttestationType) *contract.Attestation {
	c.mu.Lock()
	c.n++
	n := c.n
	c.mu.Unlock()
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	return &contract.Attestation{Issuer: c.ID, Subject: contractID, IssuedAt: now().Unix(), ID: fmt.Sprintf("%s-%d", c.ID, n), Type: typ}
}

// Sign signs a.
func (c *Contributor) Sign(tb testing.TB, a *contract.Attestation) string {
	tb.Helper()
	jws, err := verify.SignAttestation(c.Key, a)
	if err != nil {
		tb.Fatal(err)
	}
	return jws
}

// Object returns an identity-encoded claim for data under name.
func Object(name string, data []byte) *contract.ObjectClaim {
	h := sha256.Sum256(data)
	d := hex.EncodeToString(h[:])
	return &contract.ObjectClaim{Name: name, StoredSHA256: d, StoredSize: int64(len(data)), Encoding: contract.EncodingIdentity,
		DecodedSHA256: d, DecodedSize: int64(len(data)), License: "cc-by-4.0"}
}

// Contribution signs a contribution of obj.
func (c *Contributor) Contribution(tb testing.TB, contractID string, obj *contract.ObjectClaim) string {
	tb.Helper()
	a := c.base(contractID, contract.Contribution)
	a.Object = obj
	return c.Sign(tb, a)
}

// Redaction signs a redaction of name (seq 0: whatever version is current).
func (c *Contributor) Redaction(tb testing.TB, contractID, name string, seq uint64) string {
	tb.Helper()
	a := c.base(contractID, contract.Redaction)
	a.Redaction = &contract.RedactionClaim{Name: name, Seq: seq, Reason: "test"}
	return c.Sign(tb, a)
}

// Revocation signs a revocation of one of the contributor's kids.
func (c *Contributor) Revocation(tb testing.TB, contractID, kid string, retroactive bool) string {
	tb.Helper()
	a := c.base(contractID, contract.Revocation)
	a.Revocation = &contract.RevocationClaim{KeyID: kid, Reason: "test", Retroactive: retroactive}
	return c.Sign(tb, a)
}

// Log is an in-memory provenance log of one contract with a real
// checkpoint key. It implements verify.LogSource. Safe for concurrent use.
type Log struct {
	Contract *contract.Contract

	signer *verify.CheckpointSigner
	mu     sync.Mutex
	raws   [][]byte
	tree   *testonly.Tree
	// manifests are the batch manifests served by digest.
	manifests map[string][]byte
}

var (
	_ verify.LogSource      = (*Log)(nil)
	_ verify.ManifestSource = (*Log)(nil)
)

// NewLog makes an empty log for a contract with the given contributors.
func NewLog(tb testing.TB, contractID string, contributors ...contract.Contributor) *Log {
	tb.Helper()
	origin := "registry.test/log/" + contractID
	skey, vkey, err := verify.GenerateCheckpointKey("registry.test")
	if err != nil {
		tb.Fatal(err)
	}
	signer, err := verify.NewCheckpointSigner(skey)
	if err != nil {
		tb.Fatal(err)
	}
	c := &contract.Contract{
		ContractID: contractID, Version: "1", License: "cc-by-4.0",
		Pricing:      contract.Pricing{Unit: contract.UnitSample, PriceUSD: 0.001},
		Usage:        contract.Usage{Purposes: []string{"test"}},
		Contributors: contributors,
		Origin:       contract.Origin{Bucket: "b"},
		Log:          contract.LogInfo{Origin: origin, CheckpointKey: vkey},
	}
	l := &Log{Contract: c, signer: signer, tree: testonly.New(rfc6962.DefaultHasher)}
	l.AppendTerms(tb, c, time.Now())
	return l
}

// AppendTerms adds a version of the terms (signed by the log's key), in
// force from effective, and makes l.Contract that version with its seq, as
// a registry serves it. NewLog appends the first at entry 1.
func (l *Log) AppendTerms(tb testing.TB, c *contract.Contract, effective time.Time) uint64 {
	tb.Helper()
	terms := *c
	terms.TermsSeq = 0
	signed, err := l.signer.SignTerms(&contract.TermsVersion{Contract: c.ContractID, EffectiveFrom: effective.UTC(), Terms: terms})
	if err != nil {
		tb.Fatal(err)
	}
	seq := l.Append(tb, contract.EntryContract, signed)
	served := terms
	served.TermsSeq = seq
	l.Contract = &served
	return seq
}

// SetTerms replaces the first terms of a log that holds nothing else, for
// tests that change the contract after NewLog.
func (l *Log) SetTerms(tb testing.TB, c *contract.Contract) {
	tb.Helper()
	l.mu.Lock()
	if len(l.raws) != 1 {
		l.mu.Unlock()
		tb.Fatal("SetTerms: the log holds more than its first terms")
	}
	l.raws, l.tree = nil, testonly.New(rfc6962.DefaultHasher)
	l.mu.Unlock()
	l.AppendTerms(tb, c, time.Now())
}

// ReplaceFirst makes a log's first entry one of kind carrying jws (a log
// from before terms were logged), for tests.
func (l *Log) ReplaceFirst(tb testing.TB, kind contract.EntryKind, jws string) {
	tb.Helper()
	l.mu.Lock()
	l.raws, l.tree = nil, testonly.New(rfc6962.DefaultHasher)
	l.mu.Unlock()
	l.Append(tb, kind, jws)
}

// Fork returns a log with the same contract and key holding the first n
// entries of l: appending to it rewrites history.
func (l *Log) Fork(n uint64) *Log {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := &Log{Contract: l.Contract, signer: l.signer, tree: testonly.New(rfc6962.DefaultHasher)}
	for _, raw := range l.raws[:n] {
		f.raws = append(f.raws, raw)
		f.tree.AppendData(raw)
	}
	return f
}

// Append adds an entry of kind carrying jws and returns its seq.
func (l *Log) Append(tb testing.TB, kind contract.EntryKind, jws string, accepted ...string) uint64 {
	tb.Helper()
	seq, err := l.append(kind, jws, accepted)
	if err != nil {
		tb.Fatal(err)
	}
	return seq
}

// AppendAttestation adds an attestation entry.
func (l *Log) AppendAttestation(tb testing.TB, jws string) uint64 {
	tb.Helper()
	return l.Append(tb, contract.EntryAttestation, jws)
}

func (l *Log) append(kind contract.EntryKind, jws string, accepted []string) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	seq := uint64(len(l.raws)) + 1
	prev := hex.EncodeToString(contract.ZeroHash)
	if seq > 1 {
		prev = hex.EncodeToString(contract.LeafHash(l.raws[seq-2]))
	}
	e := &contract.Entry{V: contract.EntryVersion, Seq: seq, PrevHash: prev, Time: time.Now().UTC(),
		Contract: l.Contract.ContractID, Kind: kind, JWS: jws, Accepted: accepted}
	if kind == contract.EntryContract {
		e.JWS, e.Note = "", jws
	}
	raw, err := contract.EncodeEntry(e)
	if err != nil {
		return 0, err
	}
	l.raws = append(l.raws, raw)
	l.tree.AppendData(raw)
	return seq, nil
}

// AppendRaw adds bytes as the next entry as they are (for malformed-entry
// tests).
func (l *Log) AppendRaw(raw []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.raws = append(l.raws, bytes.Clone(raw))
	l.tree.AppendData(raw)
}

// Size is the number of entries.
func (l *Log) Size() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return uint64(len(l.raws))
}

// Entry returns the bytes of entry seq.
func (l *Log) Entry(seq uint64) []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.raws[seq-1]
}

// SignCheckpoint signs a checkpoint of the first size entries. Its signed
// time is the wall clock (the note library reads time.Now): tests that need
// an old checkpoint move the verifier's clock instead.
func (l *Log) SignCheckpoint(tb testing.TB, size uint64) []byte {
	tb.Helper()
	l.mu.Lock()
	root := l.tree.HashAt(size)
	l.mu.Unlock()
	note, err := l.signer.Sign(l.Contract.Log.Origin, size, root)
	if err != nil {
		tb.Fatal(err)
	}
	return note
}

// Checkpoint signs the current size (verify.LogSource).
func (l *Log) Checkpoint(_ context.Context, id string) ([]byte, error) {
	if id != l.Contract.ContractID {
		return nil, contract.Errorf(404, contract.CodeNotFound, "no contract %q", id)
	}
	l.mu.Lock()
	size, root := uint64(len(l.raws)), l.tree.Hash()
	l.mu.Unlock()
	return l.signer.Sign(l.Contract.Log.Origin, size, root)
}

// Events serves a page (verify.LogSource).
func (l *Log) Events(_ context.Context, id string, since uint64, limit int) (*contract.EventsPage, error) {
	if id != l.Contract.ContractID {
		return nil, contract.Errorf(404, contract.CodeNotFound, "no contract %q", id)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	p := &contract.EventsPage{TreeSize: uint64(len(l.raws)), Entries: []contract.WireEntry{}}
	for seq := since + 1; seq <= uint64(len(l.raws)) && len(p.Entries) < limit; seq++ {
		p.Entries = append(p.Entries, contract.WireEntry{Seq: seq, Entry: l.raws[seq-1]})
	}
	return p, nil
}

// ConsistencyProof serves a proof (verify.LogSource).
func (l *Log) ConsistencyProof(_ context.Context, id string, from, to uint64) (*contract.ConsistencyProof, error) {
	if id != l.Contract.ContractID {
		return nil, contract.Errorf(404, contract.CodeNotFound, "no contract %q", id)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if from > to || to > uint64(len(l.raws)) {
		return nil, contract.Errorf(400, contract.CodeBadRequest, "bad sizes %d..%d", from, to)
	}
	h, err := l.tree.ConsistencyProof(from, to)
	if err != nil {
		return nil, err
	}
	return &contract.ConsistencyProof{From: from, To: to, Hashes: h}, nil
}

// Batch signs a batch contribution of objs: the JWS and its manifest.
func (c *Contributor) Batch(tb testing.TB, contractID string, objs []contract.ObjectClaim) (jws string, manifest []byte) {
	tb.Helper()
	a, raw, err := verify.NewBatch(c.ID, contractID, objs)
	if err != nil {
		tb.Fatal(err)
	}
	b := c.base(contractID, contract.Batch)
	a.IssuedAt, a.ID = b.IssuedAt, b.ID
	return c.Sign(tb, a), raw
}

// AppendBatch adds a batch entry and serves its manifest by digest.
func (l *Log) AppendBatch(tb testing.TB, jws string, manifest []byte) uint64 {
	tb.Helper()
	l.PutManifest(contract.ManifestDigest(manifest), manifest)
	return l.AppendAttestation(tb, jws)
}

// PutManifest serves b as the batch manifest of digest (which need not be
// b's: a registry serving other bytes).
func (l *Log) PutManifest(digest string, b []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.manifests == nil {
		l.manifests = map[string][]byte{}
	}
	l.manifests[digest] = bytes.Clone(b)
}

// BatchManifest serves a batch manifest (verify.ManifestSource).
func (l *Log) BatchManifest(_ context.Context, id, digest string) ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.manifests[digest]
	if id != l.Contract.ContractID || !ok {
		return nil, contract.Errorf(404, contract.CodeNotFound, "no manifest %s", digest)
	}
	return bytes.Clone(b), nil
}
