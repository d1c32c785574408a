package proxy

import (
	"encoding/base64"
	"encoding/xml"
	"errors"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/provgate/provgate/contract"
)

// The S3-compatible read facade: path-style GetObject (with Range),
// HeadObject, HeadBucket, GetBucketLocation, ListObjectsV2 and ListBuckets.
// Each contract appears as its origin bucket, with its origin prefix, so
// code that read the bucket directly works unchanged with the sidecar as
// endpoint_url. Everything it serves comes from the verified manifest and
// cache; writes are refused.

const s3Namespace = "http://s3.amazonaws.com/doc/2006-03-01/"

type s3Error struct {
	XMLName   xml.Name `xml:"Error"`
	Code      string   `xml:"Code"`
	Message   string   `xml:"Message"`
	Resource  string   `xml:"Resource,omitempty"`
	RequestID string   `xml:"RequestId"`
}

func (s *Server) s3Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		err := s.s3Auth(r)
		if err == nil {
			err = s.s3Route(sw, r)
		}
		if err != nil {
			s.writeS3Error(sw, r, err)
		}
		s.metrics.requests.WithLabelValues("s3", strconv.Itoa(sw.statusCode())).Inc()
	})
}

// s3Auth checks the local token when one is configured: S3 SDKs cannot
// send a bearer token, so the token is given as the access key id. The
// SigV4 signature itself is not checked (the secret is not shared).
func (s *Server) s3Auth(r *http.Request) error {
	if s.cfg.BearerToken == "" {
		return nil
	}
	cred := r.URL.Query().Get("X-Amz-Credential")
	if cred == "" {
		if _, after, ok := strings.Cut(r.Header.Get("Authorization"), "Credential="); ok {
			cred = after
		}
	}
	if key, _, _ := strings.Cut(cred, "/"); key == "" || key != s.cfg.BearerToken {
		return ErrUnauthorized
	}
	return nil
}

func (s *Server) s3Route(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return contract.Errorf(http.StatusMethodNotAllowed, "MethodNotAllowed", "the facade is read-only")
	}
	path := strings.TrimPrefix(r.URL.Path, "/")
	if path == "" {
		return s.s3ListBuckets(w)
	}
	bucket, key, _ := strings.Cut(path, "/")
	srcs := s.bucketSources(bucket)
	if len(srcs) == 0 {
		return contract.Errorf(http.StatusNotFound, "NoSuchBucket", "no mounted contract reads bucket %q", bucket)
	}
	q := r.URL.Query()
	if key == "" {
		switch {
		case r.Method == http.MethodHead:
			return nil
		case q.Has("location"):
			w.Header().Set("Content-Type", "application/xml")
			return xml.NewEncoder(w).Encode(struct {
				XMLName xml.Name `xml:"LocationConstraint"`
				NS      string   `xml:"xmlns,attr"`
			}{NS: s3Namespace})
		case q.Get("list-type") == "2":
			return s.s3ListV2(w, r, bucket, srcs)
		default:
			return contract.Errorf(http.StatusNotImplemented, "NotImplemented", "only ListObjectsV2 (list-type=2) is supported")
		}
	}
	for _, src := range srcs {
		prefix := src.Contract().Origin.Prefix
		if name, ok := strings.CutPrefix(key, prefix); ok && name != "" {
			if _, err := src.Lookup(name); err != nil && errors.Is(err, ErrNotFound) && len(srcs) > 1 {
				continue
			}
			return s.serveObject(w, r, src.ID(), name)
		}
	}
	return contract.Errorf(http.StatusNotFound, "NoSuchKey", "no verified object %q", key)
}

func (s *Server) bucketSources(bucket string) []Source {
	var out []Source
	for _, src := range s.allSources() {
		if src.Contract().Origin.Bucket == bucket {
			out = append(out, src)
		}
	}
	// Longest prefix first, so that nested prefixes route to the right contract.
	sort.SliceStable(out, func(i, j int) bool {
		return len(out[i].Contract().Origin.Prefix) > len(out[j].Contract().Origin.Prefix)
	})
	return out
}

func (s *Server) s3ListBuckets(w http.ResponseWriter) error {
	type bucket struct {
		Name         string `xml:"Name"`
		CreationDate string `xml:"CreationDate"`
	}
	seen := map[string]bool{}
	var res struct {
		XMLName xml.Name `xml:"ListAllMyBucketsResult"`
		NS      string   `xml:"xmlns,attr"`
		Owner   struct {
			ID string `xml:"ID"`
		} `xml:"Owner"`
		Buckets []bucket `xml:"Buckets>Bucket"`
	}
	res.NS = s3Namespace
	res.Owner.ID = "provgate"
	for _, src := range s.allSources() {
		c := src.Contract()
		if !seen[c.Origin.Bucket] {
			seen[c.Origin.Bucket] = true
			res.Buckets = append(res.Buckets, bucket{Name: c.Origin.Bucket, CreationDate: s3Time(c.CreatedAt)})
		}
	}
	w.Header().Set("Content-Type", "application/xml")
	return xml.NewEncoder(w).Encode(res)
}

