"""AppendIntake (csrc/_append_intake.pyx): requests in per read, entries out, answers per connection.

Its entries are checked against the Python reference (eventstream/batcher.py), its frames
against client_protocol.py's encoders and frames.py's decoder.
"""

from __future__ import annotations

import os
import random
import socket
from array import array

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstream.batcher import PendingAppend, ProposalBatcher
from eventstream.storage import crc32c
from eventstream.storage.codec import encode_batch
from eventstream.transport._append_intake import (
    REFUSED_INVALID,
    REFUSED_NOT_ACCEPTING,
    REFUSED_OVERLOADED,
    REFUSED_QUEUE_DENIED,
    AppendIntake,
    EntryWaiters,
)
from eventstream.transport.client_protocol import (
    Op,
    Status,
    decode_append_ok,
    decode_error,
    decode_response,
    encode_append_ok,
    encode_error,
    encode_request,
    encode_response,
)
from eventstream.transport.frames import HEADER, FrameError, iter_frames

SEEN_US = 1_790_000_000_123_456  # the leader's clock when it takes an entry


def take_entry(it: AppendIntake, batch_size: int, bytes_max: int) -> tuple[bytes, EntryWaiters]:
    """take() where the test has queued requests, so an entry is always built."""
    entry = it.take(batch_size, bytes_max, SEEN_US)
    assert entry is not None
    return entry

BOUNDS = (0.001, 0.01, 0.1)
DUPLICATE = 2
REFUSED = bytes({3: 1, 4: 2}.get(s, 0) for s in range(256))  # two refusal kinds, 4 the graver


def intake(in_flight_max: int = 100, pending_bytes_max: int = 1 << 30, frame_bytes_max: int = 1 << 20) -> AppendIntake:
    return AppendIntake(frame_bytes_max, in_flight_max, pending_bytes_max, BOUNDS, 4)


def batch(tag: str, n: int, queue: int | None = None) -> bytes:
    return encode_batch([(f"{tag}-{i}".encode(), b"k", queue, 1000 + i, f"{tag} payload {i}".encode()) for i in range(n)])


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body), crc32c(body)) + body


def append(request_id: int, n: int = 1, tag: str = "e", queue: int | None = None) -> bytes:
    return frame(encode_request(Op.APPEND, request_id, batch(tag, n, queue)))


def answers(data: bytes) -> list:
    return [decode_response(body) for body in iter_frames(data, crc32c, 1 << 20)]


def columns(n: int, statuses: bytes | None = None) -> tuple[bytes, array, array]:
    return (statuses or bytes([1]) * n, array("I", range(100, 100 + n)), array("Q", range(5000, 5000 + n)))


def test_appends_split_across_reads_are_queued_whole_in_arrival_order() -> None:
    it = intake()
    slot, _ = it.open_slot(-1)
    stream = append(1, 2, "a") + append(2, 3, "b") + append(3, 1, "c")
    for cut in (5, 11, 40, len(stream) - 3, len(stream)):
        assert it.feed(slot, stream[:cut], 1.0, True) is None
        stream = stream[cut:]
        if not stream:
            break
    assert len(it) == 3 and it.pending_events == 6 and it.in_flight(slot) == 3
    assert it.buffered_bytes(slot) == 0 and it.refusals == []
    data, waiters = take_entry(it, 100, 1 << 20)
    assert waiters.request_ids() == [1, 2, 3] and waiters.first_events() == [0, 2, 5] and waiters.event_count == 6
    assert len(it) == 0 and it.pending_bytes == 0 and it.pending_events == 0


def test_another_request_is_handed_back_and_the_bytes_after_it_wait() -> None:
    it = intake()
    slot, _ = it.open_slot(-1)
    status = encode_request(Op.STATUS, 2)
    assert it.feed(slot, append(1) + frame(status) + append(3) + b"\x05\x00", 1.0, True) == status
    assert take_entry(it, 100, 1 << 20)[1].request_ids() == [1]  # the APPEND before it was queued first
    assert it.buffered_bytes(slot) > 0
    assert it.feed(slot, b"", 1.0, True) is None
    assert take_entry(it, 100, 1 << 20)[1].request_ids() == [3]
    assert it.buffered_bytes(slot) == 2  # the start of the next frame


