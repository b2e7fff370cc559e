"""csrc/_append_intake.pyx against the Python encoders of client_protocol.py and the codec."""

import random
import struct
from array import array
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from eventstream.storage import crc32c
from eventstream.storage.codec import CodecError, decode_batch, encode_batch
from eventstream.transport._append_intake import check_appends, frame_append_answers
from eventstream.transport.client_protocol import (
    Op,
    Status,
    encode_append_ok,
    encode_request,
    encode_response,
)
from eventstream.transport.frames import HEADER

DUPLICATE = 2
REFUSED = bytes(1 if s in (3, 4) else 0 for s in range(256))


def batch(n: int, queue: int | None = None) -> bytes:
    return encode_batch([(b"id-%d" % i, b"k", queue, 1000 + i, b"payload %d" % i) for i in range(n)])


def test_check_appends_reads_ids_and_counts_and_names_each_refusal() -> None:
    bodies = [
        encode_request(Op.APPEND, 7, batch(3)),
        encode_request(Op.APPEND, 8, batch(1, queue=4)),
        encode_request(Op.APPEND, 9, encode_batch([])),
        encode_request(Op.APPEND, 10, b"\x01\x00garbage"),
        encode_request(Op.APPEND, 11, batch(2, queue=3)),
        b"\x01\x02",
    ]
    ids, counts, errors = check_appends(bodies, 4)
    assert ids[:5] == [7, 8, 9, 10, 11] and counts == [3, 0, 0, 0, 2, 0]
    assert set(errors) == {1, 2, 3, 5}
    assert "explicit queue 4 is out of range" in errors[1]
    assert "at least one event" in errors[2]
    assert errors[3].startswith("bad append: batch at offset")
    assert "not an APPEND" in errors[5]


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=2**32 - 1))
def test_check_appends_agrees_with_the_codec_on_any_bytes(junk: bytes, seed: int) -> None:
    rng = random.Random(seed)
    good = bytearray(batch(rng.randint(1, 4)))
    # Damage a real batch or send junk: the native check must refuse exactly what decode refuses.
    if junk and rng.random() < 0.5:
        good[rng.randrange(len(good))] ^= junk[0] | 1
        candidate = bytes(good)
    else:
        candidate = junk
    try:
        expected = len(decode_batch(candidate))
    except CodecError:
        expected = 0
    _, counts, errors = check_appends([encode_request(Op.APPEND, 1, candidate)], 1 << 31)
    assert counts[0] == expected
    assert (0 in errors) == (expected == 0)


@dataclass
class Waiter:
    request_id: int
    first_event: int
    event_count: int


@given(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=8), st.integers(min_value=0, max_value=2**32 - 1))
def test_answers_match_the_python_encoder(sizes: list[int], seed: int) -> None:
    rng = random.Random(seed)
    total = sum(sizes)
    statuses = bytes(rng.choice((1, 1, 1, DUPLICATE, 3)) for _ in range(total))
    queues = array("i", (rng.randrange(1 << 20) for _ in range(total)))
    offsets = array("q", (rng.randrange(1 << 40) for _ in range(total)))
    waiters, first = [], 0
    for k, n in enumerate(sizes):
        waiters.append(Waiter(1000 + k, first, n))
        first += n
    frames, duplicates = frame_append_answers(waiters, 77, statuses, queues, offsets, REFUSED, DUPLICATE)
    expected_dups = 0
    for w, frame in zip(waiters, frames):
        st_ = statuses[w.first_event:w.first_event + w.event_count]
        if any(REFUSED[s] for s in st_):
            assert frame is None
            continue
        dups = bytes(1 if s == DUPLICATE else 0 for s in st_)
        expected_dups += sum(dups)
        body = encode_response(Status.OK, w.request_id, encode_append_ok(
            77, queues[w.first_event:w.first_event + w.event_count],
            offsets[w.first_event:w.first_event + w.event_count], dups))
        assert frame == struct.pack("<II", len(body), crc32c(body)) + body
        assert HEADER.unpack_from(frame) == (len(body), crc32c(body))
    assert duplicates == expected_dups
