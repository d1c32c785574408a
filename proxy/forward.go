package proxy

import (
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/provgate/provgate/contract"
)

// ForwardConfig configures the forward proxy.
type ForwardConfig struct {
	// OriginHosts are the origin's host[:port] names (and, for
	// virtual-host style, any "bucket.host" under them). Requests to them
	// are served from the verified cache; HTTPS to them is intercepted
	// with the local CA.
	OriginHosts []string
	// Allow lists other hosts that may be reached through the proxy
	// ("host", "host:port" or "*.suffix"); everything else is denied.
	Allow []string
	// CA signs the certificates presented for origin hosts.
	CA *tls.Certificate
}

// NewForwardProxy returns an HTTP(S)_PROXY handler. Requests for the
// origin's hosts are answered by the sidecar itself (GET and HEAD of
// contract objects, through the verified cache, metered); other hosts pass
// only when allowlisted; the rest get a 403. Credentials (Authorization,
// query strings) are never logged.
func (s *Server) NewForwardProxy(cfg ForwardConfig) (http.Handler, error) {
	if cfg.CA == nil {
		return nil, fmt.Errorf("forward proxy: a CA is required")
	}
	p := goproxy.NewProxyHttpServer()
	p.Verbose = false
	p.Logger = discardLogger{}
	p.CertStore = newCertStore()
	// Allowlisted traffic goes out with normal TLS verification.
	p.Tr = &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: false,
		ResponseHeaderTimeout: time.Minute, IdleConnTimeout: time.Minute}
	mitm := &goproxy.ConnectAction{Action: goproxy.ConnectMitm, TLSConfig: goproxy.TLSConfigFromCA(cfg.CA)}
	f := &forward{s: s, cfg: cfg}
	for _, o := range cfg.OriginHosts {
		targets := []string{o}
		if portOf(o) == "" {
			targets = []string{net.JoinHostPort(o, "443"), net.JoinHostPort(o, "80")}
		}
		for _, t := range targets {
			if f.allowed(t) {
				return nil, fmt.Errorf("forward proxy: the allowlist covers the origin %q: its bytes would bypass verification", t)
			}
		}
	}

	p.OnRequest().HandleConnectFunc(func(host string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
		if !f.authorized(ctx.Req) {
			s.metrics.proxyDenied.WithLabelValues("token").Inc()
			return goproxy.RejectConnect, host
		}
		ctx.UserData = authorizedTunnel{} // requests inside the tunnel inherit it
		switch {
		case f.isOrigin(host):
			return mitm, host
		case f.allowed(host):
			return goproxy.OkConnect, host
		default:
			s.metrics.proxyDenied.WithLabelValues("host").Inc()
			s.log.Info("forward proxy denied CONNECT", "host", hostOnly(host))
			return goproxy.RejectConnect, host
		}
	})
	p.OnRequest().DoFunc(func(req *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
		host := req.URL.Host
		if host == "" {
			host = req.Host
		}
		if _, tunnelled := ctx.UserData.(authorizedTunnel); !tunnelled && !f.authorized(req) {
			s.metrics.proxyDenied.WithLabelValues("token").Inc()
			resp := jsonResponse(req, http.StatusProxyAuthRequired, contract.CodeUnauthorized, "the provgate proxy requires the local bearer token (Proxy-Authorization: Bearer …)")
			resp.Header.Set("Proxy-Authenticate", `Bearer realm="provgate"`)
			return nil, resp
		}
		switch {
		case f.isOrigin(host):
			return nil, f.serve(req, host)
		case f.allowed(host):
			return req, nil
		default:
			s.metrics.proxyDenied.WithLabelValues("host").Inc()
			s.log.Info("forward proxy denied request", "host", hostOnly(host), "method", req.Method)
			return nil, jsonResponse(req, http.StatusForbidden, contract.CodeForbidden,
				fmt.Sprintf("host %q is not allowed through the provgate proxy", hostOnly(host)))
		}
	})
	return p, nil
}

type forward struct {
	s   *Server
	cfg ForwardConfig
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return strings.ToLower(h)
	}
	return strings.ToLower(hostport)
}

// authorizedTunnel marks a CONNECT that presented the local token; the
// requests inside it are authorized by it.
type authorizedTunnel struct{}

