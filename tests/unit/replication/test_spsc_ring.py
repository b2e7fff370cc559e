"""The shared-memory SPSC ring: records, wrap-around, full and oversize rings, corruption, the
sleep/wake handshake, a two-process hammer."""

from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys
import textwrap

import pytest

from eventstream.replication._spsc_ring import (
    HEADER_BYTES,
    MIN_CAPACITY,
    RecordTooLargeError,
    RingError,
    SpscRing,
)

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
        consumer.read()  # still corrupt: nothing was consumed on the way


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
    from eventstream.replication._spsc_ring import SpscRing

    fd, size, bell, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ring = SpscRing.attach(mmap.mmap(fd, size))
    expect = bad = stalls = sleeps = 0

    def check(body):
        global expect, bad
        seq, = struct.unpack_from("<Q", body)
        if seq != expect or body[8:] != bytes([seq % 251]) * (len(body) - 8) or len(body) - 8 != seq * 7919 % 3000:
            bad += 1
        expect = seq + 1

    while expect < count:
        record = ring.read()
        got = [record[1]] if record else []
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
def test_two_processes_hammer_one_ring_without_loss_reorder_damage_or_lost_wakeups() -> None:
    count = 300_000
    size = HEADER_BYTES + (1 << 15)  # small, so the producer keeps finding it full and wrapped
    fd = os.memfd_create("ring-hammer")
    os.ftruncate(fd, size)
    bell_r, bell_w = os.pipe()
    producer = SpscRing.create(mmap.mmap(fd, size))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CONSUMER, str(fd), str(size), str(bell_r), str(count)],
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


_ECHO_CONSUMER = textwrap.dedent(
    """
    import mmap, os, select, sys
    from eventstream.replication._spsc_ring import SpscRing

    fd, size, bell, echo, count = (int(a) for a in sys.argv[1:6])
    ring = SpscRing.attach(mmap.mmap(fd, size))
    got = stalls = sleeps = withdrawn = 0
    while got < count:
        record = ring.read()
        if record is not None:
            got += 1
            os.write(echo, b"\\x01")  # the producer publishes the next record only after this
            continue
        if not ring.prepare_wait():
            withdrawn += 1  # the record landed between the empty read and the announcement
            continue
        sleeps += 1
        ready, _, _ = select.select([bell], [], [], 2.0)
        if not ready:
            stalls += 1  # asleep on a published record: a lost wake-up
        else:
            os.read(bell, 4096)
    print(got, stalls, sleeps, withdrawn)
    """
)


@pytest.mark.timeout(120)
def test_a_consumer_asleep_on_an_empty_ring_is_woken_by_every_single_publish() -> None:
    """One record at a time, each published only after the consumer echoed the one before, so
    every publish races the consumer going back to sleep: the window between "ring empty" and
    "asleep" that an eventcount must close (csrc/spsc_ring.h). A lost wake-up shows as a 2 s
    stall; none may happen, and the consumer must really have slept on many of them."""
    count = 20_000
    size = HEADER_BYTES + MIN_CAPACITY
    fd = os.memfd_create("ring-wake")
    os.ftruncate(fd, size)
    bell_r, bell_w = os.pipe()
    echo_r, echo_w = os.pipe()
    producer = SpscRing.create(mmap.mmap(fd, size))
    proc = subprocess.Popen(
        [sys.executable, "-c", _ECHO_CONSUMER, str(fd), str(size), str(bell_r), str(echo_w), str(count)],
        pass_fds=(fd, bell_r, echo_w), stdout=subprocess.PIPE, text=True,
    )
    rings = 0
    try:
        for seq in range(count):
            assert producer.write(1, struct.pack("<Q", seq))
            if producer.wake_needed():
                rings += 1
                os.write(bell_w, b"\x01")
            assert os.read(echo_r, 1) == b"\x01"
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        for f in (fd, bell_r, bell_w, echo_r, echo_w):
            os.close(f)
    got, stalls, sleeps, withdrawn = map(int, stdout.split())
    assert (got, stalls) == (count, 0)
    # Thousands of records found the consumer asleep (or announcing sleep): the race was run.
    # How many depends on the scheduler (about 10,000 of 20,000 on a busy two-core machine,
    # nearly all on a quiet one), so the floor only proves the path was taken often.
    assert sleeps + withdrawn > count // 10
    assert rings >= sleeps
