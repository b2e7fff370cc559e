"""The shared entry ring (csrc/entry_ring.h): AppendEntries frames built from it are byte-equal to
the Python encoder's, across wraps; overwritten or misnamed records are reported, never sent;
nothing in a damaged mapping is read out of bounds; the node's placement writes each entry
once; and a two-process hammer where the reader keeps falling behind never sees a torn copy."""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstream.raft.messages import Entry, Message, MessageType
from eventstream.replication._spsc_ring import (
    APPEND_OVERHEAD_BYTES,
    ENTRY_HEADER_BYTES,
    ENTRY_MIN_CAPACITY,
    GATHER_MISMATCH,
    GATHER_STALE,
    HEADER_BYTES,
    EntryRing,
    RecordTooLargeError,
    RingError,
    SpscRing,
)
from eventstream.replication.shared_entries import SharedEntries
from eventstream.storage._crc32c import crc32c
from eventstream.transport.peer_codec import encode_message


def make_ring(capacity: int = 1 << 16) -> tuple[mmap.mmap, EntryRing, EntryRing]:
    mapping = mmap.mmap(-1, ENTRY_HEADER_BYTES + capacity)
    return mapping, EntryRing.create(mapping), EntryRing.attach(mapping)


def frame_of(reader: EntryRing, pos: int, lo: int, hi: int, term: int = 7, commit: int = 3) -> bytes | int:
    size = APPEND_OVERHEAD_BYTES + 12 * (hi - lo + 1) + reader.capacity
    out = bytearray(size)
    n = reader.encode_append(out, 0, 2, 1, term, lo - 1, term - 1, commit, pos, lo, hi)
    return n if n < 0 else bytes(out[:n])


def reference_frame(entries: list[Entry], term: int = 7, commit: int = 3) -> bytes:
    body = encode_message(Message(MessageType.APPEND, 2, 1, term, index=entries[0].index - 1, log_term=term - 1,
                                  commit=commit, entries=entries))
    return struct.pack("<II", len(body), crc32c(body)) + body


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=40), st.integers(0, 5000), st.data())
def test_append_frames_equal_the_python_encoders_from_any_ring_position(payloads: list[bytes], skew: int,
                                                                        data: st.DataObject) -> None:
    _, writer, reader = make_ring(1 << 15)
    writer.append(1, 1, bytes(skew))  # start the entries at an arbitrary position
    entries = [Entry(10 + k, 6 + k % 2, p) for k, p in enumerate(payloads)]
    positions = []
    for e in entries:
        positions.append(writer.append(e.index, e.term, e.data))
    lo = data.draw(st.integers(0, len(entries) - 1))
    hi = data.draw(st.integers(lo, len(entries) - 1))
    got = frame_of(reader, positions[lo], entries[lo].index, entries[hi].index)
    if positions[lo] < writer.low:
        assert got == GATHER_STALE
    else:
        assert got == reference_frame(entries[lo:hi + 1])


def test_many_wraps_keep_every_recent_entry_exact_and_report_overwritten_ones_stale() -> None:
    _, writer, reader = make_ring(ENTRY_MIN_CAPACITY)
    positions: dict[int, int] = {}
    for index in range(1, 3000):
        payload = bytes([index % 251]) * (index * 37 % 900)
        positions[index] = writer.append(index, 2, payload)
        assert frame_of(reader, positions[index], index, index, term=2) == reference_frame([Entry(index, 2, payload)], term=2)
        if index > 20:
            # Far behind: gone. A few back: intact only if the ring still holds them.
            old = index - 20
            assert frame_of(reader, positions[old], old, old, term=2) == GATHER_STALE
    assert writer.tail > 50 * writer.capacity