func s3Time(t time.Time) string {
	if t.IsZero() {
		t = time.Unix(0, 0)
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

type s3Object struct {
	Key          string `xml:"Key"`
	LastModified string `xml:"LastModified"`
	ETag         string `xml:"ETag"`
	Size         int64  `xml:"Size"`
	StorageClass string `xml:"StorageClass"`
}

type s3Prefix struct {
	Prefix string `xml:"Prefix"`
}

type listV2Result struct {
	XMLName               xml.Name   `xml:"ListBucketResult"`
	NS                    string     `xml:"xmlns,attr"`
	Name                  string     `xml:"Name"`
	Prefix                string     `xml:"Prefix"`
	Delimiter             string     `xml:"Delimiter,omitempty"`
	StartAfter            string     `xml:"StartAfter,omitempty"`
	ContinuationToken     string     `xml:"ContinuationToken,omitempty"`
	NextContinuationToken string     `xml:"NextContinuationToken,omitempty"`
	KeyCount              int        `xml:"KeyCount"`
	MaxKeys               int        `xml:"MaxKeys"`
	IsTruncated           bool       `xml:"IsTruncated"`
	Contents              []s3Object `xml:"Contents"`
	CommonPrefixes        []s3Prefix `xml:"CommonPrefixes"`
}

// s3ListV2 lists the verified objects of a bucket's contracts.
func (s *Server) s3ListV2(w http.ResponseWriter, r *http.Request, bucket string, srcs []Source) error {
	q := r.URL.Query()
	prefix, delim := q.Get("prefix"), q.Get("delimiter")
	maxKeys := 1000
	if v := q.Get("max-keys"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return contract.Errorf(http.StatusBadRequest, "InvalidArgument", "max-keys %q", v)
		}
		maxKeys = min(n, 1000)
	}
	after := q.Get("start-after")
	token := q.Get("continuation-token")
	if token != "" {
		b, err := base64.RawURLEncoding.DecodeString(token)
		if err != nil {
			return contract.Errorf(http.StatusBadRequest, "InvalidArgument", "bad continuation token")
		}
		after = string(b)
	}
	type keyed struct {
		key string
		e   ManifestEntry
		t   time.Time
	}
	var all []keyed
	for _, src := range srcs {
		if st := src.Status(); !st.Serving() {
			return stateError(st)
		}
		c := src.Contract()
		for _, e := range src.Manifest() {
			all = append(all, keyed{key: c.Origin.Prefix + e.Name, e: e, t: c.CreatedAt})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].key < all[j].key })
	res := listV2Result{NS: s3Namespace, Name: bucket, Prefix: prefix, Delimiter: delim, MaxKeys: maxKeys,
		StartAfter: q.Get("start-after"), ContinuationToken: token}
	lastPrefix := ""
	var last string
	for _, k := range all {
		if maxKeys == 0 {
			break // an empty, complete page
		}
		if !strings.HasPrefix(k.key, prefix) || k.key <= after {
			continue
		}
		if delim != "" {
			if i := strings.Index(k.key[len(prefix):], delim); i >= 0 {
				cp := k.key[:len(prefix)+i+len(delim)]
				if cp == lastPrefix || cp <= after {
					continue
				}
				if res.KeyCount == maxKeys {
					res.IsTruncated = true
					break
				}
				lastPrefix = cp
				res.CommonPrefixes = append(res.CommonPrefixes, s3Prefix{Prefix: cp})
				res.KeyCount++
				// Skip the rest of this prefix by resuming after its last key.
				last = cp + "\xff"
				continue
			}
		}
		if res.KeyCount == maxKeys {
			res.IsTruncated = true
			break
		}
		res.Contents = append(res.Contents, s3Object{Key: k.key, LastModified: s3Time(k.t), ETag: etag(k.e.DecodedSHA256),
			Size: k.e.DecodedSize, StorageClass: "STANDARD"})
		res.KeyCount++
		last = k.key
	}
	if res.IsTruncated {
		res.NextContinuationToken = base64.RawURLEncoding.EncodeToString([]byte(last))
	}
	w.Header().Set("Content-Type", "application/xml")
	return xml.NewEncoder(w).Encode(res)
}

func (s *Server) writeS3Error(w *statusWriter, r *http.Request, err error) {
	if w.wrote {
		panic(http.ErrAbortHandler)
	}
	status, code := statusOf(err)
	switch {
	case strings.ContainsAny(code[:1], "ABCDEFGHIJKLMNOPQRSTUVWXYZ"):
		// Already an S3 error code.
	case status == http.StatusNotFound:
		code = "NoSuchKey"
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		status, code = http.StatusForbidden, "AccessDenied"
	case status == http.StatusUnavailableForLegalReasons:
		code = "UnavailableForLegalReasons"
	case status == http.StatusServiceUnavailable:
		code = "ServiceUnavailable"
	case status == http.StatusBadGateway:
		code = "BadGateway"
	case status == http.StatusBadRequest:
		code = "InvalidArgument"
	default:
		code = "InternalError"
	}
	if status >= 500 {
		s.log.Warn("s3 request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	msg := err.Error()
	var ae *contract.APIError
	if errors.As(err, &ae) {
		msg = ae.Message
	}
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		xml.NewEncoder(w).Encode(s3Error{Code: code, Message: msg, Resource: r.URL.Path, RequestID: strconv.FormatInt(time.Now().UnixNano(), 36)})
	}
}
