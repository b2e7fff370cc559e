"""The worker's cycle in C (csrc/worker_cycle.h): its answer path against the Python reference.

The cycle reads the follower's answer frames, decodes them and keeps, as RESPONSE records, the
replication answers from its follower to its node, a success replacing the success just before it
at the same term. Its decoder must accept exactly what eventstream/transport/peer_codec.py's
decode_message accepts and relay the same fields as worker.response_record; bad frames drop the
link with the reason."""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstream.raft.messages import Entry, Message, MessageType
from eventstream.replication import worker as worker_module
from eventstream.replication._spsc_ring import (
    CYCLE_RECORDS,
    ENTRY_HEADER_BYTES,
    HEADER_BYTES,
    RECV_BYTES,
    EntryRing,
    SpscRing,
    WorkerCycle,
)
from eventstream.replication.worker import (
    _ORDER_WAIT_BOUNDS_NS,
    RESPONSE_LAYOUT,
    RESPONSE_TYPES,
    response_record,
)
from eventstream.storage._crc32c import crc32c
from eventstream.transport.peer_codec import PeerCodecError, decode_message, encode_message

NODE = 1
PEER = 2
FRAME_MAX = 1 << 20


@contextlib.contextmanager
def make_cycle() -> Iterator[WorkerCycle]:
    entries = EntryRing.create(mmap.mmap(-1, ENTRY_HEADER_BYTES + (1 << 16)))
    control = SpscRing.create(mmap.mmap(-1, HEADER_BYTES + (1 << 16)))
    status = SpscRing.create(mmap.mmap(-1, HEADER_BYTES + (1 << 16)))
    bell_r, bell_w = os.pipe()
    try:
        yield WorkerCycle(NODE, PEER, entries, control, status, bell_r, bell_w, 1 << 22, 256, FRAME_MAX, 1000, 200, 2,
                          _ORDER_WAIT_BOUNDS_NS)
    finally:
        os.close(bell_r)
        os.close(bell_w)


@pytest.fixture
def cycle() -> Iterator[WorkerCycle]:
    with make_cycle() as made:
        yield made


def reference(bodies: list[bytes]) -> tuple[list[bytes], int, int]:
    """What the worker relays for these answer bodies, in Python: (records, malformed, unexpected)."""
    pending: list[bytes] = []
    malformed = unexpected = 0
    for body in bodies:
        try:
            m = decode_message(body)
        except PeerCodecError:
            malformed += 1
            continue
        if m.type not in RESPONSE_TYPES or m.sender != PEER or m.to != NODE:
            unexpected += 1
            continue
        record = response_record(m)
        if pending and m.type == MessageType.APPEND_RESPONSE and not m.reject:
            last = RESPONSE_LAYOUT.unpack(pending[-1])
            if last[0] == MessageType.APPEND_RESPONSE and not last[1] and last[2] == m.term and last[3] <= m.index:
                pending[-1] = record
                continue
        pending.append(record)
    return pending, malformed, unexpected


def framed(body: bytes) -> bytes:
    return struct.pack("<II", len(body), crc32c(body)) + body


u64 = st.integers(0, (1 << 64) - 1)
small = st.integers(0, 5)
messages = st.builds(
    lambda mtype, to, sender, term, index, log_term, reject, hint, read_seq, offset, entries, context, data, voters:
    Message(mtype, to, sender, term, index=index, log_term=log_term, reject=reject, hint_index=hint,
            read_seq=read_seq, offset=offset, entries=[Entry(index + 1 + k, t, d) for k, (t, d) in enumerate(entries)],
            context=context, data=data, voters=tuple(voters)),
    st.sampled_from(list(MessageType)), st.sampled_from([NODE, PEER, 3]), st.sampled_from([NODE, PEER, 3]),
    st.one_of(small, u64), st.one_of(small, st.integers(0, 1 << 62)), small, st.booleans(), small, small, small,
    st.lists(st.tuples(small, st.binary(max_size=20)), max_size=3), st.binary(max_size=10), st.binary(max_size=10),
    st.lists(small, max_size=3),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    body = encode_message(draw(messages))
    damage = draw(st.sampled_from(["none", "none", "flip", "cut", "extend", "raw"]))
    if damage == "flip":
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1:]
    elif damage == "cut":
        body = body[:draw(st.integers(0, len(body) - 1))]
    elif damage == "extend":
        body += draw(st.binary(min_size=1, max_size=8))
    elif damage == "raw":
        body = draw(st.binary(max_size=120))
    return body


