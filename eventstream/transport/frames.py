"""Length-prefixed, CRC-checked frames: the unit of every byte stream between nodes and clients.

Byte layout of one frame (all integers little-endian)::

    offset  size  field
    0       4     body_length   number of body bytes that follow the 8-byte header
    4       4     body_crc      CRC-32C of the body bytes
    8       n     body

A frame is the unit of integrity: a reader checks the length against its limit before it
buffers anything (a huge length prefix cannot make it allocate), and checks the CRC before the
body is handed on, so a peer never acts on damaged bytes. Any violation is a FrameError; the
owner of the connection closes it, because after a bad frame the stream has no trustworthy
boundary left to resynchronise on.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from eventstream.storage._crc32c import crc32c as _native_crc32c
from eventstream.transport._frames import SPLIT_BAD_CRC, SPLIT_TOO_LONG, split_frames

Buffer = bytes | bytearray | memoryview
CrcFunction = Callable[[Buffer], int]

HEADER = struct.Struct("<II")
HEADER_BYTES = HEADER.size

# Large enough for an AppendEntries carrying a full batch window or a snapshot chunk; small
# enough that one connection cannot make a node buffer an unbounded amount of memory.
FRAME_BYTES_MAX_DEFAULT = 64 * 1024 * 1024


class FrameError(ValueError):
    """The byte stream is not a valid sequence of frames; the connection must be closed."""


def _too_long(length: int, limit: int) -> FrameError:
    return FrameError(f"frame length prefix {length} exceeds the limit of {limit} bytes")


def _bad_crc(expected: int, actual: int) -> FrameError:
    return FrameError(f"frame CRC mismatch: header says {expected:#010x}, body has {actual:#010x}")


def frame_header(body_length: int, body_crc: int) -> bytes:
    return HEADER.pack(body_length, body_crc)


class FrameEncoder:
    """Builds frames without copying the body: the header goes out as its own buffer."""

    __slots__ = ("_crc", "frame_bytes_max")

    def __init__(self, crc: CrcFunction, frame_bytes_max: int) -> None:
        self._crc = crc
        self.frame_bytes_max = frame_bytes_max

    def encode(self, body: bytes | bytearray | memoryview) -> tuple[bytes, bytes | bytearray | memoryview]:
        """Return (header, body); write both with one writelines() call."""
        length = len(body)
        if length > self.frame_bytes_max:
            raise FrameError(f"frame body of {length} bytes exceeds the limit of {self.frame_bytes_max}")
        return HEADER.pack(length, self._crc(body)), body


class FrameDecoder:
    """Incremental decoder: feed() whatever the socket delivered, iterate the complete bodies.

    Invariant: self._buf holds at most one incomplete frame plus whatever arrived with the
    last feed, and never more than HEADER_BYTES + frame_bytes_max of an incomplete frame.
    """

    __slots__ = ("_buf", "_crc", "frame_bytes_max")

    def __init__(self, crc: CrcFunction, frame_bytes_max: int) -> None:
        self._crc = crc
        self.frame_bytes_max = frame_bytes_max
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Append data and return the bodies of all frames now complete, in order."""
        buf: bytes | bytearray | memoryview = self._buf
        if self._buf:
            self._buf += data
        else:
            # The common case on a busy connection: the read ends on a frame boundary, so the
            # chunk is split where it lies and nothing is copied into the buffer.
            buf = data
        bodies: list[bytes] = []
        if self._crc is _native_crc32c:
            status, pos, detail1, detail2 = split_frames(buf, 0, self.frame_bytes_max, bodies)
            if status == SPLIT_TOO_LONG:
                raise _too_long(detail1, self.frame_bytes_max)
            if status == SPLIT_BAD_CRC:
                raise _bad_crc(detail1, detail2)
        else:
            pos = self._split_reference(buf, bodies)
        if buf is self._buf:
            # Compact once per feed, not once per frame, so a burst of small frames costs one move.
            if pos:
                del buf[:pos]
        elif pos < len(buf):
            self._buf = bytearray(memoryview(buf)[pos:])
        return bodies

    def _split_reference(self, buf: bytes | bytearray | memoryview, bodies: list[bytes]) -> int:
        """The frame loop in Python, for any CRC function; csrc/_frames.pyx is its native twin."""
        pos = 0
        end = len(buf)
        limit = self.frame_bytes_max
        crc = self._crc
        while end - pos >= HEADER_BYTES:
            length, expected = HEADER.unpack_from(buf, pos)
            if length > limit:
                raise _too_long(length, limit)
            body_end = pos + HEADER_BYTES + length
            if body_end > end:
                break
            body = bytes(buf[pos + HEADER_BYTES : body_end])
            actual = crc(body)
            if actual != expected:
                raise _bad_crc(expected, actual)
            bodies.append(body)
            pos = body_end
        return pos

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def take_buffered(self) -> bytes:
        """Remove and return the bytes of the incomplete frame held."""
        data = bytes(self._buf)
        self._buf = bytearray()
        return data

    def at_boundary(self) -> bool:
        """True when no partial frame is pending: the stream may end here cleanly."""
        return not self._buf


def iter_frames(data: bytes, crc: CrcFunction, frame_bytes_max: int) -> Iterator[bytes]:
    """Decode a complete byte string of frames; a trailing partial frame is a FrameError."""
    decoder = FrameDecoder(crc, frame_bytes_max)
    yield from decoder.feed(data)
    if not decoder.at_boundary():
        raise FrameError(f"stream ended inside a frame ({decoder.buffered_bytes} bytes pending)")
