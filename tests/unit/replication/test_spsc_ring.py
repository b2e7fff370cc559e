"""The shared-memory SPSC ring: records, wrap-around, full and oversize rings, corruption, the
frame drain the workers use, the sleep/wake handshake, and a two-process hammer."""

from __future__ import annotations

import errno
import mmap
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading

import pytest

from eventstream._crc32c import crc32c
from eventstream._spsc_ring import (
    HEADER_BYTES,
    MIN_CAPACITY,
    RecordTooLargeError,
    RingError,
    SpscRing,
)
from eventstream.transport.frames import FrameDecoder, iter_frames

RING_BYTES = 1 << 16


def make_ring(size: int = RING_BYTES) -> tuple[mmap.mmap, SpscRing, SpscRing]:
    mapping = mmap.mmap(-1, HEADER_BYTES + size)
    return mapping, SpscRing.create(mapping), SpscRing.attach(mapping)


def test_records_round_trip_in_order_across_many_wraps() -> None:
    _, producer, consumer = make_ring()
    assert producer.capacity == RING_BYTES and producer.max_payload == RING_BYTES // 2 - 8
    sent = 0
    for i in range(3000):
        payload = bytes([i % 251]) * (i * 37 % 5000)
        assert producer.write_parts(i % 7, [payload[:10], payload[10:]])
        sent += len(payload)
        kind, got = consumer.read()  # type: ignore[misc]
        assert (kind, got) == (i % 7, payload)
    assert sent > 20 * RING_BYTES  # the ring wrapped many times
    assert consumer.read() is None and consumer.used == 0


def test_a_full_ring_refuses_without_writing_and_accepts_again_after_a_read() -> None:
    _, producer, consumer = make_ring(MIN_CAPACITY)
    written = 0
    while producer.write(1, b"r%04d" % written + bytes(500)):
        written += 1
    assert 0 < written < MIN_CAPACITY // 500
    used = producer.used
    assert not producer.write(1, b"r9999" + bytes(500))  # refused, and nothing half-written
    assert producer.used == used
    released = producer.consumed
    assert consumer.read() == (1, b"r0000" + bytes(500))
    assert producer.consumed == released + 8 + 512  # head, payload padded to 8
    assert producer.write(1, b"after")
    got = [consumer.read() for _ in range(written)]
    assert got[-1] == (1, b"after") and got[0] == (1, b"r0001" + bytes(500))
    assert consumer.read() is None


def test_max_payload_fits_from_any_position_and_one_byte_more_is_refused() -> None:
    _, producer, consumer = make_ring(MIN_CAPACITY)
    big = b"m" * producer.max_payload
    for filler in range(0, producer.max_payload, 136):  # start the big record at many positions
        assert producer.write(2, bytes(filler))
        assert consumer.read() == (2, bytes(filler))
        assert producer.write(3, big)
        assert consumer.read() == (3, big)
    with pytest.raises(RecordTooLargeError, match="exceeds"):
        producer.write(1, big + b"!")


def test_drain_frames_emits_crc_checked_wire_frames_and_stops_at_a_frame_too_big_for_out() -> None:
    _, producer, consumer = make_ring()
    bodies = [b"", b"a", b"hello world" * 30, bytes(range(256)) * 20]
    for body in bodies:
        assert producer.write(1, body)
    out = bytearray(2048)
    nbytes, records = consumer.drain_frames(out)
    assert records == 3  # the fourth (5120 bytes) does not fit in 2048
    assert list(iter_frames(bytes(out[:nbytes]), crc32c, 1 << 20)) == bodies[:3]
    assert consumer.drain_frames(out) == (0, 0)
    assert consumer.next_frame_bytes() == 8 + len(bodies[3])
    big = bytearray(consumer.next_frame_bytes())
    nbytes, records = consumer.drain_frames(big)
    assert records == 1 and list(iter_frames(bytes(big[:nbytes]), crc32c, 1 << 20)) == bodies[3:]
    assert consumer.next_frame_bytes() == 0


def test_send_frames_writes_records_straight_to_a_socket_across_wraps() -> None:
    _, producer, consumer = make_ring(1 << 14)
    a, b = socket.socketpair()
    a.setblocking(False)
    got: list[bytes] = []
    count = 3000

    def read() -> None:
        decoder = FrameDecoder(crc32c, 1 << 20)
        while len(got) < count:
            data = b.recv(1 << 16)
            if not data:
                return
            got.extend(decoder.feed(data))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent = records = 0
    bodies = [bytes([i % 251]) * (i * 37 % 3000) for i in range(count)]
    try:
        for body in bodies:
            while not producer.write(1, body):
                n, k = consumer.send_frames(a.fileno(), 5000)
                sent, records = sent + n, records + k
        while True:
            n, k = consumer.send_frames(a.fileno(), 5000)
            if not k:
                break
            sent, records = sent + n, records + k
        reader.join(10)
    finally:
        a.close()
        b.close()
    assert records == count and sent == sum(8 + len(x) for x in bodies)
    assert got == bodies


def test_send_frames_that_cannot_finish_raise_and_leave_the_records_in_the_ring() -> None:
    _, producer, consumer = make_ring()
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        a.setblocking(False)
        big = bytes(producer.max_payload)
        assert producer.write(1, big)
        with pytest.raises(OSError) as caught:
            consumer.send_frames(a.fileno(), 50)  # nobody reads b: the wait for room runs out
        assert caught.value.errno == errno.ETIMEDOUT
        assert consumer.next_frame_bytes() == 8 + len(big)  # still there, for the caller to drop
        b.close()
        with pytest.raises(OSError):
            consumer.send_frames(a.fileno(), 50)  # the peer is gone: EPIPE/ECONNRESET, no SIGPIPE
    finally:
        a.close()
        b.close()