// authorized checks the local bearer token, when one is configured, on a
// proxy request (the CONNECT, or a plain-HTTP proxy request).
func (f *forward) authorized(req *http.Request) bool {
	bt := f.s.cfg.BearerToken
	if bt == "" {
		return true
	}
	if req == nil {
		return false
	}
	got, ok := strings.CutPrefix(req.Header.Get("Proxy-Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(bt)) == 1
}

// originBucket reports whether host is an origin host or any name under
// it, and the bucket when it is virtual-host style (bucket.originhost).
// Every name under an origin host is treated as the origin, so that no
// spelling of the bucket's address bypasses verification.
func (f *forward) originBucket(hostport string) (bucket string, ok bool) {
	h, port := hostOnly(hostport), portOf(hostport)
	for _, o := range f.cfg.OriginHosts {
		// An origin given with a port is that port only; without one, any.
		if op := portOf(o); op != "" && port != "" && op != port {
			continue
		}
		oh := hostOnly(o)
		if h == oh {
			return "", true
		}
		if b, found := strings.CutSuffix(h, "."+oh); found && b != "" {
			return b, true
		}
	}
	return "", false
}

func portOf(hostport string) string {
	if _, port, err := net.SplitHostPort(hostport); err == nil {
		return port
	}
	return ""
}

func (f *forward) isOrigin(host string) bool {
	_, ok := f.originBucket(host)
	return ok
}

// allowed reports whether host[:port] may be reached untouched: an entry
// "host:port" allows that port; a bare "host" or "*.suffix" allows ports
// 80 and 443 only.
func (f *forward) allowed(hostport string) bool {
	h := hostOnly(hostport)
	_, port, err := net.SplitHostPort(hostport)
	if err != nil {
		port = ""
	}
	webPort := port == "" || port == "80" || port == "443"
	for _, a := range f.cfg.Allow {
		a = strings.ToLower(a)
		switch {
		case strings.HasPrefix(a, "*."):
			if webPort && strings.HasSuffix(h, a[1:]) {
				return true
			}
		case strings.Contains(a, ":"):
			if strings.EqualFold(hostport, a) {
				return true
			}
		case h == a && webPort:
			return true
		}
	}
	return false
}

// serve answers an origin request through the S3 facade's routing, with a
// streamed body (never buffered whole).
func (f *forward) serve(req *http.Request, host string) *http.Response {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		f.s.metrics.proxyDenied.WithLabelValues("method").Inc()
		return jsonResponse(req, http.StatusForbidden, contract.CodeForbidden, "the origin is read-only through provgate")
	}
	r := req.Clone(req.Context())
	if bucket, _ := f.originBucket(host); bucket != "" {
		r.URL.Path = "/" + bucket + req.URL.Path
		r.URL.RawPath = ""
	}
	r.RequestURI = r.URL.RequestURI()
	// The origin's own signature is for the origin; the sidecar does not
	// need it, and never forwards it.
	r.Header.Del("Authorization")
	r.Header.Del("Proxy-Authorization")
	r.URL.RawQuery = stripPresignQuery(r.URL.Query())
	if bt := f.s.cfg.BearerToken; bt != "" {
		// Authorized at the proxy (above): let the facade see the token.
		r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential="+bt+"/")
	}
	return pipeHandler(f.s.s3Handler(), r)
}

// pipeHandler runs h in a goroutine and returns its response as soon as the
// header is written, streaming the body through a pipe. A handler that
// aborts mid-body closes the pipe with an error, so the client sees a
// broken stream.
func pipeHandler(h http.Handler, r *http.Request) *http.Response {
	pr, pw := io.Pipe()
	w := &pipeWriter{header: http.Header{}, pw: pw, ready: make(chan struct{})}
	go func() {
		defer func() {
			if v := recover(); v != nil {
				pw.CloseWithError(fmt.Errorf("response aborted: %v", v))
				w.markReady(http.StatusBadGateway)
				return
			}
			w.markReady(http.StatusOK)
			pw.Close()
		}()
		h.ServeHTTP(w, r)
	}()
	<-w.ready
	resp := &http.Response{
		StatusCode: w.status, Status: strconv.Itoa(w.status) + " " + http.StatusText(w.status),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: w.sent, Body: pr, Request: r, ContentLength: -1,
	}
	if cl, err := strconv.ParseInt(w.sent.Get("Content-Length"), 10, 64); err == nil {
		resp.ContentLength = cl
	}
	if r.Method == http.MethodHead {
		resp.Body = http.NoBody
		pr.Close()
	}
	return resp
}

type pipeWriter struct {
	header http.Header
	sent   http.Header
	pw     *io.PipeWriter
	once   sync.Once
	ready  chan struct{}
	status int
}

func (w *pipeWriter) Header() http.Header { return w.header }

func (w *pipeWriter) markReady(status int) {
	w.once.Do(func() {
		w.status = status
		w.sent = w.header.Clone() // what goproxy reads; later Header() edits go nowhere
		close(w.ready)
	})
}

func (w *pipeWriter) WriteHeader(code int) { w.markReady(code) }

func (w *pipeWriter) Write(p []byte) (int, error) {
	w.markReady(http.StatusOK)
	return w.pw.Write(p)
}

func jsonResponse(req *http.Request, status int, code, msg string) *http.Response {
	body, _ := json.Marshal(contract.ErrorBody{Error: contract.ErrorDetail{Code: code, Message: msg}})
	return goproxy.NewResponse(req, "application/json", status, string(body)+"\n")
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}

// maxCachedCerts bounds the MITM certificate cache.
const maxCachedCerts = 1024

// certStore caches the per-host certificates signed for MITM.
type certStore struct {
	mu    sync.Mutex
	certs map[string]*tls.Certificate
}

func newCertStore() *certStore { return &certStore{certs: map[string]*tls.Certificate{}} }

func (c *certStore) Fetch(host string, gen func() (*tls.Certificate, error)) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cert, ok := c.certs[host]; ok {
		return cert, nil
	}
	cert, err := gen()
	if err != nil {
		return nil, err
	}
	if len(c.certs) >= maxCachedCerts {
		clear(c.certs) // bounded: a client inventing host names cannot grow it
	}
	c.certs[host] = cert
	return cert, nil
}

// stripPresignQuery drops the origin's presigned-URL signature parameters:
// the sidecar serves from its cache and needs none of them.
func stripPresignQuery(q url.Values) string {
	for k := range q {
		if strings.HasPrefix(strings.ToLower(k), "x-amz-") {
			q.Del(k)
		}
	}
	return q.Encode()
}
