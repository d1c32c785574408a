"""A loopback stand-in for the sidecar's /v1 data endpoint, for the faults
and bookkeeping a real sidecar will not show on demand (truncated batch
streams, arbitrary error statuses, per-connection request counts). The
end-to-end test (e2e_test.go) runs the same client against the real
``provgate serve``."""

import hashlib
import http.server
import json
import threading
import urllib.parse

from provgate_torch.frames import MEDIA_TYPE, encode_frame


# The sidecar's error codes by status (contract/errors.go).
CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 451: "redacted", 502: "verification_failed",
         503: "unavailable"}


class FakeSidecar:
    """Serves objects {name: bytes}; errors {name: status} answer those
    names with a status; records (method, path, epoch, job, auth, peer)."""

    def __init__(self, objects, contract="did:example:ds", errors=None, token=None):
        self.objects = dict(objects)
        self.contract = contract
        self.errors = dict(errors or {})
        self.token = token
        self.requests = []
        self.lock = threading.Lock()
        self.truncate_batch_at = None  # cut the batch body after this many bytes
        self.short_batch = False  # announce the full Content-Length, send one byte less
        self.short_get = set()  # names whose GET body stops one byte short
        self.fail_next = []  # statuses for the next whole requests (GET object or batch), then normal
        self.corrupt = set()  # names whose bytes are served altered
        self.batch_body = None  # names -> the raw batch response body (a full Content-Length)
        self.epochs_ended = []
        self.orders = []  # (epoch, job, names) of each order announcement
        self.order_status = 200  # what order announcements answer
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake._handle(self, "GET")

            def do_HEAD(self):
                fake._handle(self, "HEAD")

            def do_POST(self):
                fake._handle(self, "POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def manifest_lines(self):
        out = []
        for seq, name in enumerate(sorted(self.objects), start=1):
            b = self.objects[name]
            out.append({"name": name, "size": len(b), "sha256": hashlib.sha256(b).hexdigest(), "seq": seq,
                        "license": "cc-by-4.0"})
        return out

    def body_of(self, name):
        b = self.objects[name]
        if name in self.corrupt:
            b = bytes([b[0] ^ 1]) + b[1:] if b else b"x"
        return b

    def status_of(self, name):
        if name in self.errors:
            return self.errors[name]
        return 200 if name in self.objects else 404

    @staticmethod
    def _error(h, status, code, message, head=False):
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _handle(self, h, method):
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        path = urllib.parse.urlsplit(h.path).path
        with self.lock:
            self.requests.append({"method": method, "path": path, "epoch": h.headers.get("X-Provgate-Epoch"),
                                  "job": h.headers.get("X-Provgate-Job"), "auth": h.headers.get("Authorization"),
                                  "peer": h.client_address, "body": body})
        if self.token and h.headers.get("Authorization") != "Bearer " + self.token:
            return self._error(h, 401, "unauthorized", "missing or bad local bearer token", method == "HEAD")
        prefix = "/v1/contracts/" + urllib.parse.quote(self.contract, safe="!$&'()*+,;=:@") + "/"
        if not path.startswith(prefix):
            return self._error(h, 404, "not_found", "contract not mounted")
        rest = path[len(prefix):]
        if method == "GET" and rest == "manifest":
            data = "".join(json.dumps(line) + "\n" for line in self.manifest_lines()).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/jsonl")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        if self.fail_next and (rest.startswith("objects/") or rest == "batch"):
            with self.lock:
                st = self.fail_next.pop(0)
            h.send_response(st)
            body = json.dumps({"error": {"code": "rate_limited", "message": "busy"}}).encode()
            h.send_header("Retry-After", "0.05")
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        if method in ("GET", "HEAD") and rest.startswith("objects/"):
            name = "/".join(urllib.parse.unquote(s) for s in rest[len("objects/"):].split("/"))
            st = self.status_of(name)
            if st != 200:
                return self._error(h, st, CODES.get(st, "err_%d" % st), "status %d for %s" % (st, name), method == "HEAD")
            data = self.body_of(name)
            h.send_response(200)
            h.send_header("ETag", '"%s"' % hashlib.sha256(self.objects[name]).hexdigest())
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if method == "GET" and name in self.short_get:
                h.wfile.write(data[:-1])
                h.close_connection = True
            elif method == "GET":
                h.wfile.write(data)
            return
        if method == "POST" and rest == "batch":
            names = json.loads(body)["names"]
            out = b""
            for name in names:
                st = self.status_of(name)
                out += encode_frame(name, st, self.body_of(name) if st == 200 else b"")
            if self.batch_body is not None:
                out = self.batch_body(names)
            cut = self.truncate_batch_at
            h.send_response(200)
            h.send_header("Content-Type", MEDIA_TYPE)
            if cut is not None:
                # Announce no length and close: a stream that just stops.
                h.send_header("Connection", "close")
                h.end_headers()
                h.wfile.write(out[:cut])
                h.close_connection = True
                return
            h.send_header("Content-Length", str(len(out)))
            h.end_headers()
            if self.short_batch:
                h.wfile.write(out[:-1])
                h.close_connection = True
                return
            h.wfile.write(out)
            return
        if method == "POST" and rest.startswith("epochs/") and rest.endswith("/order"):
            n = int(rest.split("/")[1])
            names = json.loads(body)["names"]
            if self.order_status != 200:
                return self._error(h, self.order_status, "payload_too_large", "order too large")
            with self.lock:
                self.orders.append((n, h.headers.get("X-Provgate-Job"), names))
            data = json.dumps({"epoch": n, "names": len(names)}).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        if method == "POST" and rest.startswith("epochs/") and rest.endswith("/end"):
            n = int(rest.split("/")[1])
            self.epochs_ended.append(n)
            data = json.dumps({"epoch": n}).encode()
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        return self._error(h, 404, "not_found", "no route")

    def batches(self):
        """The name lists of the batch requests, in arrival order."""
        with self.lock:
            return [json.loads(r["body"])["names"] for r in self.requests
                    if r["method"] == "POST" and r["path"].endswith("/batch")]

    def served(self, kind=None):
        """The names served, one per object read (GET or batch frame)."""
        with self.lock:
            reqs = list(self.requests)
        out = []
        for r in reqs:
            if r["method"] == "GET" and "/objects/" in r["path"]:
                out.append(urllib.parse.unquote(r["path"].split("/objects/", 1)[1]))
            elif r["method"] == "POST" and r["path"].endswith("/batch"):
                out.extend(json.loads(r["body"])["names"])
        return out