@pytest.mark.parametrize("damage", ["crc", "length", "truncated"])
def test_a_bad_frame_takes_nothing_of_its_read(damage: str) -> None:
    it = intake(frame_bytes_max=1000)
    slot, _ = it.open_slot(-1)
    good = append(1)
    if damage == "crc":
        bad = bytearray(append(2))
        bad[-1] ^= 0xFF
        with pytest.raises(FrameError, match="CRC mismatch"):
            it.feed(slot, good + bytes(bad), 1.0, True)
    elif damage == "length":
        with pytest.raises(FrameError, match="length prefix 4294967295 exceeds the limit of 1000"):
            it.feed(slot, good + b"\xff\xff\xff\xff\x00\x00\x00\x00", 1.0, True)
    else:
        # A truncated frame is only incomplete: kept, and nothing after the good one is taken.
        assert it.feed(slot, good + append(2)[:-4], 1.0, True) is None
        assert len(it) == 1 and it.buffered_bytes(slot) > 0
        return
    assert len(it) == 0 and it.in_flight(slot) == 0


def test_requests_shorter_than_a_header_and_past_the_in_flight_limit_go_to_python() -> None:
    it = intake(in_flight_max=2)
    slot, _ = it.open_slot(-1)
    assert it.feed(slot, frame(b"\x01\x02"), 1.0, True) == b"\x01\x02"
    assert it.feed(slot, b"", 1.0, True) is None
    third = encode_request(Op.APPEND, 3, batch("c", 1))
    assert it.feed(slot, append(1) + append(2) + frame(third), 1.0, True) == third
    assert it.in_flight(slot) == 2
    assert it.count_request(slot) == 3  # Python counts the one it serves


def test_refusals_name_their_reason_and_queue_nothing() -> None:
    it = intake(pending_bytes_max=0)
    slot, _ = it.open_slot(-1)
    bad = encode_request(Op.APPEND, 1, b"\x01\x00garbage!!!")
    stream = frame(bad) + append(2, queue=9) + frame(encode_request(Op.APPEND, 3, encode_batch([])))
    assert it.feed(slot, stream, 1.0, True) is None
    assert it.feed(slot, append(4), 1.0, False) is None
    assert it.feed(slot, append(5) + append(6), 1.0, True) is None  # 5 queued, 6 is past the byte limit
    refusals = it.take_refusals()
    assert [(r[1], r[2]) for r in refusals] == [
        (1, REFUSED_INVALID), (2, REFUSED_INVALID), (3, REFUSED_INVALID), (4, REFUSED_NOT_ACCEPTING),
        (6, REFUSED_OVERLOADED)]
    assert "bad append: batch at offset" in (refusals[0][3] or "")
    assert refusals[1][3] == "bad append: explicit queue 9 is out of range: queues are 0..3"
    assert refusals[2][3] == "bad append: an append must carry at least one event"
    assert it.refusals == [] and len(it) == 1 and it.in_flight(slot) == 6


def test_the_entry_is_the_python_reference_s_entry() -> None:
    it = intake()
    ref = ProposalBatcher(batch_size=5, batch_bytes_max=1 << 20)
    slots = [it.open_slot(-1)[0] for _ in range(3)]
    for rid, n in enumerate((3, 1, 6, 2, 2), start=1):
        body = encode_request(Op.APPEND, rid, batch(f"r{rid}", n))
        it.feed(slots[rid % 3], frame(body), float(rid), True)
        ref.add(body, PendingAppend(None, rid, n, float(rid)), 9)
    while (built := ref.take(SEEN_US)) is not None:
        data, waiters = take_entry(it, 5, 1 << 20)
        assert data == built.data
        assert waiters.request_ids() == [w.request_id for w in built.waiters]
        assert waiters.first_events() == [w.first_event for w in built.waiters]
        assert waiters.first_arrival == built.waiters[0].received_at
    assert it.take(5, 1 << 20, SEEN_US) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=40),
       st.integers(min_value=1, max_value=12), st.integers(min_value=60, max_value=600))
def test_entries_match_the_reference_for_any_sizes_and_limits(sizes: list[int], batch_size: int, bytes_max: int) -> None:
    it = intake()
    ref = ProposalBatcher(batch_size, bytes_max)
    slot, _ = it.open_slot(-1)
    taken: list[int] = []
    for rid, n in enumerate(sizes):
        body = encode_request(Op.APPEND, rid, batch(str(rid), n))
        it.feed(slot, frame(body), 0.0, True)
        ref.add(body, PendingAppend(None, rid, n, 0.0), 9)
        if rid % 7 == 3:  # take while others wait, as the node does between reads
            built = ref.take(SEEN_US)
            assert built is not None
            data, waiters = take_entry(it, batch_size, bytes_max)
            assert data == built.data and waiters.request_ids() == [w.request_id for w in built.waiters]
            taken += waiters.request_ids()
    while (built := ref.take(SEEN_US)) is not None:
        data, waiters = take_entry(it, batch_size, bytes_max)
        assert data == built.data and waiters.first_events() == [w.first_event for w in built.waiters]
        taken += waiters.request_ids()
    assert taken == list(range(len(sizes))) and len(it) == 0 and it.pending_bytes == 0


