"""Event batch codec: golden bytes, native vs pure-Python reference, limits and decoder fuzzing."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstream.storage import codec_reference as reference
from eventstream.storage.codec import (
    BATCH_BYTES_MAX,
    BATCH_EVENTS_MAX,
    EVENT_BYTES_MAX,
    EVENT_ID_BYTES_MAX,
    EVENT_KEY_BYTES_MAX,
    BatchView,
    CodecError,
    Event,
    decode_batch,
    encode_batch,
)

events_strategy = st.lists(
    st.builds(
        Event,
        event_id=st.none() | st.binary(max_size=40),
        key=st.none() | st.binary(max_size=40),
        queue=st.none() | st.integers(min_value=0, max_value=2**31 - 1),
        timestamp_us=st.integers(min_value=-(2**63), max_value=2**63 - 1),
        payload=st.binary(max_size=300),
        id_generated=st.booleans(),
    ).map(lambda e: e if e.event_id is not None else e._replace(id_generated=False)),
    max_size=30,
)


def test_golden_batch_bytes() -> None:
    """The byte layout of csrc/batch_codec.h, pinned (docs/conventions.md §9)."""
    batch = encode_batch([(b"id", b"k", 7, 1_000_000, b"hello"), (None, None, None, -1, b"")])
    expected = bytes.fromhex(
        "01 00 0000 02000000 44000000"  # version, flags, reserved, count 2, 68 bytes
        "07 00 0200 0100 0000 07000000 05000000 40420f0000000000"  # all fields present
        "6964" "6b" "68656c6c6f"  # "id", "k", "hello"
        "00 00 0000 0000 0000 00000000 00000000 ffffffffffffffff"  # absent fields, ts -1
    )
    assert batch == expected
    assert reference.encode_batch([(b"id", b"k", 7, 1_000_000, b"hello"),
                                   (None, None, None, -1, b"")]) == expected


def test_generated_id_flag_bytes() -> None:
    """bit3 of an event's flags marks an id the client library generated; it needs bit0."""
    event = (b"id", None, None, 0, b"", True)
    batch = encode_batch([event])
    assert batch[12] == 0x09
    assert batch == reference.encode_batch([event])
    assert decode_batch(batch)[0].id_generated is True
    assert decode_batch(batch).id_generated(0) is True
    assert reference.decode_batch(batch)[0].id_generated is True
    # A 5-tuple, or a 6-tuple saying False, is a caller's id: same bytes as before the flag.
    assert encode_batch([event[:5]]) == encode_batch([(*event[:5], False)])
    assert encode_batch([event[:5]])[12] == 0x01
    assert decode_batch(encode_batch([event[:5]]))[0].id_generated is False


def test_generated_flag_without_an_id_is_refused() -> None:
    for encoder in (encode_batch, reference.encode_batch):
        with pytest.raises(CodecError, match="id_generated is set but the event has no event_id"):
            encoder([(None, None, None, 0, b"", True)])
        with pytest.raises(CodecError, match="id_generated must be a bool"):
            encoder([(b"i", None, None, 0, b"", "yes")])
    flagged = bytearray(encode_batch([(None, None, None, 0, b"")]))
    flagged[12] = 0x08
    with pytest.raises(CodecError, match="absent field"):
        decode_batch(bytes(flagged))
    with pytest.raises(CodecError, match="absent field"):
        reference.decode_batch(bytes(flagged))
    flagged[12] = 0x10 | 0x01
    with pytest.raises(CodecError, match="flag"):
        decode_batch(bytes(flagged))
    with pytest.raises(CodecError, match="flag"):
        reference.decode_batch(bytes(flagged))


def test_limits_match_reference() -> None:
    assert BATCH_EVENTS_MAX == reference.BATCH_EVENTS_MAX
    assert BATCH_BYTES_MAX == reference.BATCH_BYTES_MAX
    assert EVENT_BYTES_MAX == reference.EVENT_BYTES_MAX
    assert EVENT_ID_BYTES_MAX == reference.EVENT_ID_BYTES_MAX
    assert EVENT_KEY_BYTES_MAX == reference.EVENT_KEY_BYTES_MAX


@given(events_strategy)
def test_native_and_reference_encode_identically(events: list[Event]) -> None:
    native = encode_batch(events)
    assert native == reference.encode_batch(events)
    view = decode_batch(native)
    assert list(view) == events
    assert view.events() == events
    assert reference.decode_batch(native) == events


@given(events_strategy)
def test_view_accessors_agree_with_events(events: list[Event]) -> None:
    view = decode_batch(encode_batch(events))
    assert len(view) == len(events)
    assert list(view.timestamps_us()) == [e.timestamp_us for e in events]
    assert list(view.queues()) == [-1 if e.queue is None else e.queue for e in events]
    assert list(view.payload_lengths()) == [len(e.payload) for e in events]
    for i, event in enumerate(events):
        assert view[i] == event
        assert view.event_id(i) == event.event_id
        assert view.key(i) == event.key
        assert view.queue(i) == event.queue
        assert view.id_generated(i) == event.id_generated
        assert view.timestamp_us(i) == event.timestamp_us
        assert bytes(view.payload(i)) == event.payload
    if events:
        assert view[-1] == events[-1]


