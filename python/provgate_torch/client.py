"""A small client for the provgate sidecar's data endpoint (/v1/...).

Standard library only. One keep-alive HTTP connection per process: a
client copied into a DataLoader worker (by fork or pickle) opens its own
connection on first use and reuses it for every request of that worker.
"""

import hashlib
import http.client
import json
import os
import time
import urllib.parse
from collections import namedtuple

from . import frames
from .errors import IntegrityError, NotReady, ProtocolError, ProvgateError, error_for

HEADER_EPOCH = "X-Provgate-Epoch"
HEADER_JOB = "X-Provgate-Job"

DEFAULT_URL = "http://127.0.0.1:8477"
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRY_UNAVAILABLE = 30.0
# Bounds on manifest lines and error bodies read into memory.
MAX_MANIFEST_LINE = 1 << 16
MAX_ERROR_BODY = 1 << 16
# Batch responses up to this size are read in one call and parsed in memory.
MAX_BUFFERED_BATCH = 64 << 20
# The most names one order announcement sends (the sidecar's default bound).
MAX_ORDER_NAMES = 1 << 18

# Sample is one line of the verified manifest: the decoded size and sha256.
Sample = namedtuple("Sample", ["name", "size", "sha256", "seq", "license"])

# Errors after which a request on a reused keep-alive connection is sent
# again once, on a fresh connection: the sidecar closed the idle connection
# before reading the request.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

_SAFE_ID = "!$&'()*+,;=:@"


def object_path(contract, name):
    """The request path of an object: each segment of name escaped."""
    segs = "/".join(urllib.parse.quote(s, safe="") for s in name.split("/"))
    return f"/v1/contracts/{urllib.parse.quote(contract, safe=_SAFE_ID)}/objects/{segs}"


def contract_path(contract, *rest):
    """/v1/contracts/{id}/rest..."""
    p = f"/v1/contracts/{urllib.parse.quote(contract, safe=_SAFE_ID)}"
    return p + "".join("/" + r for r in rest)


def check_sha256(name, body, want):
    """Raise IntegrityError unless sha256(body) is want (hex)."""
    got = hashlib.sha256(body).hexdigest()
    if got != want.lower():
        raise IntegrityError(name, want, got)