def test_answers_are_the_python_encoder_s_frames_and_skip_closed_connections() -> None:
    it = intake()
    a, gen_a = it.open_slot(-1)
    b, _ = it.open_slot(-1)
    it.feed(a, append(10, 2), 1.0, True)
    it.feed(b, append(20, 1), 1.0, True)
    it.feed(a, append(11, 2), 1.0, True)
    _, waiters = take_entry(it, 100, 1 << 20)
    statuses = bytes([1, DUPLICATE, 1, 3, 1])  # request 11's second event was refused
    st_, queues, offsets = columns(5, statuses)
    it.close_slot(b)
    c, gen_c = it.open_slot(-1)
    assert c == b and gen_c != 0  # the slot is reused with a new generation
    refused, duplicates = it.answer(waiters, 77, st_, queues, offsets, REFUSED, DUPLICATE, 1.0005)
    assert refused == [(a, gen_a, 11, REFUSED[3])] and duplicates == 1
    assert it.dirty_count == 1
    out = {slot_: data for slot_, data, _ in it.flush()}
    assert set(out) == {a}  # nothing for the closed connection, nor the one that took its slot
    expected = encode_response(Status.OK, 10, encode_append_ok(77, queues[0:2], offsets[0:2], b"\x00\x01"))
    assert out[a] == frame(expected)
    assert decode_append_ok(answers(out[a])[0].body).index == 77
    assert it.in_flight(a) == 1 and it.in_flight(c) == 0
    # Both answered requests count, the gone connection's too (it was answered; no one listened).
    assert it.latency_counts() == [2, 0, 0, 0] and it.latency_sum == pytest.approx(0.001)


def test_a_refused_waiter_carries_the_gravest_flag_of_its_events() -> None:
    it = intake()
    a, gen_a = it.open_slot(-1)
    it.feed(a, append(1, 3) + append(2, 2), 1.0, True)
    _, waiters = take_entry(it, 100, 1 << 20)
    st_, queues, offsets = columns(5, bytes([3, 4, 0, 0, 3]))
    refused, _ = it.answer(waiters, 9, st_, queues, offsets, REFUSED, DUPLICATE, 1.0)
    assert refused == [(a, gen_a, 1, 2), (a, gen_a, 2, 1)]


def test_answer_refuses_waiters_outside_the_result_columns() -> None:
    it = intake()
    slot, _ = it.open_slot(-1)
    it.feed(slot, append(1, 3), 0.0, True)
    _, waiters = take_entry(it, 100, 1 << 20)
    with pytest.raises(ValueError, match="outside the entry"):
        it.answer(waiters, 1, *columns(2), REFUSED, DUPLICATE, 0.0)
    with pytest.raises(ValueError, match="differ in length"):
        it.answer(waiters, 1, bytes(3), array("I", [0]), array("Q", [0, 0, 0]), REFUSED, DUPLICATE, 0.0)
    with pytest.raises(ValueError, match="256 entries"):
        it.answer(waiters, 1, *columns(3), b"\x00", DUPLICATE, 0.0)
    assert it.dirty_count == 0 and it.in_flight(slot) == 1


def test_fail_and_reply_frame_like_the_python_encoders_in_queue_order() -> None:
    it = intake()
    slot, gen = it.open_slot(-1)
    it.feed(slot, append(1) + append(2), 0.0, True)
    assert it.reply(slot, gen, encode_response(Status.OK, 99, b"{}"))
    assert it.fail(it.drain(), Status.NOT_LEADER, b"ask node 2", 2) == 2
    assert not it.reply(slot, gen + 1, b"stale")
    out = answers({s_: data for s_, data, _ in it.flush()}[slot])
    assert [r.request_id for r in out] == [99, 1, 2]
    assert out[1].status == Status.NOT_LEADER and decode_error(out[1].body).leader_id == 2
    assert bytes(iter_frames(frame(encode_error(Status.NOT_LEADER, 2, "ask node 2", 2)), crc32c, 100).__next__()) \
        == encode_error(Status.NOT_LEADER, 2, "ask node 2", 2)
    assert it.in_flight(slot) == -1  # the reply answered a request Python never counted
    with pytest.raises(FrameError):
        it.reply(slot, gen, bytes(2 << 20))


