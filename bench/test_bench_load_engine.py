"""esc-bench's per-request work for single-event appends: the native engine's encoder and answer
check (csrc/load_engine.c) against the Python path the client engine takes (storage codec,
client_protocol, frames). Each benchmark reports microseconds per request in extra_info; the
native figures include one Python call each, which the engine itself does not pay.
"""

from __future__ import annotations

import os
from array import array
from typing import Any

import pytest

from esc_bench._load_engine import encode_append_request, read_answer
from eventstream.storage import crc32c
from eventstream.storage.codec import encode_batch
from eventstream.transport.client_protocol import (
    Op,
    Status,
    decode_append_ok,
    decode_response,
    encode_append_ok,
    encode_request,
    encode_response,
)
from eventstream.transport.frames import FrameDecoder, frame_header

PAYLOAD = b"x" * 100
TIMESTAMP_US = 1_700_000_000_000_000
LIMIT = 64 << 20


def _python_request(request_id: int, event_id: bytes) -> bytes:
    # The engine makes its ids up as the client library does, so they travel marked as generated.
    event = (event_id, b"key-7", None, TIMESTAMP_US, PAYLOAD, True)
    body = encode_request(Op.APPEND, request_id, encode_batch([event]))
    return frame_header(len(body), crc32c(body)) + body


def _python_check(decoder: FrameDecoder, frame: bytes) -> int:
    (body,) = decoder.feed(frame)
    response = decode_response(body)
    ok = decode_append_ok(response.body)
    if response.status is not Status.OK or response.request_id != 9 or len(ok.queues) != 1:
        raise AssertionError("not the expected answer")
    return ok.duplicates.count(1)


@pytest.mark.parametrize("impl", ["native", "python"])
def test_encode_single_event_request(benchmark: Any, impl: str) -> None:
    event_id = os.urandom(16)
    if impl == "native":
        frame = benchmark(encode_append_request, 9, 1, event_id, 7, 1000, PAYLOAD, TIMESTAMP_US)
    else:
        frame = benchmark(_python_request, 9, event_id)
    assert frame == _python_request(9, event_id)
    benchmark.extra_info["us_per_request"] = round(benchmark.stats.stats.median * 1e6, 3)


@pytest.mark.parametrize("impl", ["native", "python"])
def test_check_single_event_answer(benchmark: Any, impl: str) -> None:
    body = encode_response(Status.OK, 9, encode_append_ok(5, array("I", [1]), array("Q", [2]), b"\x00"))
    frame = frame_header(len(body), crc32c(body)) + body
    if impl == "native":
        assert benchmark(read_answer, frame, 9, 1) == ("ok", 0, "")
    else:
        assert benchmark(_python_check, FrameDecoder(crc32c, LIMIT), frame) == 0
    benchmark.extra_info["us_per_request"] = round(benchmark.stats.stats.median * 1e6, 3)