def test_sleep_handshake_asks_for_a_wake_only_when_the_consumer_announced_sleep() -> None:
    _, producer, consumer = make_ring()
    assert producer.write(1, b"a")
    assert not producer.wake_needed()  # nobody sleeps
    assert not consumer.prepare_wait()  # a record is there: do not sleep
    assert not producer.wake_needed()  # and the announcement was withdrawn
    consumer.read()
    assert consumer.prepare_wait()  # empty: sleep
    assert producer.write(1, b"b")
    assert producer.wake_needed()
    assert not producer.wake_needed()  # one wake per sleep


def test_attach_refuses_a_mapping_that_is_not_a_ring_or_is_too_small() -> None:
    with pytest.raises(RingError, match="not a usable ring"):
        SpscRing.attach(mmap.mmap(-1, HEADER_BYTES + RING_BYTES))
    with pytest.raises(RingError, match="not a usable ring"):
        SpscRing.create(mmap.mmap(-1, HEADER_BYTES + MIN_CAPACITY - 1))
    mapping = mmap.mmap(-1, HEADER_BYTES + RING_BYTES)
    SpscRing.create(mapping)
    struct.pack_into("<Q", mapping, 8, RING_BYTES * 2)  # capacity beyond the mapping
    with pytest.raises(RingError):
        SpscRing.attach(mapping)


@pytest.mark.parametrize(
    ("offset", "value"),
    [
        (64, RING_BYTES * 4),  # tail more than a capacity ahead of head
        (64, 12),  # tail not on a record boundary
        (HEADER_BYTES, RING_BYTES),  # record length beyond max_payload
        (HEADER_BYTES, 100),  # record length beyond what was published
    ],
)
def test_corrupt_indexes_or_lengths_are_reported_never_read(offset: int, value: int) -> None:
    mapping, producer, consumer = make_ring()
    assert producer.write(1, b"12345678")
    struct.pack_into("<I" if offset == HEADER_BYTES else "<Q", mapping, offset, value)
    with pytest.raises(RingError, match="corrupt"):
        consumer.read()
    with pytest.raises(RingError, match="corrupt"):
        consumer.drain_frames(bytearray(1 << 16))


def test_a_closed_end_refuses_use() -> None:
    mapping, producer, consumer = make_ring()
    producer.close()
    consumer.close()
    with pytest.raises(RingError, match="closed"):
        producer.write(1, b"x")
    with pytest.raises(RingError, match="closed"):
        consumer.read()
    mapping.close()  # the view was released, so the mapping can go


_CONSUMER = textwrap.dedent(
    """
    import mmap, os, select, struct, sys
    from eventstream._crc32c import crc32c
    from eventstream._spsc_ring import SpscRing
    from eventstream.transport.frames import FrameDecoder, iter_frames

    fd, size, bell, count, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    ring = SpscRing.attach(mmap.mmap(fd, size))
    out = bytearray(1 << 15)
    expect = bad = stalls = sleeps = 0

    def check(body):
        global expect, bad
        seq, = struct.unpack_from("<Q", body)
        if seq != expect or body[8:] != bytes([seq % 251]) * (len(body) - 8) or len(body) - 8 != seq * 7919 % 3000:
            bad += 1
        expect = seq + 1

    while expect < count:
        if mode == "read":
            record = ring.read()
            got = [record[1]] if record else []
        else:
            n, k = ring.drain_frames(out)
            got = list(iter_frames(bytes(out[:n]), crc32c, 1 << 20)) if k else []
        for body in got:
            check(body)
        if not got and ring.prepare_wait():
            sleeps += 1
            ready, _, _ = select.select([bell], [], [], 5.0)
            if not ready:
                stalls += 1  # a lost wake-up: the producer wrote but never rang
            else:
                os.read(bell, 4096)
    print(expect, bad, stalls, sleeps)
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["read", "frames"])
def test_two_processes_hammer_one_ring_without_loss_reorder_damage_or_lost_wakeups(mode: str) -> None:
    count = 300_000
    size = HEADER_BYTES + (1 << 15)  # small, so the producer keeps finding it full and wrapped
    fd = os.memfd_create("ring-hammer")
    os.ftruncate(fd, size)
    bell_r, bell_w = os.pipe()
    producer = SpscRing.create(mmap.mmap(fd, size))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CONSUMER, str(fd), str(size), str(bell_r), str(count), mode],
        pass_fds=(fd, bell_r), stdout=subprocess.PIPE, text=True,
    )
    full = 0
    try:
        for seq in range(count):
            body = struct.pack("<Q", seq) + bytes([seq % 251]) * (seq * 7919 % 3000)
            while not producer.write(1, body):
                full += 1
                if producer.wake_needed():
                    os.write(bell_w, b"\x01")
                os.sched_yield()
            # Ring the bell only every few records, as the pipeline does once per flush.
            if seq % 16 == 15 and producer.wake_needed():
                os.write(bell_w, b"\x01")
        if producer.wake_needed():
            os.write(bell_w, b"\x01")
        stdout, _ = proc.communicate(timeout=100)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(fd)
        os.close(bell_r)
        os.close(bell_w)
    received, bad, stalls, sleeps = map(int, stdout.split())
    assert (received, bad, stalls) == (count, 0, 0)
    assert full > 0  # the producer did run into a full ring, so the reuse of space was exercised