def test_closed_or_unknown_slots_are_refused_clearly() -> None:
    it = intake()
    slot, _ = it.open_slot(-1)
    it.close_slot(slot)
    for call in (lambda: it.feed(slot, b"", 0.0, True), lambda: it.in_flight(slot), lambda: it.close_slot(slot),
                 lambda: it.feed(7, b"", 0.0, True), lambda: it.take_output(-1)):
        with pytest.raises(ValueError, match="not an open connection"):
            call()
    with pytest.raises(ValueError, match="strictly increasing"):
        AppendIntake(100, 1, 1, (0.1, 0.01))


def test_flush_writes_each_socket_once_and_hands_back_what_it_did_not_take() -> None:
    it = intake()
    left, right = socket.socketpair()
    small_left, small_right = socket.socketpair()
    try:
        for s in (left, small_left, small_right):
            s.setblocking(False)
        small_left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        slot, gen = it.open_slot(left.fileno())
        small, small_gen = it.open_slot(small_left.fileno())
        assert it.reply(slot, gen, b"hello")
        big = random.Random(1).randbytes(900_000)
        assert it.reply(small, small_gen, big)
        rest = it.flush()
        assert right.recv(100) == frame(b"hello")
        assert [s for s, _, records in rest if not records] == [small]
        written = b""
        while True:
            try:
                written += small_right.recv(1 << 20)
            except BlockingIOError:
                break
        assert written + rest[0][1] == frame(big)  # in order, nothing lost or repeated
        it.set_backlogged(slot, True)
        assert it.reply(slot, gen, b"later")
        assert it.flush() == [(slot, frame(b"later"), False)]  # a backlogged connection writes through Python
    finally:
        for s in (left, right, small_left, small_right):
            s.close()


def test_a_peer_that_is_gone_loses_its_answers_without_an_error() -> None:
    it = intake()
    left, right = socket.socketpair()
    slot, gen = it.open_slot(left.fileno())
    right.close()
    assert it.reply(slot, gen, b"x")
    assert it.flush() == []
    left.close()


def test_a_slot_writes_through_its_own_descriptor_until_it_is_closed() -> None:
    it = intake()
    left, right = socket.socketpair()
    right.settimeout(5)
    slot, gen = it.open_slot(left.fileno())
    number = left.fileno()
    left.close()  # the transport closed its descriptor before the slot was closed
    with open(os.devnull, "rb") as reused:
        assert reused.fileno() == number  # the kernel hands the number out again at once
        assert it.reply(slot, gen, b"still here")
        assert it.flush() == []
    assert right.recv(100) == frame(b"still here")
    it.close_slot(slot)
    assert right.recv(100) == b""  # the socket closed with the slot's own descriptor
    right.close()


def test_a_slot_limited_to_some_queues_takes_appends_bound_there_only() -> None:
    """The queue an event goes to: its explicit one, else mmh3(key) mod queue_count, as the
    state machine routes it; a request with one event elsewhere is refused whole."""
    it = intake()
    slot, _ = it.open_slot(-1)
    it.set_append_queues(slot, [2, 0])
    keys = [f"key-{i}".encode() for i in range(64)]
    routed = {q: next(k for k in keys if mmh3.hash(k, signed=False) % 4 == q) for q in range(4)}

    def keyed(request_id: int, *keys_of: bytes, queue: int | None = None) -> bytes:
        rows = [(f"k{request_id}-{i}".encode(), k, queue, 1000, b"p") for i, k in enumerate(keys_of)]
        return frame(encode_request(Op.APPEND, request_id, encode_batch(rows)))

    stream = (append(1, queue=2) + append(2, queue=1) + keyed(3, routed[0], routed[2])
              + keyed(4, routed[0], routed[3]) + keyed(5, routed[3], queue=0))
    assert it.feed(slot, stream, 1.0, True) is None
    refusals = it.take_refusals()
    assert [(r[1], r[2]) for r in refusals] == [(2, REFUSED_QUEUE_DENIED), (4, REFUSED_QUEUE_DENIED)]
    assert refusals[0][3] == "this connection's token does not allow appending to queue 1"
    assert refusals[1][3] == "this connection's token does not allow appending to queue 3"
    assert len(it) == 3  # 1, 3 and 5 (an explicit queue wins over where the key routes)
    it.set_append_queues(slot, None)
    assert it.feed(slot, append(6, queue=1), 1.0, True) is None and it.take_refusals() == [] and len(it) == 4