class Sidecar:
    """The sidecar's data endpoint for one contract.

    url      the sidecar's base URL (default $PROVGATE_SIDECAR_URL or
             http://127.0.0.1:8477)
    contract the contract id
    token    optional local bearer token, for a sidecar shared in a pod
             (default $PROVGATE_SIDECAR_TOKEN)
    job      job id sent as X-Provgate-Job (default $PROVGATE_JOB)
    verify   check every body's sha256 against the manifest (cheap)
    retry_unavailable
             seconds to keep retrying a request the sidecar answers 503
             (busy, not verified yet, token being refreshed), honouring
             Retry-After, before raising NotReady; 0 raises at once. Only
             whole-response 503s are retried: nothing was served or metered.
    """

    def __init__(self, contract, url=None, token=None, job=None, verify=True, timeout=DEFAULT_TIMEOUT,
                 retry_unavailable=DEFAULT_RETRY_UNAVAILABLE):
        if not contract:
            raise ValueError("contract id is required")
        url = url or os.environ.get("PROVGATE_SIDECAR_URL") or DEFAULT_URL
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"sidecar url {url!r}: want http://host[:port]")
        self.url = url
        self.contract = contract
        self.host = u.hostname
        self.port = u.port or 80
        self.token = token if token is not None else os.environ.get("PROVGATE_SIDECAR_TOKEN", "")
        self.job = job if job is not None else os.environ.get("PROVGATE_JOB", "")
        self.verify = verify
        self.timeout = timeout
        self.retry_unavailable = retry_unavailable
        self._conn = None
        self._pid = None

    # A copy sent to another process must not share the socket.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_conn"] = None
        state["_pid"] = None
        return state

    def clone(self):
        """A copy with the same settings and its own connection (opened on
        first use): for another thread."""
        c = Sidecar.__new__(Sidecar)
        c.__dict__.update(self.__getstate__())
        return c

    def close(self):
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def __del__(self):
        if getattr(self, "_conn", None) is not None:
            self._conn.close()

    def _connection(self):
        if self._conn is None or self._pid != os.getpid():
            if self._conn is not None:
                # A forked worker's copy of the parent's socket: closing
                # this copy leaves the parent's connection alone, and
                # using it would mix two processes' requests.
                self._conn.close()
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._pid = os.getpid()
        return self._conn

    def _headers(self, epoch=None, extra=None):
        h = {}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        if self.job:
            h[HEADER_JOB] = self.job
        if epoch is not None:
            h[HEADER_EPOCH] = str(int(epoch))
        if extra:
            h.update(extra)
        return h

    def request(self, method, path, body=None, headers=None):
        """Send one request on the keep-alive connection and return the
        response, whose body the caller must read fully. A request that
        fails because the sidecar had closed the idle connection is sent
        once more on a new one."""
        for attempt in (0, 1):
            conn = self._connection()
            reused = conn.sock is not None
            try:
                conn.request(method, path, body=body, headers=headers or {})
                return conn.getresponse()
            except _STALE:
                self.close()
                if attempt or not reused:
                    raise
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    def _fail(self, resp, name=None):
        body = resp.read(MAX_ERROR_BODY)
        if not resp.isclosed():  # more than we read: do not reuse the connection
            self.close()
        err = error_for(resp.status, body, name)
        try:
            err.retry_after = float(resp.getheader("Retry-After") or 1)
        except ValueError:
            err.retry_after = 1.0
        return err

    def _retrying(self, op, *args, **kw):
        """op(), retried while the sidecar answers 503 for the whole request
        (retry_after set by _fail), for up to retry_unavailable seconds."""
        deadline = None
        while True:
            try:
                return op(*args, **kw)
            except NotReady as e:
                wait = getattr(e, "retry_after", None)
                if wait is None or self.retry_unavailable <= 0:
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.retry_unavailable
                wait = min(max(wait, 0.05), 5.0)
                if now + wait > deadline:
                    raise
                time.sleep(wait)

    def _read_body(self, resp, name):
        """The full body, or ProtocolError when the sidecar ended early
        (a short body is never a success)."""
        try:
            body = resp.read()
        except http.client.IncompleteRead as e:
            self.close()
            raise ProtocolError(f"{name}: body truncated after {len(e.partial)} bytes") from None
        want = resp.getheader("Content-Length")
        if want is not None and int(want) != len(body):
            self.close()
            raise ProtocolError(f"{name}: got {len(body)} bytes, Content-Length {want}")
        return body

    def _get_json(self, path):
        resp = self.request("GET", path, headers=self._headers())
        if resp.status != 200:
            raise self._fail(resp)
        return json.loads(self._read_body(resp, path))

    def contracts(self):
        """GET /v1/contracts: the mounted contracts and their state."""
        return self._get_json("/v1/contracts")

    def status(self):
        """This contract's state as /v1/contracts reports it, or None."""
        out = self.contracts()
        items = out.get("contracts", out) if isinstance(out, dict) else out
        for c in items or []:
            if c.get("contract_id") == self.contract:
                return c
        return None

    def manifest(self):
        """The verified manifest as a list of Sample, in (seq, name) order:
        the order is stable while the log grows (new entries go last)."""
        return self._retrying(self._manifest)

    def _manifest(self):
        resp = self.request("GET", contract_path(self.contract, "manifest"), headers=self._headers())
        if resp.status != 200:
            raise self._fail(resp)
        out = []
        seen = set()
        for raw in self._read_body(resp, "manifest").splitlines():
            if not raw.strip():
                continue
            if len(raw) > MAX_MANIFEST_LINE:
                raise ProtocolError(f"manifest line {len(out) + 1} longer than {MAX_MANIFEST_LINE} bytes")
            try:
                d = json.loads(raw)
                s = Sample(str(d["name"]), int(d["size"]), str(d["sha256"]).lower(), int(d.get("seq", 0)), d.get("license", ""))
            except (ValueError, KeyError, TypeError) as e:
                raise ProtocolError(f"manifest line {len(out) + 1}: {e!r}") from None
            if s.name in seen:
                raise ProtocolError(f"manifest lists {s.name!r} twice")
            seen.add(s.name)
            out.append(s)
        out.sort(key=lambda s: (s.seq, s.name))
        return out

    def get(self, name, epoch=None, sample=None, byte_range=None):
        """The verified, decoded bytes of name. With sample (a manifest
        Sample) and verify on, the size and sha256 are checked here too.
        byte_range=(first, last) asks for a Range (inclusive)."""
        return self._retrying(self._get, name, epoch, sample, byte_range)

    def _get(self, name, epoch, sample, byte_range):
        extra = None
        if byte_range is not None:
            extra = {"Range": f"bytes={int(byte_range[0])}-{int(byte_range[1])}"}
        resp = self.request("GET", object_path(self.contract, name), headers=self._headers(epoch, extra))
        if resp.status not in (200, 206):
            raise self._fail(resp, name)
        body = self._read_body(resp, name)
        if resp.status == 200:
            etag = resp.getheader("ETag")
            if sample is not None and self.verify:
                self._check(sample, body)
            elif self.verify and etag:
                check_sha256(name, body, etag.strip('"'))
        return body

    def head(self, name):
        """HEAD of an object: its response headers (ETag, Content-Length)."""
        resp = self.request("HEAD", object_path(self.contract, name), headers=self._headers())
        resp.read()
        if resp.status != 200:
            raise error_for(resp.status, b"", name)
        return dict(resp.getheaders())

    def _check(self, sample, body):
        if len(body) != sample.size:
            raise IntegrityError(sample.name, f"{sample.size} bytes", f"{len(body)} bytes")
        check_sha256(sample.name, body, sample.sha256)

    def get_batch(self, samples, epoch=None, redacted_as_none=False, zero_copy=False):
        """The bytes of several samples (manifest Samples, or names) in one
        request, in order. A frame with an error status raises its
        exception once the whole response is read (so the connection stays
        usable); with redacted_as_none a 451 frame gives None instead.

        The response is read into one buffer and parsed in place. With
        zero_copy the bodies are read-only memoryviews into that buffer
        (no copy; the buffer lives as long as one of them does); otherwise
        each is copied into its own bytes."""
        return self._retrying(self._get_batch, samples, epoch, redacted_as_none, zero_copy)

    def _get_batch(self, samples, epoch, redacted_as_none, zero_copy=False):
        names = [s.name if isinstance(s, Sample) else s for s in samples]
        if not names:
            return []
        body = json.dumps({"names": names}).encode("utf-8")
        headers = self._headers(epoch, {"Content-Type": "application/json", "Accept": frames.MEDIA_TYPE})
        resp = self.request("POST", contract_path(self.contract, "batch"), body=body, headers=headers)
        if resp.status != 200:
            raise self._fail(resp)
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip()
        if ctype != frames.MEDIA_TYPE:
            self.close()
            raise ProtocolError(f"batch answered Content-Type {ctype!r}, want {frames.MEDIA_TYPE}")
        try:
            if resp.length is not None and resp.length <= MAX_BUFFERED_BATCH:
                # One buffer of the announced length, filled by readinto
                # and parsed in place: no copy between the socket and the
                # frames, and few calls.
                got = frames.parse_frames(frames.read_body(resp, resp.length), names)
            else:
                got = frames.read_frames(resp, names)
        except (ProtocolError, http.client.IncompleteRead) as e:
            self.close()
            if isinstance(e, ProtocolError):
                raise
            raise ProtocolError(f"batch response truncated: {e!r}") from None
        out = []
        for i, f in enumerate(got):
            if f.status == 451 and redacted_as_none:
                out.append(None)
                continue
            if f.status != 200:
                raise error_for(f.status, bytes(f.body), f.name)
            if self.verify and isinstance(samples[i], Sample):
                self._check(samples[i], f.body)
            out.append(f.body if zero_copy or type(f.body) is bytes else bytes(f.body))
        return out

    def announce_order(self, epoch, samples):
        """POST /v1/contracts/{id}/epochs/{n}/order: tell the sidecar the
        order in which this job will read the epoch's samples (manifest
        Samples, or names), so that it fetches them from the origin ahead
        of the reads. Read-ahead bills nothing; only reads do. At most
        MAX_ORDER_NAMES names are sent (the head of the order). Returns
        the sidecar's answer."""
        names = [s.name if isinstance(s, Sample) else s for s in samples[:MAX_ORDER_NAMES]]
        body = json.dumps({"names": names}).encode("utf-8")
        path = contract_path(self.contract, "epochs", str(int(epoch)), "order")
        resp = self.request("POST", path, body=body, headers=self._headers(epoch, {"Content-Type": "application/json"}))
        if resp.status != 200:
            raise self._fail(resp)
        return json.loads(self._read_body(resp, "epoch order") or b"null")

    def end_epoch(self, epoch):
        """POST /v1/contracts/{id}/epochs/{n}/end: close the epoch's
        metering summary; returns the summary."""
        resp = self.request("POST", contract_path(self.contract, "epochs", str(int(epoch)), "end"), body=b"", headers=self._headers(epoch))
        if resp.status != 200:
            raise self._fail(resp)
        return json.loads(self._read_body(resp, "epoch end") or b"null")

    def wait_ready(self, timeout=60.0, interval=0.2):
        """Wait until the contract serves (its manifest answers), raising
        the last NotReady (or connection error) after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._manifest()
            except (NotReady, OSError) as e:
                self.close()
                if time.monotonic() >= deadline:
                    if isinstance(e, ProvgateError):
                        raise
                    raise NotReady(503, "unreachable", f"sidecar at {self.url}: {e}") from e
                time.sleep(interval)
