"""The Sidecar client against a loopback fake: errors, keep-alive,
integrity checks, headers and truncated batch streams."""

import hashlib
import struct
import unittest

from provgate_torch import (AccessDenied, IntegrityError, NotInManifest, NotReady, OriginUnavailable, ProtocolError,
                            Redacted, Sidecar, VerificationFailed)
from provgate_torch.errors import error_for
from provgate_torch.client import object_path

from .fake_sidecar import FakeSidecar

OBJECTS = {"a.bin": b"alpha" * 100, "dir/b c.bin": b"bravo", "dir/ü/c": b"", "big": bytes(range(256)) * 4096}


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeSidecar(OBJECTS, errors={"gone": 451, "bad": 502, "later": 503, "denied": 403})
        self.addCleanup(self.fake.close)
        self.c = Sidecar(self.fake.contract, url=self.fake.url, job="job-1", retry_unavailable=0.5)
        self.addCleanup(self.c.close)

    def test_manifest(self):
        m = self.c.manifest()
        self.assertEqual([s.name for s in m], sorted(OBJECTS))
        for s in m:
            self.assertEqual(s.size, len(OBJECTS[s.name]))
            self.assertEqual(s.sha256, hashlib.sha256(OBJECTS[s.name]).hexdigest())

    def test_get_and_keep_alive(self):
        m = {s.name: s for s in self.c.manifest()}
        for name, want in OBJECTS.items():
            self.assertEqual(self.c.get(name, epoch=3, sample=m[name]), want)
        peers = {r["peer"] for r in self.fake.requests}
        self.assertEqual(len(peers), 1, "every request on one keep-alive connection")
        gets = [r for r in self.fake.requests if "/objects/" in r["path"]]
        self.assertEqual({r["epoch"] for r in gets}, {"3"})
        self.assertEqual({r["job"] for r in gets}, {"job-1"})

    def test_path_escaping(self):
        self.assertEqual(object_path("did:example:x", "dir/b c/ü?#"),
                         "/v1/contracts/did:example:x/objects/dir/b%20c/%C3%BC%3F%23")

    def test_errors(self):
        for name, cls, status in (("gone", Redacted, 451), ("bad", VerificationFailed, 502),
                                  ("later", NotReady, 503), ("denied", AccessDenied, 403),
                                  ("missing", NotInManifest, 404)):
            with self.subTest(name=name):
                with self.assertRaises(cls) as cm:
                    self.c.get(name)
                self.assertEqual(cm.exception.status, status)
                self.assertEqual(cm.exception.name, name)
                self.assertEqual(cm.exception.code, {403: "forbidden", 404: "not_found", 451: "redacted",
                                                     502: "verification_failed", 503: "unavailable"}[status])
        # the connection stayed usable after the errors
        self.assertEqual(self.c.get("a.bin"), OBJECTS["a.bin"])

    def test_busy_is_retried_then_raised(self):
        # whole-response 503s: retried (honouring Retry-After) until served
        self.fake.fail_next = [503, 503]
        self.assertEqual(self.c.get("a.bin"), OBJECTS["a.bin"])
        self.fake.fail_next = [503]
        self.assertEqual(self.c.get_batch(["a.bin"]), [OBJECTS["a.bin"]])
        self.assertEqual(self.fake.fail_next, [])
        # ... for at most retry_unavailable seconds
        impatient = Sidecar(self.fake.contract, url=self.fake.url, retry_unavailable=0.12)
        self.addCleanup(impatient.close)
        self.fake.fail_next = [503] * 50
        with self.assertRaises(NotReady) as cm:
            impatient.get("a.bin")
        self.assertEqual(cm.exception.code, "rate_limited")
        self.assertGreater(len(self.fake.fail_next), 40)
        self.fake.fail_next = []
        # a 503 frame inside a batch is not retried: the other frames were
        # served (and metered) already
        before = len(self.fake.served())
        with self.assertRaises(NotReady):
            self.c.get_batch(["a.bin", "later"])
        self.assertEqual(len(self.fake.served()), before + 2)

    def test_status_mapping(self):
        cases = [(502, b'{"error":{"code":"verification_failed","message":"x"}}', VerificationFailed),
                 (502, b"", VerificationFailed),
                 (502, b'{"error":{"code":"unavailable","message":"origin down"}}', OriginUnavailable),
                 (504, b"", OriginUnavailable), (401, b"", AccessDenied), (418, b"teapot", Exception)]
        for status, body, cls in cases:
            e = error_for(status, body, "n")
            self.assertIsInstance(e, cls, (status, body))
            self.assertEqual(e.status, status)
            self.assertIn("n: %d" % status, str(e))

    def test_bearer_token(self):
        fake = FakeSidecar(OBJECTS, token="s3cret")
        self.addCleanup(fake.close)
        anon = Sidecar(fake.contract, url=fake.url, token="")
        self.addCleanup(anon.close)
        with self.assertRaises(AccessDenied) as cm:
            anon.manifest()
        self.assertEqual(cm.exception.status, 401)
        authed = Sidecar(fake.contract, url=fake.url, token="s3cret")
        self.addCleanup(authed.close)
        self.assertEqual(len(authed.manifest()), len(OBJECTS))
        self.assertEqual({r["auth"] for r in fake.requests}, {None, "Bearer s3cret"})

    def test_corrupt_bytes_refused(self):
        m = {s.name: s for s in self.c.manifest()}
        self.fake.corrupt.add("a.bin")
        with self.assertRaises(IntegrityError):
            self.c.get("a.bin", sample=m["a.bin"])
        with self.assertRaises(IntegrityError):  # through the ETag
            self.c.get("a.bin")
        with self.assertRaises(IntegrityError):
            self.c.get_batch([m["dir/b c.bin"], m["a.bin"]])
        unchecked = Sidecar(self.fake.contract, url=self.fake.url, verify=False)
        self.addCleanup(unchecked.close)
        self.assertNotEqual(unchecked.get("a.bin"), OBJECTS["a.bin"])

    def test_batch(self):
        m = self.c.manifest()
        got = self.c.get_batch(m, epoch=1)
        self.assertEqual(got, [OBJECTS[s.name] for s in m])
        self.assertEqual(self.c.get_batch([]), [])
        batch = [r for r in self.fake.requests if r["path"].endswith("/batch")]
        self.assertEqual(len(batch), 1)
        self.assertEqual(batch[0]["epoch"], "1")

    def test_batch_error_frames(self):
        with self.assertRaises(Redacted) as cm:
            self.c.get_batch(["a.bin", "gone", "dir/b c.bin"])
        self.assertEqual(cm.exception.name, "gone")
        self.assertEqual(self.c.get_batch(["a.bin", "gone"], redacted_as_none=True), [OBJECTS["a.bin"], None])
        with self.assertRaises(VerificationFailed):
            self.c.get_batch(["bad"], redacted_as_none=True)

    def test_truncated_batch_is_an_error(self):
        names = ["a.bin", "dir/b c.bin"]
        full = sum(4 + len(n.encode()) + 10 + len(OBJECTS[n]) for n in names)
        for cut in (0, 3, 10, 200, full - 1):
            with self.subTest(cut=cut):
                self.fake.truncate_batch_at = cut
                with self.assertRaises(ProtocolError):
                    self.c.get_batch(names)
        self.fake.truncate_batch_at = None
        self.assertEqual(self.c.get_batch(names), [OBJECTS[n] for n in names])

    def test_short_get_is_an_error(self):
        self.fake.short_get.add("a.bin")
        for verify in (True, False):
            c = Sidecar(self.fake.contract, url=self.fake.url, verify=verify)
            self.addCleanup(c.close)
            with self.assertRaisesRegex(ProtocolError, "truncated"):
                c.get("a.bin")

    def test_short_body_under_content_length_is_an_error(self):
        names = ["a.bin", "dir/b c.bin"]
        self.fake.short_batch = True
        with self.assertRaisesRegex(ProtocolError, "truncated"):
            self.c.get_batch(names)
        self.fake.short_batch = False
        self.assertEqual(self.c.get_batch(names), [OBJECTS[n] for n in names])

    def test_stale_connection_is_retried_once(self):
        self.assertEqual(len(self.c.manifest()), len(OBJECTS))
        # the sidecar closes idle keep-alive connections: simulate it
        self.c._conn.sock.close()
        self.c._conn.sock = None
        self.assertEqual(self.c.get("dir/b c.bin"), b"bravo")

    def test_batch_zero_copy(self):
        m = self.c.manifest()
        got = self.c.get_batch(m, zero_copy=True)
        self.assertEqual([bytes(b) for b in got], [OBJECTS[s.name] for s in m])
        self.assertTrue(all(isinstance(b, memoryview) and b.readonly for b in got))
        # one buffer for the whole response: every body is a view of it
        self.assertEqual(len({id(b.obj) for b in got}), 1)
        self.fake.corrupt.add("a.bin")
        with self.assertRaises(IntegrityError):
            self.c.get_batch(m, zero_copy=True)

    def test_malformed_batch_is_a_protocol_error(self):
        from provgate_torch import frames

        names = ["a.bin", "dir/b c.bin"]
        good = frames.encode_frame("a.bin", 200, OBJECTS["a.bin"]) + frames.encode_frame("dir/b c.bin", 200, b"bravo")
        cases = {
            "trailing bytes": lambda n: good + b"\x00",
            "one frame missing": lambda n: good[:len(frames.encode_frame("a.bin", 200, OBJECTS["a.bin"]))],
            "frames swapped": lambda n: frames.encode_frame("dir/b c.bin", 200, b"bravo") + frames.encode_frame(
                "a.bin", 200, OBJECTS["a.bin"]),
            "body length past the end": lambda n: frames.encode_frame("a.bin", 200, OBJECTS["a.bin"]) + struct.pack(
                ">I", 11) + b"dir/b c.bin" + struct.pack(">HQ", 200, 100) + b"bravo",
        }
        for what, body in cases.items():
            with self.subTest(what=what):
                self.fake.batch_body = body
                got = None
                with self.assertRaises(ProtocolError):
                    got = self.c.get_batch(names)
                self.assertIsNone(got)
        # the client dropped the connection it could not trust; the next
        # batch works
        self.fake.batch_body = None
        self.assertEqual(self.c.get_batch(names), [OBJECTS[n] for n in names])

    def test_end_epoch(self):
        self.assertEqual(self.c.end_epoch(4), {"epoch": 4})
        self.assertEqual(self.fake.epochs_ended, [4])

    def test_unreachable(self):
        c = Sidecar("x", url="http://127.0.0.1:1")
        with self.assertRaises(NotReady):
            c.wait_ready(timeout=0.3, interval=0.1)

    def test_bad_url(self):
        with self.assertRaises(ValueError):
            Sidecar("x", url="https://example.com")


if __name__ == "__main__":
    unittest.main()
