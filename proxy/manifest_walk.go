package proxy

import "context"

// ManifestWalker is a Source that can walk its verified manifest, sorted by
// name, without holding it in memory: GET /v1/contracts/{id}/manifest
// streams a large dataset's manifest through it when the source has it.
type ManifestWalker interface {
	EachManifest(ctx context.Context, fn func(ManifestEntry) error) error
}

// eachManifest walks src's manifest, through ManifestWalker when src is one.
func eachManifest(ctx context.Context, src Source, fn func(ManifestEntry) error) error {
	if w, ok := src.(ManifestWalker); ok {
		return w.EachManifest(ctx, fn)
	}
	for _, e := range src.Manifest() {
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}
