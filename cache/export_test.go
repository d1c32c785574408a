package cache

// WithoutUnnamedFiles makes c write fetches as on a file system without
// O_TMPFILE: temporary files renamed into place.
func WithoutUnnamedFiles(c *Cache) { c.noTmpfile.Store(true) }

// UsesUnnamedFiles reports whether c's fetches write unnamed files.
func UsesUnnamedFiles(c *Cache) bool { return !c.noTmpfile.Load() }
