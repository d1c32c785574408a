package proxy

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"golang.org/x/sync/errgroup"

	"github.com/provgate/provgate/contract"
)

// FramesMediaType is the batch read's response type. For each requested
// name, in request order, one frame:
//
//	uint32 BE  name length
//	[]byte     name
//	uint16 BE  status (200, 404, 451, 502, 503, ...)
//	uint64 BE  body length (0 unless status is 200)
//	[]byte     body: the verified, decoded object
//
// The response has a Content-Length; a stream that ends before the last
// frame is complete is an error, never a short success.
const FramesMediaType = "application/x-provgate-frames"

// batchRequest is the body of POST /v1/contracts/{id}/batch.
type batchRequest struct {
	Names []string `json:"names"`
}

// batchFetchConcurrency bounds the cold fetches one batch starts at once.
const batchFetchConcurrency = 8

type batchItem struct {
	name   string
	status int
	entry  *ManifestEntry
	obj    Object
	rd     *read
}

// batch answers many small reads in one response, metered per object.
func (s *Server) batch(w http.ResponseWriter, r *http.Request) error {
	epoch, job, err := meterParams(r)
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	if _, err := s.source(id); err != nil {
		return err
	}
	var req batchRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "batch body: %v", err)
	}
	if len(req.Names) == 0 || len(req.Names) > s.cfg.MaxBatchNames {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "batch takes 1 to %d names", s.cfg.MaxBatchNames)
	}
	items := make([]batchItem, len(req.Names))
	defer func() {
		for _, it := range items {
			if it.obj != nil {
				it.obj.Close()
			}
			if it.rd != nil {
				it.rd.end()
			}
		}
	}()
	var grant Grant
	var src Source
	var total int64
	for i, name := range req.Names {
		items[i].name = name
		sr, e, g, err := s.resolve(id, name)
		if err == nil {
			if x, serr := s.shardIndex(r.Context(), sr, e); serr != nil || x != nil {
				err = cmp.Or(serr, errShardInBatch)
			}
		}
		if err == nil {
			total += e.DecodedSize
			if total > s.cfg.MaxBatchBytes {
				return contract.Errorf(http.StatusRequestEntityTooLarge, contract.CodeTooLarge, "batch exceeds %d bytes", s.cfg.MaxBatchBytes)
			}
			// Each frame is a whole object, one pass; its quota is
			// reserved now, so once it is spent the remaining frames
			// say 403.
			items[i].rd, err = s.beginRead(sr, e, g, epoch, job, 0, e.DecodedSize)
		}
		if err != nil {
			s.countRefusal(err)
			items[i].status, _ = statusOf(err)
			continue
		}
		src, grant = sr, g
		items[i].entry = e
	}
	g, ctx := errgroup.WithContext(r.Context())
	g.SetLimit(batchFetchConcurrency)
	for i := range items {
		if items[i].entry == nil {
			continue
		}
		g.Go(func() error {
			it := &items[i]
			obj, err := s.cfg.Cache.Get(ctx, id, &it.entry.ObjectClaim)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err = s.fetchError(src, it.name, err); !errors.Is(err, ErrRedacted) {
					s.countFetchError(id, it.name, epoch, job, grant, err)
				}
				it.status, _ = statusOf(err)
				it.rd.end() // nothing of it will be sent
				return nil
			}
			it.obj, it.status = obj, http.StatusOK
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	// A redaction that landed while the batch was fetching wins.
	for i := range items {
		if items[i].obj != nil {
			if err := s.recheck(src, items[i].name); err != nil {
				items[i].status, _ = statusOf(err)
				items[i].obj.Close()
				items[i].obj = nil
				items[i].rd.end()
				continue
			}
			s.served(id, job, epoch, items[i].name)
		}
	}
	var length int64
	for _, it := range items {
		length += 4 + int64(len(it.name)) + 2 + 8
		if it.status == http.StatusOK {
			length += it.entry.DecodedSize
		}
	}
	w.Header().Set("Content-Type", FramesMediaType)
	w.Header().Set("Content-Length", strconv.FormatInt(length, 10))
	w.WriteHeader(http.StatusOK)
	// Each frame's access is queued as its bytes go out; the response's
	// very last byte is held back until every one of them is durable, so
	// the batch is never complete at the client before it is metered. A
	// failure aborts the stream.
	sw := w.(*statusWriter)
	var waits []func(context.Context) error
	finish := func(last []byte) {
		for _, wait := range waits {
			if err := wait(context.WithoutCancel(r.Context())); err != nil {
				s.metrics.meterErrors.Inc()
				s.log.Error("metering failed; aborting the batch", "contract", id, "err", err)
				panic(http.ErrAbortHandler)
			}
		}
		if _, err := sw.Write(last); err != nil {
			panic(http.ErrAbortHandler)
		}
	}
	hdr := make([]byte, 0, 4+4096+10)
	for i, it := range items {
		final := i == len(items)-1
		var size int64
		if it.status == http.StatusOK {
			size = it.entry.DecodedSize
		}
		hdr = binary.BigEndian.AppendUint32(hdr[:0], uint32(len(it.name)))
		hdr = append(hdr, it.name...)
		hdr = binary.BigEndian.AppendUint16(hdr, uint16(it.status))
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(size))
		meterFrame := func() {
			wait, err := it.rd.submitOnly(r.Context(), OutcomeServed)
			if err != nil {
				s.log.Error("metering failed; aborting the batch", "contract", id, "name", it.name, "err", err)
				panic(http.ErrAbortHandler)
			}
			waits = append(waits, wait)
		}
		if size == 0 {
			// An empty object (or a refusal) is all header.
			if it.status == http.StatusOK {
				meterFrame()
			}
			if final {
				if _, err := sw.Write(hdr[:len(hdr)-1]); err != nil {
					panic(http.ErrAbortHandler)
				}
				finish(hdr[len(hdr)-1:])
				break
			}
			if _, err := sw.Write(hdr); err != nil {
				panic(http.ErrAbortHandler)
			}
			continue
		}
		if _, err := sw.Write(hdr); err != nil {
			panic(http.ErrAbortHandler)
		}
		f := it.obj.File()
		body := size
		if final {
			body = size - 1
		}
		if n, err := sw.ReadFrom(io.LimitReader(f, body)); err != nil || n != body {
			it.rd.abort(r.Context(), n) // bills what this frame sent
		}
		meterFrame()
		if final {
			var last [1]byte
			if _, err := f.ReadAt(last[:], size-1); err != nil {
				panic(http.ErrAbortHandler)
			}
			finish(last[:])
		}
	}
	return nil
}
