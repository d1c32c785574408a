package cache

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
)

// The index is a journal rather than SQLite: entries are immutable files
// named by a hash of (contract, name, decoded sha256), so the file system
// already is the source of truth and the index only adds metadata. An
// append-only journal of put/del records, each line checksummed, is one
// write per commit on the hot path, needs no cgo, and is repaired at Open
// by reconciling it with the files: a torn last line is dropped, a record
// whose file is missing or has the wrong size is dropped, a file without a
// record is deleted. It is compacted (rewritten atomically in LRU order)
// at Open, at Close and when it grows.

const journalName = "index.journal"

// record is one journal line.
type record struct {
	Op         string `json:"op"` // "put" or "del"
	File       string `json:"f"`
	Contract   string `json:"c,omitempty"`
	Name       string `json:"n,omitempty"`
	StoredSHA  string `json:"ss,omitempty"`
	DecodedSHA string `json:"ds,omitempty"`
	Size       int64  `json:"sz,omitempty"`
	CRC        uint32 `json:"crc,omitempty"`
	Committed  int64  `json:"t,omitempty"` // unix nanoseconds
	Expires    int64  `json:"x,omitempty"` // unix nanoseconds, 0 for never
}

type journal struct {
	dir     string
	f       *os.File
	w       *bufio.Writer
	records int
	dirty   bool
}

// readJournal returns the put records that are still live, in journal
// order (oldest first). It stops at the first damaged line.
func readJournal(dir string) ([]record, error) {
	f, err := os.Open(filepath.Join(dir, journalName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	live := map[string]int{}
	var recs []record
	r := bufio.NewReaderSize(f, 1<<16)
	for {
		line, err := r.ReadBytes('\n')
		if err == io.EOF {
			break // a torn last line (no newline) is dropped
		}
		if err != nil {
			return nil, err
		}
		rec, ok := parseRecord(line)
		if !ok {
			break
		}
		switch rec.Op {
		case "put":
			if i, ok := live[rec.File]; ok {
				recs[i].Op = "" // superseded
			}
			live[rec.File] = len(recs)
			recs = append(recs, rec)
		case "del":
			if i, ok := live[rec.File]; ok {
				recs[i].Op = ""
				delete(live, rec.File)
			}
		}
	}
	out := recs[:0]
	for _, r := range recs {
		if r.Op == "put" {
			out = append(out, r)
		}
	}
	return out, nil
}

func parseRecord(line []byte) (record, bool) {
	var rec record
	line = bytes.TrimSuffix(line, []byte("\n"))
	sum, body, ok := bytes.Cut(line, []byte(" "))
	if !ok || len(sum) != 8 {
		return rec, false
	}
	want, err := strconv.ParseUint(string(sum), 16, 32)
	if err != nil || crc32.ChecksumIEEE(body) != uint32(want) {
		return rec, false
	}
	if json.Unmarshal(body, &rec) != nil || rec.File == "" || !validFileName(rec.File) {
		return rec, false
	}
	return rec, true
}

func encodeRecord(buf *bytes.Buffer, rec *record) {
	body, _ := json.Marshal(rec) // plain strings and numbers: cannot fail
	fmt.Fprintf(buf, "%08x %s\n", crc32.ChecksumIEEE(body), body)
}

// writeJournal atomically replaces the journal with recs and opens it for
// appending.
func writeJournal(dir string, recs []record) (*journal, error) {
	var buf bytes.Buffer
	for i := range recs {
		encodeRecord(&buf, &recs[i])
	}
	path := filepath.Join(dir, journalName)
	if err := writeFileAtomic(path, buf.Bytes()); err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	return &journal{dir: dir, f: f, w: bufio.NewWriterSize(f, 4096), records: len(recs)}, nil
}

// append writes rec through to the file (not fsynced: see sync). Losing
// unsynced records in a crash is safe: Open reconciles with the files.
func (j *journal) append(rec *record) error {
	var buf bytes.Buffer
	encodeRecord(&buf, rec)
	if _, err := j.w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("index: %w", err)
	}
	if err := j.w.Flush(); err != nil {
		return fmt.Errorf("index: %w", err)
	}
	j.records++
	j.dirty = true
	return nil
}

func (j *journal) sync() error {
	if !j.dirty {
		return nil
	}
	j.dirty = false
	return j.f.Sync()
}

func (j *journal) close() error {
	err := j.sync()
	if cerr := j.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory: write, fsync, rename, fsync the directory.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	if _, err = tmp.Write(data); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return syncDir(dir)
}

// syncFile fsyncs a file by path.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// validFileName accepts the 64-hex-digit names the cache gives files.
func validFileName(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