def test_a_position_that_does_not_hold_the_entry_named_is_a_mismatch_never_a_frame() -> None:
    _, writer, reader = make_ring()
    p1 = writer.append(1, 1, b"one")
    p2 = writer.append(2, 1, b"two")
    assert frame_of(reader, p2, 1, 1) == GATHER_MISMATCH  # entry 2 sits there
    assert frame_of(reader, p1, 1, 3) == GATHER_MISMATCH  # entry 3 was never published
    assert frame_of(reader, p1 + 4, 1, 1) == GATHER_MISMATCH  # not a record boundary
    assert frame_of(reader, 1 << 40, 1, 1) == GATHER_MISMATCH  # beyond anything written
    assert frame_of(reader, p1, 2, 1) == GATHER_MISMATCH  # empty range
    assert isinstance(frame_of(reader, p1, 1, 2), bytes)


@pytest.mark.parametrize("offset,value", [(16, 0xFFFFFFFF), (16, 1 << 30), (0, 0xFFFFFFFFFFFFFFFF), (8, 5)])
def test_damaged_records_are_reported_never_read_out_of_bounds(offset: int, value: int) -> None:
    mapping, writer, reader = make_ring(ENTRY_MIN_CAPACITY)
    pos = writer.append(1, 1, b"x" * 100)
    writer.append(2, 1, b"y")
    at = ENTRY_HEADER_BYTES + pos + offset
    mapping[at:at + (8 if offset != 16 else 4)] = value.to_bytes(8 if offset != 16 else 4, "little")
    got = frame_of(reader, pos, 1, 2)
    if offset == 8:  # the term is not checked (it goes on the wire as it is): only the bytes
        assert isinstance(got, bytes)
    else:
        assert got == GATHER_MISMATCH


def test_limits_and_bad_mappings_are_refused_with_a_clear_error() -> None:
    _, writer, reader = make_ring(ENTRY_MIN_CAPACITY)
    with pytest.raises(RecordTooLargeError, match="exceeds"):
        writer.append(1, 1, bytes(writer.max_payload + 1))
    pos = writer.append(1, 1, bytes(writer.max_payload))
    with pytest.raises(ValueError, match="no room"):
        reader.encode_append(bytearray(APPEND_OVERHEAD_BYTES + 12), 0, 2, 1, 1, 0, 0, 0, pos, 1, 1)
    with pytest.raises(ValueError, match="no room"):
        reader.encode_append(bytearray(10), 0, 2, 1, 1, 0, 0, 0, pos, 1, 1)
    with pytest.raises(RingError, match="not a usable entry ring"):
        EntryRing.attach(mmap.mmap(-1, ENTRY_HEADER_BYTES + ENTRY_MIN_CAPACITY))  # never formatted
    with pytest.raises(RingError, match="not a usable entry ring"):
        EntryRing.create(bytearray(100))
    reader.close()
    with pytest.raises(RingError, match="closed"):
        reader.encode_append(bytearray(1000), 0, 2, 1, 1, 0, 0, 0, pos, 1, 1)


def test_placement_writes_each_entry_once_restarts_at_gaps_and_declines_what_it_cannot_serve() -> None:
    shared = SharedEntries(ENTRY_MIN_CAPACITY * 4)
    try:
        entries = [Entry(i, 3, bytes([i]) * 100) for i in range(5, 12)]
        first = shared.place(entries[:4])
        again = shared.place(entries[2:6])  # two already there, two new
        assert first is not None and again is not None
        assert shared.entries_written == 6 and shared.bytes_written == 600
        # Records of 100-byte entries take 128 bytes (24-byte head, padded to 8).
        assert first.data_bytes == 400 and first.end == first.pos + 4 * 128
        assert again.pos == first.pos + 2 * 128 and again.end == first.pos + 6 * 128
        assert frame_of(shared.ring, again.pos, 7, 10, term=3) == reference_frame(entries[2:6], term=3)
        assert shared.place([Entry(4, 3, b"older than the ring's first")]) is None
        assert shared.place([Entry(2, 3, b"x" * shared.ring.max_payload + b"!")]) is None  # too large
        # A gap (here: after the refusal cleared the ring) starts the ring's index over.
        gap = shared.place([Entry(50, 3, b"fifty")])
        assert gap is not None and shared.last == 50
        # Once the ring has moved on by more than half, an order would likely go stale: declined.
        for i in range(51, 200):
            assert shared.place([Entry(i, 3, bytes(200))]) is not None
        assert shared.place([Entry(150, 3, bytes(200))]) is None
        assert shared.place([Entry(199, 3, bytes(200))]) is not None
    finally:
        shared.close()


