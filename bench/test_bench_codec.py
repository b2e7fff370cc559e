"""Codec and CRC-32C throughput. Figures: `make bench`; see bench/RESULTS.md.

Each benchmark stores its derived rate in extra_info, so the saved JSON carries events/s or GB/s
next to pytest-benchmark's own timings.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import pytest

from eventstream.storage import crc32c
from eventstream.storage.codec import decode_batch, encode_batch

BATCH_EVENTS = 1000
PAYLOAD_BYTES = 100
CRC_BUFFER_BYTES = 1024 * 1024


@pytest.fixture(scope="module")
def events() -> list[tuple[bytes, bytes, None, int, bytes]]:
    payload = os.urandom(PAYLOAD_BYTES)
    return [
        (b"id-%010d" % i, b"key-%04d" % (i % 97), None, 1_700_000_000_000_000 + i, payload)
        for i in range(BATCH_EVENTS)
    ]


def _per_second(benchmark: Any, units: int, name: str) -> None:
    benchmark.extra_info[name] = round(units / benchmark.stats.stats.median)


def test_codec_encode(benchmark: Any, events: list[Any]) -> None:
    batch = benchmark(encode_batch, events)
    assert len(decode_batch(batch)) == BATCH_EVENTS
    _per_second(benchmark, BATCH_EVENTS, "events_per_s")


def test_codec_decode_view(benchmark: Any, events: list[Any]) -> None:
    """Validation of the whole batch plus a view: what apply and replication pay per entry."""
    batch = encode_batch(events)
    view = benchmark(decode_batch, batch)
    assert len(view) == BATCH_EVENTS
    _per_second(benchmark, BATCH_EVENTS, "events_per_s")


def test_codec_decode_to_event_tuples(benchmark: Any, events: list[Any]) -> None:
    """Decoding all the way to Python Event tuples (bytes copied per field)."""
    batch = encode_batch(events)
    decoded = benchmark(lambda: decode_batch(batch).events())
    # A decoded Event carries id_generated after the five encoded fields.
    assert tuple(decoded[0])[:5] == events[0]
    _per_second(benchmark, BATCH_EVENTS, "events_per_s")


def test_crc32c_1mib(benchmark: Any) -> None:
    data = os.urandom(CRC_BUFFER_BYTES)
    benchmark(crc32c, data)
    _per_second(benchmark, CRC_BUFFER_BYTES, "bytes_per_s")


def test_zlib_crc32_1mib(benchmark: Any) -> None:
    """zlib.crc32 on the same size, in the same run, as the yardstick for crc32c."""
    data = os.urandom(CRC_BUFFER_BYTES)
    benchmark(zlib.crc32, data)
    _per_second(benchmark, CRC_BUFFER_BYTES, "bytes_per_s")
