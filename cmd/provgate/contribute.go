package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/tokenize"
	"github.com/provgate/provgate/verify"
)

func init() {
	commands["contribute"] = command{summary: "upload files to a contract's bucket and append signed contribution attestations", run: runContribute}
}

const contributeSynopsis = "contribute --registry URL --contract ID --key FILE --s3-endpoint URL [--bucket B]\n                    [--name-prefix P] [--encoding identity|gzip|zstd] [--contributor ID] [--batch-size N] PATH...\n\n" +
	"Each file becomes one object. Its logical name (what readers ask the sidecar for,\n" +
	"and what redact takes) is --name-prefix + its path relative to PATH. Its bytes go to\n" +
	"the bucket under the contract's origin.prefix + that name: origin.prefix is fixed\n" +
	"by the contract, --name-prefix is yours to choose.\n\n" +
	"More than one file is attested in batches: one signed attestation per manifest of up\n" +
	"to --batch-size objects (and 8 MiB), appended once its objects are uploaded.\n" +
	"--batch-size 1 signs one attestation per file.\n\n" +
	"With --shards (the default), a .tar file is a WebDataset shard: its member index\n" +
	"(name, offset, size, sha256 of each member; samples = distinct keys) is attested with it."

type contributeOpts struct {
	client      *contract.Client
	s3          *minio.Client
	c           *contract.Contract
	key         *jose.JSONWebKey
	contributor string
	encoding    string
	tmpDir      string
	existing    map[string]contract.ObjectClaim
	shards      bool
}

type contributeItem struct {
	path, name string
}