def test_payload_view_is_zero_copy() -> None:
    source = bytearray(encode_batch([(None, None, None, 0, b"abc")]))
    view = decode_batch(source)
    payload = view.payload(0)
    assert payload.obj is not None
    assert bytes(payload) == b"abc"
    assert view.buffer.nbytes == len(source)


def test_buffer_changed_after_validation_is_caught() -> None:
    source = bytearray(encode_batch([(None, None, None, 0, b"abc")]))
    view = decode_batch(source)
    source[12 + 12] = 0xFF  # payload_len now points far past the end
    with pytest.raises(CodecError, match="changed after validation"):
        view.payload(0)
    with pytest.raises(CodecError, match="changed after validation"):
        list(view)


def test_index_out_of_range() -> None:
    view = decode_batch(encode_batch([(None, None, None, 0, b"")]))
    with pytest.raises(IndexError):
        view[1]
    with pytest.raises(IndexError):
        view.payload(-2)


def test_empty_batch() -> None:
    batch = encode_batch([])
    assert len(decode_batch(batch)) == 0
    assert batch == reference.encode_batch([])


def test_accepts_any_iterable_and_bytes_like_fields() -> None:
    events = iter([(bytearray(b"i"), memoryview(b"k"), 1, 2, bytearray(b"p"))])
    assert decode_batch(encode_batch(events))[0] == Event(b"i", b"k", 1, 2, b"p")


BAD_EVENTS: list[tuple[Any, str]] = [
    ([("not", "a", "5-tuple")], "5- or 6-tuple"),
    (["string"], "5- or 6-tuple"),
    ([("id", None, None, 0, b"")], "event_id must be bytes"),
    ([(None, 5, None, 0, b"")], "key must be bytes"),
    ([(None, None, -1, 0, b"")], "queue"),
    ([(None, None, 2**31, 0, b"")], "queue"),
    ([(None, None, 1.5, 0, b"")], "queue"),
    ([(None, None, None, 2**63, b"")], "timestamp_us"),
    ([(None, None, None, "0", b"")], "timestamp_us"),
    ([(None, None, None, 0, None)], "payload"),
    ([(b"x" * (EVENT_ID_BYTES_MAX + 1), None, None, 0, b"")], "event_id is"),
    ([(None, b"x" * (EVENT_KEY_BYTES_MAX + 1), None, 0, b"")], "key is"),
    ([(None, None, None, 0, b"x" * EVENT_BYTES_MAX)], "limit"),
]


@pytest.mark.parametrize("events, message", BAD_EVENTS)
def test_encode_rejects_bad_events(events: list[Any], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        encode_batch(events)
    with pytest.raises(CodecError, match=message):
        reference.encode_batch(events)


def test_encode_rejects_too_many_events() -> None:
    events = [(None, None, None, 0, b"")] * (BATCH_EVENTS_MAX + 1)
    with pytest.raises(CodecError, match="more than"):
        encode_batch(events)


def test_encode_rejects_oversized_batch() -> None:
    payload = b"x" * (EVENT_BYTES_MAX - 64)
    events = [(None, None, None, 0, payload)] * (BATCH_BYTES_MAX // len(payload) + 1)
    with pytest.raises(CodecError, match="exceeds"):
        encode_batch(events)


def _decode_outcome(decoder: Any, data: bytes) -> Any:
    try:
        result = decoder(data)
    except CodecError as error:
        return ("error", str(error))
    return ("ok", list(result))


@given(st.binary(max_size=200))
def test_decode_random_bytes_fails_cleanly(data: bytes) -> None:
    assert _decode_outcome(decode_batch, data) == _decode_outcome(reference.decode_batch, data)


@settings(max_examples=300)
@given(events_strategy, st.data())
def test_decode_damaged_batches_agree_with_reference(events: list[Event], data: Any) -> None:
    """Flip, truncate or extend a valid batch: both decoders accept or reject it identically."""
    batch = bytearray(encode_batch(events))
    action = data.draw(st.sampled_from(["flip", "truncate", "extend", "count"]))
    if action == "flip":
        position = data.draw(st.integers(0, len(batch) - 1))
        batch[position] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        del batch[data.draw(st.integers(0, len(batch) - 1)):]
    elif action == "extend":
        batch += data.draw(st.binary(min_size=1, max_size=30))
        struct.pack_into("<I", batch, 8, len(batch))
    else:
        struct.pack_into("<I", batch, 4, data.draw(st.integers(0, 2**32 - 1)))
    damaged = bytes(batch)
    native = _decode_outcome(decode_batch, damaged)
    assert native == _decode_outcome(reference.decode_batch, damaged)


def test_decode_errors_name_the_offset() -> None:
    batch = bytearray(encode_batch([(None, None, None, 0, b"a"), (None, None, None, 0, b"b")]))
    batch[12 + 25 + 1] = 1  # reserved byte of the second event
    with pytest.raises(CodecError, match="offset 37: reserved field"):
        decode_batch(bytes(batch))


def test_decode_rejects_non_buffer() -> None:
    with pytest.raises(TypeError):
        decode_batch(12345)  # type: ignore[arg-type]


def test_view_type_is_exported() -> None:
    assert isinstance(decode_batch(encode_batch([])), BatchView)
