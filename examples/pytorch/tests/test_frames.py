"""The batch-read framing: parsing, and refusing truncated or odd streams."""

import io
import struct
import unittest

from provgate_torch import frames
from provgate_torch.errors import ProtocolError


def stream(*parts):
    return io.BytesIO(b"".join(parts))


class TrickleReader(io.RawIOBase):
    """Returns at most one byte per read, like a slow socket."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def read(self, n=-1):
        b = self.data[self.pos:self.pos + 1]
        self.pos += len(b)
        return b

    def readinto(self, buf):
        b = self.read(1)
        buf[:len(b)] = b
        return len(b)


class FramesTest(unittest.TestCase):
    def test_encode_layout(self):
        f = frames.encode_frame("a/b", 200, b"xyz")
        self.assertEqual(f, struct.pack(">I", 3) + b"a/b" + struct.pack(">H", 200) + struct.pack(">Q", 3) + b"xyz")

    def test_round_trip(self):
        names = ["a", "dir/ü.bin", "empty", "gone"]
        data = stream(frames.encode_frame("a", 200, b"A" * 70000), frames.encode_frame("dir/ü.bin", 200, b"\x00\x01"),
                      frames.encode_frame("empty", 200, b""), frames.encode_frame("gone", 451, b""))
        got = frames.read_frames(data, names)
        self.assertEqual([(f.name, f.status, f.body) for f in got],
                         [("a", 200, b"A" * 70000), ("dir/ü.bin", 200, b"\x00\x01"), ("empty", 200, b""), ("gone", 451, b"")])

    def test_slow_stream(self):
        data = frames.encode_frame("a", 200, b"hello") + frames.encode_frame("b", 404, b"")
        got = frames.read_frames(TrickleReader(data), ["a", "b"])
        self.assertEqual([(f.name, f.status, f.body) for f in got], [("a", 200, b"hello"), ("b", 404, b"")])

    def test_every_truncation_is_an_error(self):
        data = frames.encode_frame("one", 200, b"12345") + frames.encode_frame("two", 200, b"678")
        for cut in range(len(data)):
            with self.subTest(cut=cut):
                with self.assertRaises(ProtocolError):
                    frames.read_frames(io.BytesIO(data[:cut]), ["one", "two"])
                with self.assertRaises(ProtocolError):
                    frames.parse_frames(data[:cut], ["one", "two"])

    def test_parse_matches_read(self):
        names = ["a", "dir/ü.bin", "empty", "gone"]
        data = b"".join([frames.encode_frame("a", 200, b"A" * 70000), frames.encode_frame("dir/ü.bin", 200, b"\x00\x01"),
                         frames.encode_frame("empty", 200, b""), frames.encode_frame("gone", 451, b"")])
        a = [(f.name, f.status, f.body) for f in frames.read_frames(io.BytesIO(data), names)]
        b = [(f.name, f.status, f.body) for f in frames.parse_frames(data, names)]
        self.assertEqual(a, b)
        self.assertIs(type(b[0][2]), memoryview)
        with self.assertRaisesRegex(ProtocolError, "after the last"):
            frames.parse_frames(data + b"x", names)
        with self.assertRaisesRegex(ProtocolError, "want 'b'"):
            frames.parse_frames(data, ["a", "b", "empty", "gone"])
        with self.assertRaisesRegex(ProtocolError, "exceeds"):
            frames.parse_frames(data, names, max_body=10)

    def test_trailing_bytes(self):
        with self.assertRaisesRegex(ProtocolError, "after the last"):
            frames.read_frames(stream(frames.encode_frame("a", 200, b"x"), b"\x00"), ["a"])

    def test_wrong_order_or_name(self):
        data = frames.encode_frame("b", 200, b"") + frames.encode_frame("a", 200, b"")
        with self.assertRaisesRegex(ProtocolError, "want 'a'"):
            frames.read_frames(io.BytesIO(data), ["a", "b"])

    def test_bounds(self):
        with self.assertRaisesRegex(ProtocolError, "name length"):
            frames.read_frame(stream(struct.pack(">I", frames.MAX_NAME_LEN + 1)))
        with self.assertRaisesRegex(ProtocolError, "name length"):
            frames.read_frame(stream(struct.pack(">I", 0)))
        with self.assertRaisesRegex(ProtocolError, "exceeds"):
            frames.read_frame(stream(struct.pack(">I", 1), b"a", struct.pack(">HQ", 200, 1 << 40)), max_body=1 << 30)
        with self.assertRaisesRegex(ProtocolError, "UTF-8"):
            frames.read_frame(stream(struct.pack(">I", 1), b"\xff", struct.pack(">HQ", 200, 0)))

    def test_clean_end(self):
        self.assertIsNone(frames.read_frame(io.BytesIO(b"")))


def frame_raw(name_len, name, status, body_len, body=b""):
    """A frame with every header field chosen, consistent or not."""
    return struct.pack(">I", name_len) + name + struct.pack(">HQ", status, body_len) + body


# Malformed responses for names ["a", "b"]: (what, raw body, the error's words).
MALFORMED = [
    ("no frame at all", b"", "ended after 0 of 2 frames"),
    ("one frame of two", frames.encode_frame("a", 200, b"x"), "ended after 1 of 2 frames"),
    ("header cut", frames.encode_frame("a", 200, b"x") + b"\x00\x00", "truncated in frame header"),
    ("name cut", frames.encode_frame("a", 200, b"x") + struct.pack(">I", 5) + b"b", "truncated in frame name"),
    ("body longer than the rest", frames.encode_frame("a", 200, b"x") + frame_raw(1, b"b", 200, 10, b"short"),
     "truncated in body of 'b'"),
    ("body length beyond any bound", frame_raw(1, b"a", 200, (1 << 64) - 1), "exceeds"),
    ("empty name", frame_raw(0, b"", 200, 0), "name length 0"),
    ("name too long", frame_raw(frames.MAX_NAME_LEN + 1, b"a" * (frames.MAX_NAME_LEN + 1), 200, 0), "name length"),
    ("name not UTF-8", frame_raw(1, b"\xff", 200, 0) + frames.encode_frame("b", 200, b""), "not UTF-8"),
    ("frames out of order", frames.encode_frame("b", 200, b"") + frames.encode_frame("a", 200, b""), "want 'a'"),
    ("a name not asked for", frames.encode_frame("a", 200, b"") + frames.encode_frame("c", 200, b""), "want 'b'"),
    ("bytes after the last frame", frames.encode_frame("a", 200, b"") + frames.encode_frame("b", 200, b"") + b"\x00",
     "after the last of 2 frames"),
]


class ZeroCopyTest(unittest.TestCase):
    """parse_frames on a response read into one buffer: views, no copies,
    and for a malformed response a ProtocolError and no frame at all."""

    def test_bodies_are_views_into_the_buffer(self):
        buf = bytearray(frames.encode_frame("a", 200, b"hello") + frames.encode_frame("b", 200, b"world"))
        got = frames.parse_frames(buf, ["a", "b"])
        self.assertEqual([(f.name, f.status, bytes(f.body)) for f in got], [("a", 200, b"hello"), ("b", 200, b"world")])
        for f in got:
            self.assertIsInstance(f.body, memoryview)
            self.assertTrue(f.body.readonly, "the caller must not write into the shared buffer")
        # The same memory, not a copy: a change to the buffer shows in the body.
        buf[-5:] = b"WORLD"
        self.assertEqual(bytes(got[1].body), b"WORLD")
        # The views keep the buffer alive.
        body = got[0].body
        del buf, got
        self.assertEqual(bytes(body), b"hello")

    def test_malformed_is_a_protocol_error_never_a_partial_result(self):
        for what, raw, words in MALFORMED:
            with self.subTest(what=what):
                got = None
                with self.assertRaisesRegex(ProtocolError, words):
                    got = frames.parse_frames(bytearray(raw), ["a", "b"])
                self.assertIsNone(got, "nothing returned")
                with self.assertRaises(ProtocolError):
                    frames.read_frames(io.BytesIO(raw), ["a", "b"])

    def test_every_truncation_of_a_buffer(self):
        data = frames.encode_frame("one", 200, b"12345") + frames.encode_frame("two", 451, b"")
        for cut in range(len(data)):
            with self.subTest(cut=cut):
                with self.assertRaises(ProtocolError):
                    frames.parse_frames(memoryview(bytearray(data))[:cut], ["one", "two"])
        self.assertEqual(len(frames.parse_frames(bytearray(data), ["one", "two"])), 2)

    def test_read_body(self):
        data = frames.encode_frame("a", 200, b"A" * 1000)
        self.assertEqual(frames.read_body(io.BytesIO(data), len(data)), data)
        self.assertEqual(frames.read_body(TrickleReader(data), len(data)), data)
        self.assertEqual(frames.read_body(io.BytesIO(data + b"next"), len(data)), data, "reads no further")
        for short in (0, 1, len(data) - 1):
            with self.subTest(short=short):
                with self.assertRaisesRegex(ProtocolError, f"truncated: got {short} of {len(data)} bytes"):
                    frames.read_body(io.BytesIO(data[:short]), len(data))


if __name__ == "__main__":
    unittest.main()