_READER = textwrap.dedent(
    """
    import mmap, os, select, struct, sys
    from eventstream.storage._crc32c import crc32c
    from eventstream.replication._spsc_ring import EntryRing, SpscRing, APPEND_OVERHEAD_BYTES

    efd, esize, cfd, csize, bell, count = map(int, sys.argv[1:7])
    entries = EntryRing.attach(mmap.mmap(efd, esize))
    control = SpscRing.attach(mmap.mmap(cfd, csize))
    out = bytearray(1 << 16)
    orders = ok = stale = bad = 0
    while orders < count:
        record = control.read()
        if record is None:
            if control.prepare_wait():
                select.select([bell], [], [], 5.0)
                try:
                    os.read(bell, 4096)
                except BlockingIOError:
                    pass
            continue
        orders += 1
        pos, index = struct.unpack("<QQ", record[1])
        n = entries.encode_append(out, 0, 2, 1, 9, index - 1, 9, 0, pos, index, index)
        if n < 0:
            stale += 1
            continue
        body = bytes(out[8:n])
        length, crc = struct.unpack_from("<II", out)
        payload = body[APPEND_OVERHEAD_BYTES - 8 + 12:]
        expect = struct.pack("<Q", index) * (1 + index % 60)
        if length != len(body) or crc != crc32c(body) or payload != expect:
            bad += 1
        else:
            ok += 1
    print(orders, ok, stale, bad)
    """
)


def ring(bell: int) -> None:
    with contextlib.suppress(BlockingIOError):  # a full pipe already wakes the reader
        os.write(bell, b"\x01")


@pytest.mark.timeout(120)
def test_two_processes_hammer_the_entry_ring_and_a_lapped_reader_never_sends_a_torn_entry() -> None:
    count = 100_000
    esize = ENTRY_HEADER_BYTES + ENTRY_MIN_CAPACITY * 4  # small, so the writer laps the reader
    csize = HEADER_BYTES + (1 << 22)
    efd = os.memfd_create("entry-hammer")
    cfd = os.memfd_create("order-hammer")
    os.ftruncate(efd, esize)
    os.ftruncate(cfd, csize)
    bell_r, bell_w = os.pipe()
    os.set_blocking(bell_w, False)
    entries = EntryRing.create(mmap.mmap(efd, esize))
    control = SpscRing.create(mmap.mmap(cfd, csize))
    proc = subprocess.Popen(
        [sys.executable, "-c", _READER, str(efd), str(esize), str(cfd), str(csize), str(bell_r), str(count)],
        pass_fds=(efd, cfd, bell_r), stdout=subprocess.PIPE, text=True,
    )
    try:
        for index in range(1, count + 1):
            # Alternate: stay a few orders ahead of the reader (its copies must all be good),
            # then run free (it gets lapped, and must notice).
            if (index // 5000) % 2 == 0:
                while control.used > 20 * 24:
                    if control.wake_needed():
                        ring(bell_w)
                    os.sched_yield()
            pos = entries.append(index, 9, struct.pack("<Q", index) * (1 + index % 60))
            while not control.write(1, struct.pack("<QQ", pos, index)):
                os.sched_yield()
            if index % 16 == 0 and control.wake_needed():
                ring(bell_w)
        if control.wake_needed():
            ring(bell_w)
        stdout, _ = proc.communicate(timeout=100)
    finally:
        if proc.poll() is None:
            proc.kill()
        for fd in (efd, cfd, bell_r, bell_w):
            os.close(fd)
    orders, ok, stale, bad = map(int, stdout.split())
    assert (orders, bad) == (count, 0)
    print(f"hammer: {ok} copies good, {stale} refused as lapped")
    assert ok > count // 10 and stale > 0  # both paths ran: copies made in time, and lapped ones refused