def test_the_c_cycle_uses_the_record_kinds_and_sizes_of_the_python_side() -> None:
    # worker_cycle.h repeats them as #defines; the node (pool.py) and worker.py use these.
    python_side = {
        "ORDER_MESSAGE": worker_module.ORDER_MESSAGE, "ORDER_APPEND": worker_module.ORDER_APPEND,
        "ORDER_APPEND_BYTES": worker_module.APPEND_ORDER.size,
        "STATUS_CONNECTED": worker_module.STATUS_CONNECTED, "STATUS_UNREACHABLE": worker_module.STATUS_UNREACHABLE,
        "STATUS_RESPONSE": worker_module.STATUS_RESPONSE, "STATUS_STALE": worker_module.STATUS_STALE,
        "RESPONSE_BYTES": RESPONSE_LAYOUT.size,
    }
    assert {k: CYCLE_RECORDS[k] for k in python_side} == python_side
    assert len(worker_module.ORDER_WAIT_BOUNDS_S) <= CYCLE_RECORDS["WAIT_BOUNDS_MAX"]


@settings(max_examples=300, deadline=None)
@given(st.lists(bodies(), max_size=12), st.data())
def test_the_cycle_relays_what_the_python_decoder_and_worker_would(answers: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(framed(b) for b in answers)
    at = 0
    with make_cycle() as cycle:
        while at < len(stream):  # in pieces, as reads of the link would deliver it
            n = data.draw(st.integers(1, RECV_BYTES))
            assert cycle.feed(stream[at:at + n]) == 0
            at += n
        records, malformed, unexpected = reference(answers)
        assert cycle.take_pending() == records
        assert cycle.refusals[:2] == (malformed, unexpected)


@pytest.mark.parametrize("mtype", list(MessageType))
def test_the_cycle_knows_every_message_type_the_codec_does(cycle: WorkerCycle, mtype: MessageType) -> None:
    # A type the C decoder does not know would count as malformed, where Python sees a message.
    body = encode_message(Message(mtype, NODE, PEER, 3))
    assert cycle.feed(framed(body)) == 0
    records, malformed, unexpected = reference([body])
    assert malformed == 0 and cycle.take_pending() == records and cycle.refusals[:2] == (0, unexpected)


def test_successes_at_one_term_collapse_to_the_highest_but_rejects_and_other_terms_stay(cycle: WorkerCycle) -> None:
    def ack(term: int, index: int, reject: bool = False) -> bytes:
        return framed(encode_message(Message(MessageType.APPEND_RESPONSE, NODE, PEER, term, index=index, reject=reject)))

    cycle.feed(ack(3, 10) + ack(3, 12) + ack(3, 11, reject=True) + ack(3, 13) + ack(4, 14) + ack(4, 15))
    got = [RESPONSE_LAYOUT.unpack(r)[1:4] for r in cycle.take_pending()]
    assert got == [(0, 3, 12), (1, 3, 11), (0, 3, 13), (0, 4, 15)]


def test_a_bad_frame_drops_the_link_and_says_why(cycle: WorkerCycle) -> None:
    good = framed(encode_message(Message(MessageType.HEARTBEAT_RESPONSE, NODE, PEER, 5)))
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    assert cycle.feed(good + bytes(bad_crc)) == -1
    assert "CRC mismatch" in cycle.lost_reason()
    assert len(cycle.take_pending()) == 1  # what came before the bad frame is kept
    cycle.link(-1)
    assert cycle.feed(struct.pack("<II", FRAME_MAX + 1, 0)) == -1
    assert "exceeds the limit" in cycle.lost_reason()
    assert cycle.feed(bytes(RECV_BYTES + 1)) == -2  # more than one read: refused, nothing taken
