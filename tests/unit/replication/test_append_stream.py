"""AppendStream (csrc/append_stream.h): a worker's frames to its follower, entry bytes sent from
the shared entry ring. The bytes on the wire equal the Python encoders' frames; overwritten
entries are never sent; entries overwritten WHILE the kernel copies them leave a frame without
its last byte, which no decoder ever completes; a stuck or gone peer is an error, not a hang or
a signal."""

from __future__ import annotations

import contextlib
import errno
import mmap
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstream.raft.messages import Entry, Message, MessageType
from eventstream.replication._spsc_ring import (
    APPEND_OVERHEAD_BYTES,
    ENTRY_HEADER_BYTES,
    GATHER_MISMATCH,
    GATHER_STALE,
    SEND_LAPPED,
    SEND_TOO_MANY,
    AppendStream,
    EntryRing,
)
from eventstream.storage._crc32c import crc32c
from eventstream.transport.frames import FrameDecoder
from eventstream.transport.peer_codec import decode_message, encode_message

TERM = 7
COMMIT = 3


def make_ring(capacity: int) -> tuple[mmap.mmap, EntryRing, EntryRing]:
    mapping = mmap.mmap(-1, ENTRY_HEADER_BYTES + capacity)
    return mapping, EntryRing.create(mapping), EntryRing.attach(mapping)


def framed(body: bytes) -> bytes:
    return struct.pack("<II", len(body), crc32c(body)) + body


def reference_append(entries: list[Entry]) -> bytes:
    return framed(encode_message(Message(MessageType.APPEND, 2, 1, TERM, index=entries[0].index - 1,
                                         log_term=TERM - 1, commit=COMMIT, entries=entries)))


