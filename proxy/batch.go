package proxy

import (
	"encoding/binary"
	"encoding/json"
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
	var grant Grant
	var total int64
	for i, name := range req.Names {
		items[i].name = name
		src, e, g, err := s.resolve(id, name)
		if err != nil {
			s.countRefusal(err)
			items[i].status, _ = statusOf(err)
			continue
		}
		_ = src
		grant = g
		total += e.DecodedSize
		if total > s.cfg.MaxBatchBytes {
			return contract.Errorf(http.StatusRequestEntityTooLarge, contract.CodeTooLarge, "batch exceeds %d bytes", s.cfg.MaxBatchBytes)
		}
		items[i].entry = e
	}
	defer func() {
		for _, it := range items {
			if it.obj != nil {
				it.obj.Close()
			}
		}
	}()
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
				s.countFetchError(id, it.name, epoch, job, grant, err)
				it.status, _ = statusOf(err)
				return nil
			}
			it.obj, it.status = obj, http.StatusOK
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
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
	var hdr [14]byte
	for _, it := range items {
		binary.BigEndian.PutUint32(hdr[:4], uint32(len(it.name)))
		if _, err := w.Write(hdr[:4]); err != nil {
			return err
		}
		if _, err := io.WriteString(w, it.name); err != nil {
			return err
		}
		var size int64
		if it.status == http.StatusOK {
			size = it.entry.DecodedSize
		}
		binary.BigEndian.PutUint16(hdr[:2], uint16(it.status))
		binary.BigEndian.PutUint64(hdr[2:10], uint64(size))
		if _, err := w.Write(hdr[:10]); err != nil {
			return err
		}
		if it.status != http.StatusOK {
			continue
		}
		// As for single objects: all but the last byte, the durable
		// access, then the last byte; a failure aborts the stream.
		f := it.obj.File()
		if size > 1 {
			if n, err := io.Copy(w, io.NewSectionReader(f, 0, size-1)); err != nil || n != size-1 {
				panic(http.ErrAbortHandler)
			}
		}
		a := Access{Contract: id, Name: it.name, Bytes: size, DecodedSHA: it.entry.DecodedSHA256,
			Epoch: epoch, Job: job, TokenID: grant.TokenID, Outcome: OutcomeServed}
		if err := s.record(r.Context(), a); err != nil {
			s.log.Error("metering failed; aborting the batch", "contract", id, "name", it.name, "err", err)
			panic(http.ErrAbortHandler)
		}
		if size > 0 {
			if n, err := io.Copy(w, io.NewSectionReader(f, size-1, 1)); err != nil || n != 1 {
				panic(http.ErrAbortHandler)
			}
		}
	}
	return nil
}
