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
        self.assertIs(type(b[0][2]), bytes)
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


if __name__ == "__main__":
    unittest.main()