def read_available(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        got += sock.recv(1 << 16)
    return got


@contextlib.contextmanager
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair: the stream writes to the first (non-blocking), the test reads the second."""
    a, b = socket.socketpair()
    a.setblocking(False)
    with a, b:
        yield a, b


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=30), st.integers(0, 5000), st.data())
def test_the_bytes_sent_equal_the_python_encoders_frames_in_order(payloads: list[bytes], skew: int,
                                                                  data: st.DataObject) -> None:
    _, writer, reader = make_ring(1 << 15)
    writer.append(1, 1, bytes(skew))  # start the entries at an arbitrary ring position
    entries = [Entry(10 + k, 6 + k % 2, p) for k, p in enumerate(payloads)]
    positions = [writer.append(e.index, e.term, e.data) for e in entries]
    with pair() as (a, b):
        expected = b""
        stream = AppendStream(a.fileno(), 1000, local_bytes=1 << 16)
        for _ in range(data.draw(st.integers(1, 6))):
            if data.draw(st.booleans()):
                body = data.draw(st.binary(max_size=200))
                stream.queue_message(body)
                expected += framed(body)
                continue
            lo = data.draw(st.integers(0, len(entries) - 1))
            hi = data.draw(st.integers(lo, len(entries) - 1))
            got = stream.queue_append(reader, 2, 1, TERM, entries[lo].index - 1, TERM - 1, COMMIT, positions[lo],
                                      entries[lo].index, entries[hi].index)
            if positions[lo] < writer.low:
                assert got == GATHER_STALE  # overwritten before the send: nothing went out
            else:
                frame = reference_append(entries[lo:hi + 1])
                assert got == len(frame)
                expected += frame
        stream.flush()
        assert read_available(b) == expected
        assert stream.bytes_sent == len(expected)


def test_a_message_larger_than_the_local_buffer_goes_out_whole_and_in_order() -> None:
    _, writer, reader = make_ring(1 << 16)
    pos = writer.append(5, 2, b"entry five")
    with pair() as (a, b):
        stream = AppendStream(a.fileno(), 1000, local_bytes=4096)
        big = bytes(range(256)) * 40
        stream.queue_message(b"small")
        assert stream.queue_append(reader, 2, 1, TERM, 4, TERM - 1, COMMIT, pos, 5, 5) > 0
        stream.queue_message(big)
        stream.flush()
        expected = framed(b"small") + reference_append([Entry(5, 2, b"entry five")]) + framed(big)
        assert recv_exactly(b, len(expected)) == expected


def test_a_misnamed_order_is_refused_and_nothing_of_it_is_sent() -> None:
    _, writer, reader = make_ring(1 << 14)
    p1 = writer.append(1, 1, b"one")
    writer.append(2, 1, b"two")
    with pair() as (a, b):
        stream = AppendStream(a.fileno(), 1000)
        stream.queue_message(b"before")
        assert stream.queue_append(reader, 2, 1, 1, 1, 1, 0, p1, 2, 2) == GATHER_MISMATCH  # p1 holds entry 1
        assert stream.queue_append(reader, 2, 1, 1, 0, 0, 0, p1, 1, 3) == GATHER_MISMATCH  # 3 is not there yet
        assert stream.queue_append(reader, 2, 1, 1, 0, 0, 0, p1 + 4, 1, 1) == GATHER_MISMATCH  # not a record start
        stream.queue_message(b"after")
        stream.flush()
        assert read_available(b) == framed(b"before") + framed(b"after")


def test_more_entries_than_one_gather_list_takes_are_refused_unsent_and_go_as_a_copied_frame() -> None:
    _, writer, reader = make_ring(1 << 16)
    entries = [Entry(k, 3, bytes([k % 251]) * (k % 5)) for k in range(1, 1501)]
    first = [writer.append(e.index, e.term, e.data) for e in entries][0]
    with pair() as (a, b):
        stream = AppendStream(a.fileno(), 1000)
        assert stream.queue_append(reader, 2, 1, TERM, 0, TERM - 1, COMMIT, first, 1, 1500) == SEND_TOO_MANY
        out = bytearray(APPEND_OVERHEAD_BYTES + 12 * 1500 + sum(len(e.data) for e in entries))
        n = reader.encode_append(out, 0, 2, 1, TERM, 0, TERM - 1, COMMIT, first, 1, 1500)
        stream.queue_frame(memoryview(out)[:n])
        stream.flush()
        expected = reference_append(entries)
        assert recv_exactly(b, len(expected)) == expected


def test_entries_overwritten_while_the_kernel_copies_them_leave_a_frame_no_decoder_completes() -> None:
    """The send blocks part way (the peer reads nothing and the socket buffer is small); the
    producer laps the ring meanwhile, so the rest of the frame is copied from newer records. The
    check after the send sees the lap: SEND_LAPPED, and the frame's last byte is never sent."""
    capacity = 1 << 16
    _, writer, reader = make_ring(capacity)
    first = writer.append(1, 1, b"sent whole")
    pos = writer.append(2, 1, bytes([0xAB]) * 30_000)
    with pair() as (a, b):
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        result: list[int] = []
        stream = AppendStream(a.fileno(), 5000)
        assert stream.queue_append(reader, 2, 1, TERM, 0, TERM - 1, COMMIT, first, 1, 1) > 0
        sender = threading.Thread(target=lambda: result.append(
            stream.queue_append(reader, 2, 1, TERM, 1, 1, COMMIT, pos, 2, 2)))
        sender.start()
        time.sleep(0.2)  # the sender is now waiting for room, part of the frame sent
        assert sender.is_alive()
        index = 3
        while writer.low <= pos + 30_000:  # lap the whole record with different bytes
            writer.append(index, 1, bytes([0xCD]) * 10_000)
            index += 1
        b.setblocking(False)
        received = bytearray()
        deadline = time.monotonic() + 10
        while sender.is_alive() and time.monotonic() < deadline:
            try:
                received += b.recv(1 << 16)
            except BlockingIOError:
                time.sleep(0.001)
        sender.join()
        received += read_available(b)
        assert result == [SEND_LAPPED]
        whole = reference_append([Entry(1, 1, b"sent whole")])
        assert received[:len(whole)] == whole
        torn = received[len(whole):]
        length, _crc = struct.unpack_from("<II", torn)
        assert len(torn) == 8 + length - 1  # all of the frame but its last byte
        assert bytes([0xCD]) in torn  # and it is torn: newer records' bytes were copied
        decoder = FrameDecoder(crc32c, 1 << 20)
        bodies = decoder.feed(bytes(received))
        assert [decode_message(body).entries[0].index for body in bodies] == [1]
        assert not decoder.at_boundary()  # the torn frame waits for a byte that never comes


def test_a_send_that_cannot_finish_times_out_and_a_gone_peer_is_an_error_not_a_signal() -> None:
    with pair() as (a, b):
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        stream = AppendStream(a.fileno(), 50)
        stream.queue_message(b"small")
        stream.flush()
        assert b.recv(64) == framed(b"small")
        with pytest.raises(OSError) as caught:
            stream.queue_message(bytes(1 << 22))  # nobody reads b: the wait for room runs out
        assert caught.value.errno == errno.ETIMEDOUT
        b.close()
        stream.reset(a.fileno())
        with pytest.raises(OSError):
            stream.queue_message(b"x" * 100_000)  # the peer is gone: EPIPE/ECONNRESET, no SIGPIPE
            stream.flush()