func runContribute(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("contribute", contributeSynopsis, stderr)
	reg := fs.String("registry", "", "registry base URL")
	contractID := fs.String("contract", "", "contract id")
	keyFile := fs.String("key", "", "the contributor's private JWK")
	s3Endpoint := fs.String("s3-endpoint", "", "S3 endpoint URL (credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or the shared files)")
	bucket := fs.String("bucket", "", "bucket (default and only allowed value: the contract's origin bucket)")
	prefix := fs.String("name-prefix", "", "prefix of the logical object names (name = PREFIX + path relative to PATH); not the contract's origin.prefix, which the bucket key adds in front of the name")
	fs.Var(aliasFlag{fs.Lookup("name-prefix")}, "prefix", "old name of --name-prefix")
	encoding := fs.String("encoding", contract.EncodingIdentity, "store each file as identity, gzip or zstd")
	contributor := fs.String("contributor", "", "contributor id (default: the contract's contributor whose keys include --key)")
	jobs := fs.Int("jobs", 4, "files processed in parallel")
	batchSize := fs.Int("batch-size", defaultBatchSize, fmt.Sprintf("objects per batch attestation (1: one attestation per file; at most %d)", contract.MaxBatchObjects))
	shards := fs.Bool("shards", true, "contribute .tar files as WebDataset shards, their member index in the claim")
	progressEvery := fs.Duration("progress-interval", 5*time.Second, "when stderr is not a terminal, one progress line per interval")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *reg == "" || *contractID == "" || *keyFile == "" || *s3Endpoint == "" || fs.NArg() == 0 {
		return &usageError{msg: "contribute: --registry, --contract, --key, --s3-endpoint and at least one PATH are required"}
	}
	switch *encoding {
	case contract.EncodingIdentity, contract.EncodingGzip, contract.EncodingZstd:
	default:
		return &usageError{msg: fmt.Sprintf("contribute: --encoding %q: want identity, gzip or zstd", *encoding)}
	}
	if *batchSize < 1 || *batchSize > contract.MaxBatchObjects {
		return &usageError{msg: fmt.Sprintf("contribute: --batch-size %d: want 1 to %d", *batchSize, contract.MaxBatchObjects)}
	}
	if *prefix != "" && !strings.HasSuffix(*prefix, "/") {
		*prefix += "/"
	}
	key, err := verify.LoadKey(*keyFile)
	if err != nil {
		return err
	}
	client, err := contract.NewClient(*reg)
	if err != nil {
		return err
	}
	c, _, err := client.GetContract(ctx, *contractID, "")
	if err != nil {
		return fmt.Errorf("contribute: contract %s: %w", *contractID, err)
	}
	o := &contributeOpts{client: client, c: c, key: key, contributor: *contributor, encoding: *encoding, tmpDir: os.TempDir(), shards: *shards}
	if o.contributor == "" {
		if o.contributor, err = contributorOf(c, key); err != nil {
			return err
		}
	}
	if *bucket != "" && *bucket != c.Origin.Bucket {
		return fmt.Errorf("contribute: --bucket %q is not the contract's origin bucket %q", *bucket, c.Origin.Bucket)
	}
	if o.s3, err = newS3Client(*s3Endpoint); err != nil {
		return err
	}
	items, err := collectFiles(fs.Args(), *prefix)
	if err != nil {
		return err
	}
	if o.existing, err = liveObjects(ctx, client, c.ContractID); err != nil {
		return fmt.Errorf("contribute: read the log: %w", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	prog := newProgress(stderr, len(items), *progressEvery)
	var batches *batcher
	if len(items) > 1 && *batchSize > 1 || o.shards && anyShard(items) {
		// A shard's index needs a batch manifest's room.
		batches = &batcher{o: o, max: *batchSize, prog: prog}
	}
	work := make(chan contributeItem)
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	fail := func(err error) { errOnce.Do(func() { firstErr = err; cancel() }) }
	for range max(1, *jobs) {
		wg.Go(func() {
			for it := range work {
				obj, n, err := o.prepare(ctx, it)
				if err == nil && obj != nil {
					if batches != nil {
						err = batches.add(ctx, *obj)
					} else {
						err = o.appendOne(ctx, obj)
					}
				}
				if err != nil {
					fail(fmt.Errorf("contribute: %s: %w", it.path, err))
					continue
				}
				prog.add(obj != nil, n)
			}
		})
	}
feed:
	for _, it := range items {
		select {
		case work <- it:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if batches != nil && firstErr == nil {
		if err := batches.flush(ctx); err != nil {
			fail(fmt.Errorf("contribute: %w", err))
		}
	}
	prog.finish()
	if firstErr != nil {
		return firstErr
	}
	if batches != nil && batches.appended > 0 {
		fmt.Fprintf(stdout, "contributed %d objects to %s in %d batch attestations (%d already in the log)\n", prog.added, c.ContractID, batches.appended, prog.skipped)
		return nil
	}
	fmt.Fprintf(stdout, "contributed %d objects to %s (%d already in the log)\n", prog.added, c.ContractID, prog.skipped)
	return nil
}

// defaultBatchSize is how many objects one batch attestation covers by
// default: a manifest of ~10k claims is 2-4 MiB, under the 8 MiB bound.
const defaultBatchSize = 10000

// prepare uploads one file and returns its claim, unless the log already
// holds a live object of that name with the same content and encoding
// (then nil).
func (o *contributeOpts) prepare(ctx context.Context, it contributeItem) (obj *contract.ObjectClaim, n int64, err error) {
	// A contract priced per token gets each object's count under its
	// tokenizer, which the sidecar checks again and bills.
	var tokenizer string
	if o.c.Pricing.Unit == contract.UnitToken {
		tokenizer = o.c.Pricing.Tokenizer
	}
	decSHA, decSize, tokens, err := hashFile(it.path, tokenizer)
	if err != nil {
		return nil, 0, err
	}
	var shard *contract.ShardIndex
	if o.shards && isShardFile(it.name) {
		if shard, err = shardIndexFile(it.path, tokenizer); err != nil {
			return nil, 0, err
		}
		tokens = shard.Tokens()
	}
	if prev, ok := o.existing[it.name]; ok && prev.DecodedSHA256 == decSHA && prev.Encoding == o.encoding && prev.Tokens == tokens &&
		(prev.Shard != nil) == (shard != nil) {
		return nil, decSize, nil
	}
	obj = &contract.ObjectClaim{Name: it.name, Encoding: o.encoding, DecodedSHA256: decSHA, DecodedSize: decSize,
		MediaType: mime.TypeByExtension(path.Ext(it.name)), Tokens: tokens, Shard: shard}
	if shard != nil {
		obj.MediaType = shardMediaType
	}
	upload := it.path
	if o.encoding == contract.EncodingIdentity {
		obj.StoredSHA256, obj.StoredSize = decSHA, decSize
	} else {
		tmp, sum, size, err := encodeFile(it.path, o.tmpDir, o.encoding)
		if err != nil {
			return nil, 0, err
		}
		defer os.Remove(tmp)
		upload, obj.StoredSHA256, obj.StoredSize = tmp, sum, size
	}
	f, err := os.Open(upload)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	if _, err := o.s3.PutObject(ctx, o.c.Origin.Bucket, o.c.Origin.Key(it.name), f, obj.StoredSize,
		minio.PutObjectOptions{ContentType: "application/octet-stream"}); err != nil {
		return nil, 0, fmt.Errorf("upload: %w", err)
	}
	return obj, decSize, nil
}

// one uploads one file and appends its own attestation (prepare and
// appendOne).
func (o *contributeOpts) one(ctx context.Context, it contributeItem) (added bool, n int64, err error) {
	obj, n, err := o.prepare(ctx, it)
	if err != nil || obj == nil {
		return false, n, err
	}
	return true, n, o.appendOne(ctx, obj)
}

// appendOne signs and appends the contribution of one uploaded object.
func (o *contributeOpts) appendOne(ctx context.Context, obj *contract.ObjectClaim) error {
	a := &contract.Attestation{Issuer: o.contributor, Subject: o.c.ContractID, IssuedAt: time.Now().Unix(), ID: verify.NewID(),
		Type: contract.Contribution, Object: obj}
	jws, err := verify.SignAttestation(o.key, a)
	if err != nil {
		return err
	}
	if _, err := appendSigned(ctx, o.client, o.c.ContractID, jws); err != nil {
		return fmt.Errorf("append: %w", err)
	}
	return nil
}

// batcher gathers the claims of uploaded objects and appends them as batch
// attestations of up to max objects, each manifest under the size bound.
type batcher struct {
	o    *contributeOpts
	max  int
	prog *progress

	mu       sync.Mutex
	pending  []contract.ObjectClaim
	bytes    int // estimated manifest bytes of pending
	appended int
	send     sync.Mutex // one append at a time, in order
}

// batchBudget keeps a manifest under the bound with room for its framing.
const batchBudget = contract.MaxBatchManifestSize - 64<<10

func (b *batcher) add(ctx context.Context, obj contract.ObjectClaim) error {
	size := claimSize(&obj)
	b.mu.Lock()
	var full []contract.ObjectClaim
	if len(b.pending) > 0 && (len(b.pending) >= b.max || b.bytes+size > batchBudget) {
		full, b.pending, b.bytes = b.pending, nil, 0
	}
	b.pending = append(b.pending, obj)
	b.bytes += size
	b.mu.Unlock()
	if full == nil {
		return nil
	}
	return b.append(ctx, full)
}

func (b *batcher) flush(ctx context.Context) error {
	b.mu.Lock()
	full := b.pending
	b.pending, b.bytes = nil, 0
	b.mu.Unlock()
	if len(full) == 0 {
		return nil
	}
	return b.append(ctx, full)
}

func (b *batcher) append(ctx context.Context, objs []contract.ObjectClaim) error {
	b.send.Lock()
	defer b.send.Unlock()
	jws, manifest, err := verify.SignBatch(b.o.key, b.o.contributor, b.o.c.ContractID, objs)
	if err != nil {
		return err
	}
	if _, err := appendBatch(ctx, b.o.client, b.o.c.ContractID, jws, manifest); err != nil {
		return fmt.Errorf("append batch of %d objects: %w", len(objs), err)
	}
	b.mu.Lock()
	b.appended++
	b.mu.Unlock()
	b.prog.batch(len(objs))
	return nil
}

// claimSize is an upper estimate of a claim's bytes in a manifest.
func claimSize(o *contract.ObjectClaim) int {
	return 256 + 2*len(o.Name) + len(o.MediaType) + len(o.License)
}

// appendBatch submits a batch attestation with its manifest, retrying
// transient failures as appendSigned does.
func appendBatch(ctx context.Context, client *contract.Client, contractID, jws string, manifest []byte) (uint64, error) {
	return retryAppend(ctx, func() (*contract.AppendResult, error) {
		return client.AppendBatch(ctx, contractID, jws, manifest)
	})
}

// appendSigned submits a signed attestation, retrying transient failures
// with the same JWS: the registry refuses a second copy of an attestation
// id with 409, which after a retry means the first attempt landed (its seq
// is then unknown: 0).
func appendSigned(ctx context.Context, client *contract.Client, contractID, jws string) (uint64, error) {
	return retryAppend(ctx, func() (*contract.AppendResult, error) {
		return client.AppendAttestation(ctx, contractID, jws)
	})
}

func retryAppend(ctx context.Context, try func() (*contract.AppendResult, error)) (uint64, error) {
	var err error
	for attempt := 1; attempt <= contract.DefaultMaxAttempts; attempt++ {
		var res *contract.AppendResult
		if res, err = try(); err == nil {
			return res.Seq, nil
		}
		st := contract.StatusOf(err)
		if attempt > 1 && st == http.StatusConflict {
			return 0, nil
		}
		if st != 0 && !contract.IsRetryable(st) {
			return 0, err
		}
		t := time.NewTimer(contract.Backoff(attempt, contract.DefaultBaseDelay, contract.DefaultMaxDelay))
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, errors.Join(ctx.Err(), err)
		case <-t.C:
		}
	}
	return 0, err
}

// signer is a contributor's key and id, loaded for a command that signs
// attestations (contribute, redact, revoke-key).
type signer struct {
	client      *contract.Client
	c           *contract.Contract
	key         *jose.JSONWebKey
	contributor string
}

// loadSigner reads the key, fetches the contract and finds the contributor
// (the one whose inline keys hold the key, unless given).
func loadSigner(ctx context.Context, registry, contractID, keyFile, contributor string) (*signer, error) {
	key, err := verify.LoadKey(keyFile)
	if err != nil {
		return nil, err
	}
	client, err := contract.NewClient(registry)
	if err != nil {
		return nil, err
	}
	c, _, err := client.GetContract(ctx, contractID, "")
	if err != nil {
		return nil, fmt.Errorf("contract %s: %w", contractID, err)
	}
	if contributor == "" {
		if contributor, err = contributorOf(c, key); err != nil {
			return nil, err
		}
	}
	return &signer{client: client, c: c, key: key, contributor: contributor}, nil
}

// sign signs an attestation of the given type about the contract and
// appends it; it returns the entry's seq.
func (s *signer) sign(ctx context.Context, a *contract.Attestation) (uint64, error) {
	a.Issuer, a.Subject, a.IssuedAt, a.ID = s.contributor, s.c.ContractID, time.Now().Unix(), verify.NewID()
	jws, err := verify.SignAttestation(s.key, a)
	if err != nil {
		return 0, err
	}
	return appendSigned(ctx, s.client, s.c.ContractID, jws)
}

// contributorOf finds the contract's contributor whose inline keys hold key.
func contributorOf(c *contract.Contract, key *jose.JSONWebKey) (string, error) {
	tp, err := verify.Thumbprint(key)
	if err != nil {
		return "", err
	}
	for _, ct := range c.Contributors {
		if ct.JWKS == nil {
			continue
		}
		for _, k := range ct.JWKS.Keys {
			if ktp, err := verify.Thumbprint(&k); err == nil && ktp == tp {
				return ct.ID, nil
			}
		}
	}
	return "", fmt.Errorf("key %s is not among the inline keys of contract %s's contributors; pass --contributor", key.KeyID, c.ContractID)
}

// collectFiles lists the regular files under each path; a file's name is
// prefix + its path relative to the directory given (or its base name).
func collectFiles(paths []string, prefix string) ([]contributeItem, error) {
	var items []contributeItem
	seen := map[string]string{}
	add := func(path, rel string) error {
		name := prefix + filepath.ToSlash(rel)
		if err := contract.ValidateName(name); err != nil {
			return fmt.Errorf("contribute: %s: %w", path, err)
		}
		if other, ok := seen[name]; ok {
			return fmt.Errorf("contribute: %s and %s both map to name %q", other, path, name)
		}
		seen[name] = path
		items = append(items, contributeItem{path: path, name: name})
		return nil
	}
	for _, root := range paths {
		st, err := os.Stat(root)
		if err != nil {
			return nil, fmt.Errorf("contribute: %w", err)
		}
		if !st.IsDir() {
			if err := add(root, filepath.Base(root)); err != nil {
				return nil, err
			}
			continue
		}
		err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.Type().IsRegular() {
				return nil // directories, symlinks, devices
			}
			rel, err := filepath.Rel(root, path)
			if err != nil {
				return err
			}
			return add(path, rel)
		})
		if err != nil {
			return nil, fmt.Errorf("contribute: %w", err)
		}
	}
	if len(items) == 0 {
		return nil, errors.New("contribute: no files found")
	}
	return items, nil
}

// hashFile returns a file's sha256 and size, and its token count under
// tokenizer when one is named.
func hashFile(path, tokenizer string) (sum string, size, tokens int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, 0, err
	}
	defer f.Close()
	h := sha256.New()
	var w io.Writer = h
	var tc tokenize.Counter
	if tokenizer != "" {
		if tc, err = tokenize.New(tokenizer); err != nil {
			return "", 0, 0, err
		}
		w = io.MultiWriter(h, tc)
	}
	n, err := io.Copy(w, f)
	if err != nil {
		return "", 0, 0, fmt.Errorf("%s: %w", path, err)
	}
	if tc != nil {
		if tokens, err = tc.Count(); err != nil {
			return "", 0, 0, fmt.Errorf("%s: %w", path, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), n, tokens, nil
}

// encodeFile compresses path into a temp file, hashing what it writes.
func encodeFile(path, dir, encoding string) (tmp, sum string, size int64, err error) {
	in, err := os.Open(path)
	if err != nil {
		return "", "", 0, err
	}
	defer in.Close()
	out, err := os.CreateTemp(dir, "provgate-contribute-*")
	if err != nil {
		return "", "", 0, err
	}
	defer func() {
		out.Close()
		if err != nil {
			os.Remove(out.Name())
		}
	}()
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(out, h)}
	var enc io.WriteCloser
	switch encoding {
	case contract.EncodingGzip:
		enc = gzip.NewWriter(cw)
	case contract.EncodingZstd:
		if enc, err = zstd.NewWriter(cw, zstd.WithEncoderConcurrency(1)); err != nil {
			return "", "", 0, err
		}
	default:
		return "", "", 0, fmt.Errorf("unknown encoding %q", encoding)
	}
	if _, err = io.Copy(enc, in); err != nil {
		return "", "", 0, err
	}
	if err = enc.Close(); err != nil {
		return "", "", 0, err
	}
	if err = out.Close(); err != nil {
		return "", "", 0, err
	}
	return out.Name(), hex.EncodeToString(h.Sum(nil)), cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// liveObjects replays the log (trusting the registry: this is only to skip
// work already done) and returns the live objects by name.
func liveObjects(ctx context.Context, client *contract.Client, contractID string) (map[string]contract.ObjectClaim, error) {
	live := map[string]contract.ObjectClaim{}
	var since uint64
	for {
		page, err := client.Events(ctx, contractID, since, contract.MaxEventsLimit)
		if err != nil {
			return nil, err
		}
		for _, we := range page.Entries {
			since = we.Seq
			e, err := contract.DecodeEntry(we.Entry)
			if err != nil || e.Kind != contract.EntryAttestation {
				continue
			}
			a, err := verify.AttestationUnverified(e.JWS)
			if err != nil {
				continue
			}
			switch {
			case a.Object != nil:
				live[a.Object.Name] = *a.Object
			case a.Batch != nil:
				raw, err := client.BatchManifest(ctx, contractID, a.Batch.ManifestSHA256)
				if err != nil {
					return nil, err
				}
				m, err := a.Batch.Open(raw, contractID)
				if err != nil {
					continue
				}
				for _, o := range m.Objects {
					live[o.Name] = o
				}
			case a.Redaction != nil:
				delete(live, a.Redaction.Name)
			}
		}
		if len(page.Entries) == 0 || since >= page.TreeSize {
			return live, nil
		}
	}
}

// newS3Client makes a minio-go client for an endpoint URL, with the
// credentials every S3 tool reads: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
// (and AWS_SESSION_TOKEN), then the shared credentials file; AWS_REGION.
func newS3Client(endpoint string) (*minio.Client, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("--s3-endpoint %q: want http(s)://host[:port]", endpoint)
	}
	creds := credentials.NewChainCredentials([]credentials.Provider{&credentials.EnvAWS{}, &credentials.FileAWSCredentials{}})
	region := os.Getenv("AWS_REGION")
	if region == "" {
		region = os.Getenv("AWS_DEFAULT_REGION")
	}
	return minio.New(u.Host, &minio.Options{Creds: creds, Secure: u.Scheme == "https", Region: region})
}

// progress reports on stderr: on a terminal, one line updated in place;
// otherwise (a log, a pipe) one plain line per interval, and a last one.
type progress struct {
	mu             sync.Mutex
	w              io.Writer
	total          int
	show           bool
	tty            bool
	every          time.Duration
	added, skipped int
	batches        int
	bytes          int64
	start, last    time.Time
}

func newProgress(w io.Writer, total int, every time.Duration) *progress {
	p := &progress{w: w, total: total, show: total > 1, every: every, start: time.Now()}
	if f, ok := w.(*os.File); ok {
		if info, err := f.Stat(); err == nil && info.Mode()&os.ModeCharDevice != 0 {
			p.tty, p.every = true, 100*time.Millisecond
		}
	}
	p.last = p.start
	return p
}

func (p *progress) add(added bool, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if added {
		p.added++
	} else {
		p.skipped++
	}
	p.bytes += n
	p.report(false)
}

func (p *progress) batch(int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.batches++
}

// report prints the counts when an interval has passed (or final);
// callers hold p.mu.
func (p *progress) report(final bool) {
	if !p.show || (!final && time.Since(p.last) < p.every) {
		return
	}
	p.last = time.Now()
	line := fmt.Sprintf("contribute: %d/%d files, %.1f MiB", p.added+p.skipped, p.total, float64(p.bytes)/(1<<20))
	if p.batches > 0 {
		line += fmt.Sprintf(", %d batches appended", p.batches)
	}
	if p.tty {
		fmt.Fprint(p.w, "\r"+line)
		return
	}
	fmt.Fprintf(p.w, "%s (%s)\n", line, time.Since(p.start).Round(time.Second))
}

func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.added+p.skipped == 0 {
		return
	}
	p.report(true)
	if p.show && p.tty {
		fmt.Fprintln(p.w)
	}
}
