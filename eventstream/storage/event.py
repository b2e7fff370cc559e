"""The event tuple carried in batches (see csrc/batch_codec.h for its byte layout)."""

from __future__ import annotations

from typing import NamedTuple


class Event(NamedTuple):
    """One ingested event.

    `queue` is an explicit queue number (0 <= queue < 2**31) or None to route by `key`;
    `timestamp_us` is int64 microseconds since the Unix epoch, written by the leader;
    `id_generated` says the client library made the id up (the caller gave none): such an id
    only has to outlive the library's own retries, so the cluster keeps it for the shorter
    `dedup_generated_window_ms` instead of `dedup_window_ms`. It needs an event_id.
    """

    event_id: bytes | None
    key: bytes | None
    queue: int | None
    timestamp_us: int
    payload: bytes
    id_generated: bool = False
