"""The leader's per-request work for single-event appends (issue 5), native against Python.

A burst of 64 single-event APPEND requests (what 64 concurrent clients send between two turns
of the leader's loop) is split into frames, checked, and its 64 answers framed. Each benchmark
reports microseconds per request in extra_info; the Python versions are the references the
native code replaced (frames.py's loop, the codec's validation, client_protocol's encoders).
"""

from __future__ import annotations

import os
import struct
from array import array
from dataclasses import dataclass
from typing import Any

import pytest

from eventstream._append_wire import check_appends, frame_append_answers
from eventstream.storage import crc32c
from eventstream.storage.codec import decode_batch, encode_batch
from eventstream.transport.client_protocol import (
    Op,
    Status,
    encode_append_ok,
    encode_request,
    encode_response,
)
from eventstream.transport.frames import FrameDecoder, FrameEncoder

BURST = 64
LIMIT = 64 << 20


def _python_crc(data: Any) -> int:
    return crc32c(data)  # another function object: FrameDecoder takes its Python loop


def _burst() -> tuple[list[bytes], bytes]:
    bodies = [
        encode_request(Op.APPEND, k + 1, encode_batch([(os.urandom(16), b"key-%d" % k, None, 1_700_000_000_000_000, b"x" * 100)]))
        for k in range(BURST)
    ]
    enc = FrameEncoder(crc32c, LIMIT)
    stream = b"".join(h + bytes(b) for h, b in (enc.encode(body) for body in bodies))
    return bodies, stream


@pytest.mark.parametrize("impl", ["native", "python"])
def test_split_burst_into_frames(benchmark: Any, impl: str) -> None:
    _, stream = _burst()
    decoder = FrameDecoder(crc32c if impl == "native" else _python_crc, LIMIT)
    bodies = benchmark(decoder.feed, stream)
    assert len(bodies) == BURST
    benchmark.extra_info["us_per_request"] = round(benchmark.stats.stats.median * 1e6 / BURST, 3)


@pytest.mark.parametrize("impl", ["native", "python"])
def test_check_burst_of_appends(benchmark: Any, impl: str) -> None:
    bodies, _ = _burst()

    def python_check() -> list[int]:
        counts = []
        for body in bodies:
            view = decode_batch(memoryview(body)[9:])
            queues = view.queues()
            assert max(queues) < 16
            counts.append(len(view))
        return counts

    if impl == "native":
        counts = benchmark(lambda: check_appends(bodies, 16)[1])
    else:
        counts = benchmark(python_check)
    assert counts == [1] * BURST
    benchmark.extra_info["us_per_request"] = round(benchmark.stats.stats.median * 1e6 / BURST, 3)


@dataclass
class _Waiter:
    request_id: int
    first_event: int
    event_count: int


@pytest.mark.parametrize("impl", ["native", "python"])
def test_frame_burst_of_answers(benchmark: Any, impl: str) -> None:
    waiters = [_Waiter(k + 1, k, 1) for k in range(BURST)]
    statuses = bytes([1]) * BURST
    queues = array("i", range(BURST))
    offsets = array("q", range(1000, 1000 + BURST))
    refused = bytes(256)
    dup_flags = bytes(256)

    def python_frames() -> list[bytes]:
        out = []
        for w in waiters:
            a, b = w.first_event, w.first_event + w.event_count
            dups = statuses[a:b].translate(dup_flags)
            body = encode_response(Status.OK, w.request_id, encode_append_ok(77, queues[a:b], offsets[a:b], dups))
            out.append(struct.pack("<II", len(body), crc32c(body)) + body)
        return out

    if impl == "native":
        frames = benchmark(lambda: frame_append_answers(waiters, 77, statuses, queues, offsets, refused, 2)[0])
    else:
        frames = benchmark(python_frames)
    assert len(frames) == BURST and all(frames)
    benchmark.extra_info["us_per_request"] = round(benchmark.stats.stats.median * 1e6 / BURST, 3)
