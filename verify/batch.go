package verify

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
)

// NewBatch makes the batch attestation of objs by issuer for contractID
// (unsigned, iat now and a fresh jti) and the manifest bytes it covers.
func NewBatch(issuer, contractID string, objs []contract.ObjectClaim) (*contract.Attestation, []byte, error) {
	raw, err := contract.EncodeBatchManifest(&contract.BatchManifest{V: contract.BatchManifestVersion, Contract: contractID, Objects: objs})
	if err != nil {
		return nil, nil, err
	}
	a := &contract.Attestation{Issuer: issuer, Subject: contractID, IssuedAt: time.Now().Unix(), ID: NewID(), Type: contract.Batch,
		Batch: &contract.BatchClaim{ManifestSHA256: contract.ManifestDigest(raw), ManifestSize: int64(len(raw)), Objects: len(objs)}}
	return a, raw, nil
}

// SignBatch signs the batch attestation of objs with a contributor's key:
// it returns the compact JWS and the manifest bytes to post with it.
func SignBatch(key *jose.JSONWebKey, issuer, contractID string, objs []contract.ObjectClaim) (jws string, manifest []byte, err error) {
	a, raw, err := NewBatch(issuer, contractID, objs)
	if err != nil {
		return "", nil, err
	}
	if jws, err = SignAttestation(key, a); err != nil {
		return "", nil, err
	}
	return jws, raw, nil
}

// ManifestSource fetches batch manifests by digest. *contract.Client
// satisfies it; a follower's LogSource that does too lets it verify batch
// entries (without one, a batch entry stops the sync: nothing after it is
// trusted).
type ManifestSource interface {
	BatchManifest(ctx context.Context, id, sha256Hex string) ([]byte, error)
}

var _ ManifestSource = (*contract.Client)(nil)

// batchFetch is the fetch of one batch entry's manifest, started ahead of
// the apply loop that waits for it.
type batchFetch struct {
	done    chan struct{}
	m       *contract.BatchManifest
	err     error
	release func()
}

// wait returns the opened manifest, and frees its place among the
// manifests held ahead.
func (b *batchFetch) wait(ctx context.Context) (*contract.BatchManifest, error) {
	select {
	case <-b.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if b.release != nil {
		b.release()
	}
	return b.m, b.err
}

// prefetchBatches starts fetching the manifests of the verified batch
// entries in checked, in log order, holding at most Workers of them ahead
// of the apply loop (a manifest is up to contract.MaxBatchManifestSize
// bytes). stop cancels what is left and waits.
func (f *Follower) prefetchBatches(ctx context.Context, checked []checked) (stop func()) {
	var idx []int
	for i := range checked {
		c := &checked[i]
		if c.err == nil && c.att != nil && c.att.Type == contract.Batch {
			c.batch = &batchFetch{done: make(chan struct{})}
			idx = append(idx, i)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	if len(idx) == 0 {
		return cancel
	}
	sem := make(chan struct{}, f.cfg.Workers)
	var wg sync.WaitGroup
	wg.Go(func() {
		for _, i := range idx {
			c := &checked[i]
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				c.batch.err = ctx.Err()
				close(c.batch.done)
				continue
			}
			c.batch.release = func() { <-sem }
			wg.Go(func() {
				c.batch.m, c.batch.err = f.fetchBatch(ctx, c)
				close(c.batch.done)
			})
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			wg.Wait()
		})
	}
}

// fetchBatch fetches a verified batch entry's manifest and opens it
// against the signed claim. Bytes that are not the attested ones (or no
// bytes) are an error of the sync, which stops before the entry and is
// retried: the registry holds the right bytes or the log does not move on.
// Attested bytes that do not decode are the contributor's: the error wraps
// contract.ErrManifestInvalid and the entry is refused.
func (f *Follower) fetchBatch(ctx context.Context, c *checked) (*contract.BatchManifest, error) {
	ms, ok := f.cfg.Source.(ManifestSource)
	if !ok {
		return nil, fmt.Errorf("entry %d: a batch entry, and the log source cannot fetch batch manifests", c.entry.Seq)
	}
	claim := c.att.Batch
	raw, err := ms.BatchManifest(ctx, f.id, claim.ManifestSHA256)
	if err != nil {
		return nil, fmt.Errorf("entry %d: fetch batch manifest %s: %w", c.entry.Seq, claim.ManifestSHA256, err)
	}
	m, err := claim.Open(raw, f.id)
	if err != nil {
		if errors.Is(err, contract.ErrManifestDigest) {
			f.cfg.Metrics.refuse(f.id, err)
		}
		return nil, fmt.Errorf("entry %d: %w", c.entry.Seq, err)
	}
	return m, nil
}
