"""The leader's per-request work for single-event appends, native against Python.

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

from eventstream.storage import crc32c
from eventstream.storage.codec import decode_batch, encode_batch
from eventstream.transport._append_intake import check_appends, frame_append_answers
from eventstream.transport.client_protocol import (
    Op,
    Status,
    encode_append_ok,
    encode_request,
    encode_response,
)
from eventstream.transport.frames import FrameDecoder, FrameEncoder

SEEN_US = 1_790_000_000_123_456  # the leader's clock when it takes an entry

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


@pytest.mark.parametrize("impl", ["intake", "session3"])
def test_request_path_of_64_connections(benchmark: Any, impl: str) -> None:
    """One request on each of 64 connections, read to answer bytes, without the syscalls:
    AppendIntake (feed per read, take, answer, flush to Python) against session 3's path (a
    FrameDecoder per connection, the APPEND run gathered, one check_appends, a PendingAppend
    and ProposalBatcher.add per request, take, frame_append_answers, answers joined per
    connection) with the same native kernels."""
    import time

    from eventstream.batcher import PendingAppend, ProposalBatcher
    from eventstream.metrics import LATENCY_BUCKETS_S
    from eventstream.transport._append_intake import AppendIntake

    bodies, _ = _burst()
    reads = [struct.pack("<II", len(b), crc32c(b)) + b for b in bodies]
    statuses = bytes([1]) * BURST
    queues = array("I", range(BURST))
    offsets = array("Q", range(BURST))
    refused = bytes(256)

    if impl == "intake":
        intake = AppendIntake(LIMIT, 4096, LIMIT, LATENCY_BUCKETS_S, 16)
        slots = [intake.open_slot(-1)[0] for _ in range(BURST)]

        def round_trip() -> int:
            now = time.monotonic()
            for slot, data in zip(slots, reads):
                intake.feed(slot, data, now, True)
            entry = intake.take(1000, LIMIT, SEEN_US)
            assert entry is not None
            _, waiters = entry
            intake.answer(waiters, 77, statuses, queues, offsets, refused, 2, now)
            return len(intake.flush())
    else:
        decoders = [FrameDecoder(crc32c, LIMIT) for _ in range(BURST)]
        batcher = ProposalBatcher(1000, LIMIT)
        append_op = bytes([Op.APPEND])

        def round_trip() -> int:
            runs = []
            for k, (decoder, data) in enumerate(zip(decoders, reads)):
                run = [body for body in decoder.feed(data) if body[:1] == append_op and len(body) >= 9]
                runs.append((k, run))
            flat = [body for _, run in runs for body in run]
            ids, counts, _ = check_appends(flat, 16)
            now = time.monotonic()
            i = 0
            for k, run in runs:
                for body in run:
                    batcher.add(body, PendingAppend(k, ids[i], counts[i], now), 9)
                    i += 1
            built = batcher.take(SEEN_US)
            assert built is not None
            frames, _ = frame_append_answers(built.waiters, 77, statuses, queues, offsets, refused, 2)
            out: list[list[bytes]] = [[] for _ in range(BURST)]
            for w, f in zip(built.waiters, frames):
                out[w.session].append(f)  # type: ignore[index,call-overload]  # session: the slot number here
            return len([b"".join(parts) for parts in out])

    assert benchmark(round_trip) == BURST
    benchmark.extra_info["us_per_request"] = round(benchmark.stats.stats.median * 1e6 / BURST, 3)
