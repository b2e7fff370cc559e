"""One framed TCP connection as an asyncio Protocol: bodies in, bodies out, bad bytes close it.

asyncio Protocols rather than streams: a node handles tens of thousands of frames a second
and the stream layer's per-read coroutine hop is measurable at that rate.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any, cast

from eventstream.tls import certified_node
from eventstream.transport._append_intake import TlsSessionError
from eventstream.transport.frames import HEADER, CrcFunction, FrameDecoder, FrameError

log = logging.getLogger(__name__)

# Past this many bytes queued in the kernel-side transport buffer the connection counts as
# congested; owners decide whether to drop (peer messages, Raft resends) or push back (clients).
WRITE_BUFFER_HIGH_BYTES = 8 * 1024 * 1024
WRITE_BUFFER_LOW_BYTES = 1 * 1024 * 1024


class _FlushRound:
    """The connections of one event loop that have frames queued by send_soon(): flushed
    together by one callback per loop turn, so a leader answering many clients schedules one
    callback a turn instead of one per connection."""

    __slots__ = ("_dirty",)

    def __init__(self) -> None:
        self._dirty: list[FramedConnection] = []

    def add(self, conn: FramedConnection) -> None:
        if not self._dirty:
            # The round is keyed by this running loop (_flush_round), so that is the loop
            # the callback belongs to; holding no reference to it lets the loop be collected.
            asyncio.get_running_loop().call_soon(self.flush_all)
        self._dirty.append(conn)

    def flush_all(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()


_flush_rounds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _FlushRound] = weakref.WeakKeyDictionary()


def _flush_round(loop: asyncio.AbstractEventLoop) -> _FlushRound:
    flush_round = _flush_rounds.get(loop)
    if flush_round is None:
        flush_round = _flush_rounds[loop] = _FlushRound()
    return flush_round


class FramedConnection(asyncio.Protocol):
    """A connection whose unit is a CRC-checked frame body.

    on_frames(connection, bodies) is called with every batch of complete bodies, in order.
    on_close(connection, reason) is called once, when the connection is gone for any reason.
    """

    def __init__(
        self,
        crc: CrcFunction,
        frame_bytes_max: int,
        on_frames: Callable[[FramedConnection, list[bytes]], None],
        on_close: Callable[[FramedConnection, str], None] | None = None,
        on_open: Callable[[FramedConnection], None] | None = None,
    ) -> None:
        self._crc = crc
        self._frame_bytes_max = frame_bytes_max
        self._decoder = FrameDecoder(crc, frame_bytes_max)
        self._on_frames = on_frames
        self._on_close = on_close
        self._on_open = on_open
        # Set by take_raw(): the owner splits frames itself and gets every read as it came.
        self._on_data: Callable[[FramedConnection, bytes], None] | None = None
        self._raw_pending = b""
        self.transport: asyncio.Transport | None = None
        self.peername: str = "?"
        self.paused = False
        # Set by an owner whose peer must read its answers before it may send more (a client):
        # while the transport holds more unsent bytes than its high mark, nothing more is read
        # from the peer, so a client that never reads cannot grow the node's memory without end.
        self.reads_wait_for_writes = False
        self.closed = False
        self.frames_in = 0
        self.frames_out = 0
        # Frames queued by send_soon(), written together when the loop next runs callbacks.
        self._soon: list[bytes | bytearray | memoryview] | None = None
        self._round: _FlushRound | None = None
        # A place for the owner to hang its per-connection state (peer id, session...).
        self.tag: object = None
        # Until the first frame arrives, at most this many body bytes are buffered (a hello is
        # a few bytes: a stranger cannot make the node hold frame_bytes_max per connection).
        self.first_frame_bytes_max: int | None = None
        # False while a stranger's connection is unproven: its owner logs refusals, rate-limited.
        self.log_errors = True
        # Over TLS: the node id the other side's certificate names (None: no certificate, or
        # plain TCP); native code must not write the socket, the transport encrypts.
        self.tls = False
        self.certified_node: int | None = None
        # Native TLS (the listen port, csrc/append_tls.pxi): the session every byte in and out
        # passes through; the transport then carries records. None: plain, or the loop's TLS.
        self.tls_session: Any = None
        # Told why a native TLS session failed (the listener logs it as a refusal).
        self.on_tls_failed: Callable[[FramedConnection, str], None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport but have the same interface.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(WRITE_BUFFER_HIGH_BYTES, WRITE_BUFFER_LOW_BYTES)
        self._round = _flush_round(asyncio.get_running_loop())
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.tls = True
            self.certified_node = certified_node(ssl_object)
        peer = transport.get_extra_info("peername")
        self.peername = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if self._on_open is not None:
            self._on_open(self)

    def data_received(self, data: bytes) -> None:
        session = self.tls_session
        if session is not None:
            try:
                data, outgoing = session.feed(data)
            except TlsSessionError as exc:
                if len(exc.args) > 1 and exc.args[1] and self.transport is not None:
                    self.transport.write(exc.args[1])  # the alert that tells the other side why
                if not self.tls and self.on_tls_failed is not None:
                    self.on_tls_failed(self, str(exc.args[0]))
                elif self.log_errors:
                    log.warning("closing connection from %s: TLS: %s", self.peername, exc.args[0])
                self.close(f"TLS: {exc.args[0]}")
                return
            if outgoing and self.transport is not None:
                self.transport.write(outgoing)
            if not self.tls and session.handshake_done:
                self.tls = True
                self.certified_node = session.peer_node()
            if session.closed_by_peer:
                if data:
                    self._take(data)
                self.close("closed by the other side")
                return
            if not data:
                return
        self._take(data)

    def _take(self, data: bytes) -> None:
        on_data = self._on_data
        if on_data is not None:
            if self._raw_pending:
                data, self._raw_pending = self._raw_pending + data, b""
            on_data(self, data)
            return
        try:
            bodies = self._decoder.feed(data)
        except FrameError as exc:
            if self.log_errors:
                log.warning("closing connection from %s: %s", self.peername, exc)
            self.close(f"bad frame: {exc}")
            return
        if bodies:
            self.frames_in += len(bodies)
            self._on_frames(self, bodies)
        elif (self.first_frame_bytes_max is not None and not self.frames_in
              and self._decoder.buffered_bytes > HEADER.size + self.first_frame_bytes_max):
            self.close(f"first frame longer than {self.first_frame_bytes_max} bytes")

    def eof_received(self) -> bool:
        if self._on_data is None and not self._decoder.at_boundary() and self.log_errors:
            log.warning(
                "connection from %s ended inside a frame (%d bytes pending)",
                self.peername,
                self._decoder.buffered_bytes,
            )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish("connection lost" if exc is None else f"connection lost: {exc}")

    def pause_writing(self) -> None:
        self.paused = True
        transport = self.transport
        if self.reads_wait_for_writes and transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        transport = self.transport
        if self.reads_wait_for_writes and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def rebind(
        self,
        on_frames: Callable[[FramedConnection, list[bytes]], None],
        on_close: Callable[[FramedConnection, str], None] | None,
    ) -> None:
        """Hand the connection to a new owner (after the hello said which protocol follows)."""
        self._on_frames = on_frames
        self._on_close = on_close

    def deliver(self, bodies: list[bytes]) -> None:
        """Pass bodies that arrived before a rebind() or take_raw() to the current owner."""
        on_data = self._on_data
        if on_data is None:
            self._on_frames(self, bodies)
            return
        framed = b"".join(HEADER.pack(len(body), self._crc(body)) + body for body in bodies)
        data, self._raw_pending = framed + self._raw_pending, b""
        on_data(self, data)

    def take_raw(
        self,
        on_data: Callable[[FramedConnection, bytes], None],
        on_close: Callable[[FramedConnection, str], None] | None,
    ) -> None:
        """Hand the connection to an owner that splits frames itself (AppendIntake): every
        later read goes to on_data as it came, after the incomplete frame the decoder held."""
        self._on_data = on_data
        self._on_close = on_close
        self._raw_pending = self._decoder.take_buffered()

    def socket_fd(self) -> int:
        """The socket's descriptor, for an owner that writes to it directly; -1 if none."""
        transport = self.transport
        if self.tls and self.tls_session is None:
            return -1  # the bytes must pass through the loop's TLS layer
        sock = None if transport is None else transport.get_extra_info("socket")
        return -1 if sock is None else int(sock.fileno())

    def write_now(self, data: bytes) -> None:
        """Write bytes already framed through the transport (which buffers what the socket
        does not take)."""
        transport = self.transport
        if not self.closed and transport is not None and not transport.is_closing():
            transport.write(data if self.tls_session is None else self.tls_session.encrypt(data))

    def write_records(self, data: bytes) -> None:
        """Write bytes the connection's native TLS session already encrypted."""
        transport = self.transport
        if not self.closed and transport is not None and not transport.is_closing():
            transport.write(data)

    # -- sending ----------------------------------------------------------------------------
    def send(self, body: bytes | bytearray | memoryview) -> bool:
        """Queue one frame; False when the connection is closed (the body is not sent)."""
        return self.send_many((body,))

    def send_many(self, bodies: tuple | list) -> bool:  # type: ignore[type-arg]
        """Queue several frames with one write, so a burst of messages costs one syscall."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return False
        if self._soon is not None:
            self.flush()
        parts: list[bytes | bytearray | memoryview] = []
        crc = self._crc
        limit = self._frame_bytes_max
        for body in bodies:
            length = len(body)
            if length > limit:
                raise FrameError(f"frame body of {length} bytes exceeds the limit of {limit}")
            parts.append(HEADER.pack(length, crc(body)))
            parts.append(body)
        if self.tls_session is not None:
            transport.write(self.tls_session.encrypt(b"".join(parts)))
        else:
            transport.writelines(parts)
        self.frames_out += len(bodies)
        return True

    def send_soon(self, body: bytes | bytearray | memoryview) -> bool:
        """Queue one frame to be written with every other send_soon() frame of this loop turn.

        For many small independent frames (answers to concurrent client requests, the requests
        themselves): one write syscall per connection per turn instead of one per frame. Order
        with send()/send_many() is kept: those flush what send_soon() queued first.
        """
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return False
        length = len(body)
        if length > self._frame_bytes_max:
            raise FrameError(f"frame body of {length} bytes exceeds the limit of {self._frame_bytes_max}")
        self._queue_soon(HEADER.pack(length, self._crc(body)), body)
        return True

    def send_framed_soon(self, frame: bytes) -> bool:
        """send_soon() for a frame already encoded whole, header and CRC included."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return False
        self._queue_soon(frame)
        return True

    def _queue_soon(self, *parts: bytes | bytearray | memoryview) -> None:
        """Add one frame's parts to the next flush, scheduling it if this is the first."""
        soon = self._soon
        if soon is None:
            soon = self._soon = []
            assert self._round is not None
            self._round.add(self)
        soon.extend(parts)
        self.frames_out += 1

    def flush(self) -> None:
        """Write what send_soon() queued, now."""
        soon = self._soon
        if soon is None:
            return
        self._soon = None
        transport = self.transport
        if not self.closed and transport is not None and not transport.is_closing():
            # One joined buffer: uvloop's writelines() costs about twice as much for many
            # small frames.
            data = b"".join(soon)
            transport.write(data if self.tls_session is None else self.tls_session.encrypt(data))

    @property
    def write_buffer_bytes(self) -> int:
        transport = self.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def close(self, reason: str = "closed by owner") -> None:
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._finish(reason)

    def abort(self, reason: str) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._on_close is not None:
            self._on_close(self, reason)
