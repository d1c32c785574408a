"""The sidecar's batch-read framing (application/x-provgate-frames).

``POST /v1/contracts/{id}/batch`` with ``{"names": [...]}`` answers, for each
requested name in order, one frame::

    uint32 BE  name length
    bytes      name (UTF-8)
    uint16 BE  status (HTTP-like: 200, 404, 451, 502, ...)
    uint64 BE  body length
    bytes      body (the decoded object for 200, a JSON error body otherwise)

The response ends after the last frame. A stream that ends inside a frame,
or before every requested name has its frame, is an error, never a short
success.

The client reads a response of known length into one buffer (``read_body``)
and parses it in place (``parse_frames``): the bodies are memoryviews into
that buffer, and nothing is returned unless the whole response is well
formed. Longer responses are read frame by frame (``read_frames``).
"""

import struct

from .errors import ProtocolError

MEDIA_TYPE = "application/x-provgate-frames"

# Bounds on what a frame header may announce, so that a corrupt header
# cannot make the client allocate gigabytes.
MAX_NAME_LEN = 4096
MAX_BODY_LEN = 1 << 32

_NAME_LEN = struct.Struct(">I")
_STATUS_LEN = struct.Struct(">HQ")


class Frame:
    """One frame: the name, its status and its body."""

    __slots__ = ("name", "status", "body")

    def __init__(self, name, status, body):
        self.name = name
        self.status = status
        self.body = body

    def __repr__(self):
        return f"Frame({self.name!r}, {self.status}, {len(self.body)} bytes)"


def encode_frame(name, status, body):
    """The bytes of one frame (used by tests and fakes)."""
    n = name.encode("utf-8")
    return _NAME_LEN.pack(len(n)) + n + _STATUS_LEN.pack(status, len(body)) + body


def _read_exact(stream, n, what):
    """n bytes from stream, or ProtocolError if it ends first."""
    parts = []
    left = n
    while left > 0:
        b = stream.read(left)
        if not b:
            got = n - left
            raise ProtocolError(f"batch response truncated in {what}: got {got} of {n} bytes")
        parts.append(b)
        left -= len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_frame(stream, max_body=MAX_BODY_LEN):
    """The next frame from stream, or None at a clean end of stream (no
    byte of a next frame). A partial frame raises ProtocolError."""
    first = stream.read(_NAME_LEN.size)
    if not first:
        return None
    if len(first) < _NAME_LEN.size:
        first += _read_exact(stream, _NAME_LEN.size - len(first), "frame header")
    (name_len,) = _NAME_LEN.unpack(first)
    if name_len == 0 or name_len > MAX_NAME_LEN:
        raise ProtocolError(f"batch frame name length {name_len} outside 1..{MAX_NAME_LEN}")
    raw = _read_exact(stream, name_len, "frame name")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"batch frame name is not UTF-8: {e}") from None
    status, body_len = _STATUS_LEN.unpack(_read_exact(stream, _STATUS_LEN.size, "frame header"))
    if body_len > max_body:
        raise ProtocolError(f"batch frame {name!r}: body length {body_len} exceeds {max_body}")
    body = _read_exact(stream, body_len, f"body of {name!r}") if body_len else b""
    return Frame(name, status, body)


def read_frames(stream, names, max_body=MAX_BODY_LEN):
    """The frames answering names, in order. Raises ProtocolError if a
    frame is missing, out of order or truncated, or if bytes follow the
    last one."""
    out = []
    for want in names:
        f = read_frame(stream, max_body)
        if f is None:
            raise ProtocolError(f"batch response ended after {len(out)} of {len(names)} frames")
        if f.name != want:
            raise ProtocolError(f"batch frame {len(out)} is {f.name!r}, want {want!r}")
        out.append(f)
    if stream.read(1):
        raise ProtocolError(f"batch response has bytes after the last of {len(names)} frames")
    return out


def parse_frames(buf, names, max_body=MAX_BODY_LEN):
    """The frames answering names from a complete response body, with the
    same checks as read_frames, without copying: each frame's body is a
    read-only memoryview into buf (bytes, bytearray or memoryview), which
    it keeps alive. The whole body is checked before anything is returned:
    a malformed or truncated response raises ProtocolError and gives no
    frame at all."""
    view = memoryview(buf).cast("B").toreadonly()
    out = []
    pos, end = 0, len(view)
    for want in names:
        if pos == end:
            raise ProtocolError(f"batch response ended after {len(out)} of {len(names)} frames")
        if end - pos < _NAME_LEN.size:
            raise ProtocolError(f"batch response truncated in frame header: got {end - pos} of {_NAME_LEN.size} bytes")
        (name_len,) = _NAME_LEN.unpack_from(view, pos)
        pos += _NAME_LEN.size
        if name_len == 0 or name_len > MAX_NAME_LEN:
            raise ProtocolError(f"batch frame name length {name_len} outside 1..{MAX_NAME_LEN}")
        if end - pos < name_len + _STATUS_LEN.size:
            raise ProtocolError(f"batch response truncated in frame name or header of frame {len(out)}")
        try:
            name = str(view[pos:pos + name_len], "utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"batch frame name is not UTF-8: {e}") from None
        pos += name_len
        status, body_len = _STATUS_LEN.unpack_from(view, pos)
        pos += _STATUS_LEN.size
        if body_len > max_body:
            raise ProtocolError(f"batch frame {name!r}: body length {body_len} exceeds {max_body}")
        if end - pos < body_len:
            raise ProtocolError(f"batch response truncated in body of {name!r}: got {end - pos} of {body_len} bytes")
        if name != want:
            raise ProtocolError(f"batch frame {len(out)} is {name!r}, want {want!r}")
        out.append(Frame(name, status, view[pos:pos + body_len]))
        pos += body_len
    if pos != end:
        raise ProtocolError(f"batch response has bytes after the last of {len(names)} frames")
    return out


def read_body(stream, length):
    """Exactly length bytes of stream in one buffer (a bytearray, filled by
    readinto: no intermediate copies), or ProtocolError if it ends first."""
    buf = bytearray(length)
    view = memoryview(buf)
    got = 0
    while got < length:
        n = stream.readinto(view[got:])
        if not n:
            raise ProtocolError(f"batch response truncated: got {got} of {length} bytes")
        got += n
    return buf
