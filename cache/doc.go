// Package cache is provgate's verified object cache: it reads stored
// objects from an origin (an S3-compatible bucket through minio-go, or
// presigned URLs issued by the registry), checks their sha256 and size
// against the signed manifest, decodes them (identity, gzip, zstd), checks
// the decoded sha256 and size, and commits them atomically to a disk cache
// bounded in bytes.
//
// A committed entry is a plain decoded file, so the HTTP layer can serve
// Range, HEAD and ETag from it with sendfile (Handle.File). A failed object
// is never visible: bytes go to an unnamed file (O_TMPFILE) in the
// object's directory, linked into place only after both digests and sizes
// match (a temporary file renamed into place on file systems without
// unnamed files).
//
// Eviction is W-TinyLFU: new entries land in a small LRU window and enter
// the main LRU region only when a frequency sketch says they are used more
// often than the entries they would displace. A dataset larger than the
// cache read in epochs thus keeps a stable subset cached and gets hits,
// where plain LRU (PolicyLRU) gets none.
//
// The index is an append-only journal (index.journal, one checksummed JSON
// record per line) reconciled with the files on disk at Open: a file
// without a record, a record without its file, and every temporary file are
// removed. journal.go says why a journal and not SQLite. Commits are made
// durable in background batches before they are journaled, or one by one
// with Config.SyncEachCommit.
package cache
