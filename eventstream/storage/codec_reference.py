"""Pure-Python reference of the event batch codec (byte layout: csrc/batch_codec.h).

Slow and obvious on purpose: differential tests feed it and the native codec the same inputs and
demand identical bytes and identical accept/reject decisions (docs/conventions.md §8).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

from eventstream.storage.errors import CodecError
from eventstream.storage.event import Event

BATCH_VERSION = 1
BATCH_EVENTS_MAX = 65536
BATCH_BYTES_MAX = 64 * 1024 * 1024
EVENT_BYTES_MAX = 1024 * 1024
EVENT_ID_BYTES_MAX = 256
EVENT_KEY_BYTES_MAX = 1024
QUEUE_LIMIT = 2**31

_BATCH_HEADER = struct.Struct("<BBHII")
_EVENT_HEADER = struct.Struct("<BBHHHIIq")
BATCH_HEADER_BYTES = _BATCH_HEADER.size
EVENT_HEADER_BYTES = _EVENT_HEADER.size

_HAS_ID = 0x01
_HAS_KEY = 0x02
_HAS_QUEUE = 0x04
_ID_GENERATED = 0x08
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _field_bytes(value: Any, name: str, index: int, limit: int | None) -> bytes | None:
    if value is None:
        return None
    try:
        data = bytes(memoryview(value))
    except TypeError:
        raise CodecError(
            f"event {index}: {name} must be bytes or None, not {type(value).__name__}"
        ) from None
    if limit is not None and len(data) > limit:
        raise CodecError(f"event {index}: {name} is {len(data)} bytes, limit {limit}")
    return data


def encode_batch(events: Iterable[Sequence[Any]]) -> bytes:
    """Encodes (event_id, key, queue, timestamp_us, payload[, id_generated]) tuples into one
    batch."""
    parts: list[bytes] = []
    count = 0
    total = BATCH_HEADER_BYTES
    for index, event in enumerate(events):
        if not isinstance(event, tuple) or len(event) not in (5, 6):
            raise CodecError(f"event {index}: expected a 5- or 6-tuple (event_id, key, queue, "
                             f"timestamp_us, payload[, id_generated])")
        event_id = _field_bytes(event[0], "event_id", index, EVENT_ID_BYTES_MAX)
        key = _field_bytes(event[1], "key", index, EVENT_KEY_BYTES_MAX)
        queue = event[2]
        timestamp_us = event[3]
        payload = _field_bytes(event[4], "payload", index, None)
        if payload is None:
            raise CodecError(f"event {index}: payload must be bytes, not None")
        if queue is not None and (not isinstance(queue, int) or not 0 <= queue < QUEUE_LIMIT):
            raise CodecError(f"event {index}: queue must be None or an int in [0, 2**31)")
        if not isinstance(timestamp_us, int) or not _INT64_MIN <= timestamp_us <= _INT64_MAX:
            raise CodecError(f"event {index}: timestamp_us must be an int64")
        # Last, as the native encoder checks it.
        generated = len(event) == 6 and event[5]
        if not isinstance(generated, (bool, int)):
            raise CodecError(f"event {index}: id_generated must be a bool")
        if generated and event_id is None:
            raise CodecError(f"event {index}: id_generated is set but the event has no event_id")
        id_len = len(event_id) if event_id is not None else 0
        key_len = len(key) if key is not None else 0
        size = EVENT_HEADER_BYTES + id_len + key_len + len(payload)
        if size > EVENT_BYTES_MAX:
            raise CodecError(f"event {index}: {size} encoded bytes, limit {EVENT_BYTES_MAX}")
        flags = (
            (_HAS_ID if event_id is not None else 0)
            | (_HAS_KEY if key is not None else 0)
            | (_HAS_QUEUE if queue is not None else 0)
            | (_ID_GENERATED if generated else 0)
        )
        header = _EVENT_HEADER.pack(
            flags, 0, id_len, key_len, 0, queue or 0, len(payload), timestamp_us
        )
        parts.append(header + (event_id or b"") + (key or b"") + payload)
        count += 1
        total += size
        if count > BATCH_EVENTS_MAX:
            raise CodecError(f"batch has more than {BATCH_EVENTS_MAX} events")
        if total > BATCH_BYTES_MAX:
            raise CodecError(f"batch exceeds {BATCH_BYTES_MAX} bytes")
    return _BATCH_HEADER.pack(BATCH_VERSION, 0, 0, count, total) + b"".join(parts)


def decode_batch(data: bytes | bytearray | memoryview) -> list[Event]:
    """Decodes a whole batch into Events, or raises CodecError naming the byte offset."""
    buf = bytes(data)
    if len(buf) < BATCH_HEADER_BYTES:
        raise CodecError("batch at offset 0: buffer shorter than the batch header")
    version, flags, reserved, count, total = _BATCH_HEADER.unpack_from(buf, 0)
    _check(0, [
        (version != BATCH_VERSION, "unknown batch format version"),
        (flags or reserved, "reserved field is not zero"),
        (count > BATCH_EVENTS_MAX, "event count above the limit"),
        (total > BATCH_BYTES_MAX, "batch bytes above the limit"),
        (total != len(buf), "batch_bytes field differs from the buffer length"),
    ])
    events: list[Event] = []
    offset = BATCH_HEADER_BYTES
    for _ in range(count):
        event, offset = _decode_event(buf, offset)
        events.append(event)
    if offset != len(buf):
        raise CodecError(f"batch at offset {offset}: bytes left after the last event")
    return events


def _check(offset: int, checks: list[tuple[Any, str]]) -> None:
    """Raises for the first failed check, in the order csrc/batch_codec.h tests them."""
    for failed, reason in checks:
        if failed:
            raise CodecError(f"batch at offset {offset}: {reason}")


def _decode_event(buf: bytes, offset: int) -> tuple[Event, int]:
    """Returns the event at `offset` and the offset just past it."""
    _check(offset, [(len(buf) - offset < EVENT_HEADER_BYTES, "event runs past the end of the batch")])
    flags, reserved1, id_len, key_len, reserved2, queue, payload_len, timestamp_us = (
        _EVENT_HEADER.unpack_from(buf, offset)
    )
    size = EVENT_HEADER_BYTES + id_len + key_len + payload_len
    absent_set = (
        (not flags & _HAS_ID and (id_len or flags & _ID_GENERATED))
        or (not flags & _HAS_KEY and key_len)
        or (not flags & _HAS_QUEUE and queue)
    )
    _check(offset, [
        (flags & ~(_HAS_ID | _HAS_KEY | _HAS_QUEUE | _ID_GENERATED), "unknown event flag bits"),
        (reserved1 or reserved2, "reserved field is not zero"),
        (id_len > EVENT_ID_BYTES_MAX, "event_id longer than the limit"),
        (key_len > EVENT_KEY_BYTES_MAX, "key longer than the limit"),
        (absent_set, "absent field has a nonzero length or value"),
        (queue >= QUEUE_LIMIT, "queue number not below 2**31"),
        (size > EVENT_BYTES_MAX, "event bytes above the limit"),
        (len(buf) - offset < size, "event runs past the end of the batch"),
    ])
    body = offset + EVENT_HEADER_BYTES
    event_id = buf[body : body + id_len] if flags & _HAS_ID else None
    key = buf[body + id_len : body + id_len + key_len] if flags & _HAS_KEY else None
    payload = buf[body + id_len + key_len : offset + size]
    event = Event(event_id, key, queue if flags & _HAS_QUEUE else None, timestamp_us, payload,
                  bool(flags & _ID_GENERATED))
    return event, offset + size
