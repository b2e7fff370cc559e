"""Every decoder that reads bytes from outside the process, fed hostile input (hypothesis):
peer messages, client requests and their bodies, hellos, frames, the HTTP request head, event
batches, membership entries and their address maps, the hard-state file, WAL segments, and the
TOML config. Each must answer with its own error type or a value, never another exception, and
stay within its allocation bound (BOUND below, measured with tracemalloc). A hang fails the
example's deadline.

Bounded by ESC_FUZZ_EXAMPLES examples per decoder (default 200 in `make test`; `make
test-slow` runs 20,000). Snapshot images have their own fuzz test (test_state_snapshot_fuzz.py).
"""

from __future__ import annotations

import functools
import logging
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstream.config import ConfigError, load_config
from eventstream.node.member_requests import MemberChangeRequest
from eventstream.node.members import AddressError, decode_addresses
from eventstream.raft.membership import MembershipError, decode_membership_entry
from eventstream.raft.messages import Entry, Message, MessageType
from eventstream.storage import crc32c
from eventstream.storage.codec import decode_batch
from eventstream.storage.errors import CodecError, StorageError
from eventstream.storage.hard_state import HARD_STATE_FILE, HardState
from eventstream.storage.segment_log import SegmentLog
from eventstream.transport.client_protocol import (
    ProtocolError,
    decode_json_object,
    decode_read,
    decode_request,
    decode_status_options,
)
from eventstream.transport.frames import HEADER, FrameDecoder, FrameError
from eventstream.transport.hello import Hello, HelloError
from eventstream.transport.http_status import route_request
from eventstream.transport.peer_codec import PeerCodecError, decode_message, encode_message

EXAMPLES = int(os.environ.get("ESC_FUZZ_EXAMPLES", "200"))
# A long fuzz takes its time: the slowest decoder here (a WAL segment written, damaged and
# reopened) costs up to ~12 ms an input, so the per-test bound grows with the count.
pytestmark = pytest.mark.timeout(300 + int(EXAMPLES * 0.02))
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def BOUND(data_len: int) -> int:  # noqa: N802 - a named limit, read like a constant
    """What decoding `data_len` bytes may allocate at its peak: a small multiple of the input
    plus a fixed allowance. A decoder that trusts a length field breaks it at once."""
    return 16 * data_len + (256 << 10)


def within_bound(decode: Callable[[], Any], data_len: int, errors: tuple[type[BaseException], ...]) -> Any:
    """Run decode(); its own errors are answers. Fails on any other exception or on a peak
    allocation beyond BOUND. Logging is off meanwhile: what a decoder logs is kept by the test
    runner's log capture, whose growing record list would count as the decoder's allocation."""
    logging.disable(logging.CRITICAL)
    tracemalloc.start()
    try:
        try:
            result = decode()
        except errors as exc:
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)
    assert peak <= BOUND(data_len), f"decoding {data_len} bytes allocated {peak:,} bytes"
    return result


def flipped(data: bytes, positions: list[int], cut: int | None) -> bytes:
    """`data` with the bytes at `positions` inverted and cut at `cut`."""
    out = bytearray(data)
    for p in positions:
        if out:
            out[p % len(out)] ^= 0xFF
    return bytes(out if cut is None else out[: cut % (len(out) + 1)])


messages = st.builds(
    lambda kind, term, index, entries: Message(kind, to=2, sender=1, term=term, index=index, log_term=term,
                                               commit=index, entries=[Entry(index + 1 + i, term, e)
                                                                      for i, e in enumerate(entries)]),
    st.sampled_from([MessageType.APPEND, MessageType.HEARTBEAT, MessageType.VOTE, MessageType.APPEND_RESPONSE]),
    st.integers(0, 2**40), st.integers(0, 2**40), st.lists(st.binary(max_size=64), max_size=4))
damage = st.tuples(st.lists(st.integers(0, 10_000), max_size=4), st.none() | st.integers(0, 10_000))


# ------------------------------------------------------------------------------ wire
@FUZZ
@given(st.binary(max_size=4096))
def test_peer_messages_from_random_bytes(data: bytes) -> None:
    within_bound(lambda: decode_message(data), len(data), (PeerCodecError,))


@FUZZ
@given(messages, damage)
def test_peer_messages_damaged_in_place(message: Message, how: tuple[list[int], int | None]) -> None:
    data = flipped(encode_message(message), *how)
    within_bound(lambda: decode_message(data), len(data), (PeerCodecError,))


@FUZZ
@given(st.binary(max_size=4096))
def test_client_requests_and_their_bodies(data: bytes) -> None:
    request = within_bound(lambda: decode_request(data), len(data), (ProtocolError,))
    body = data[9:]
    within_bound(lambda: decode_read(body), len(body), (ProtocolError,))
    within_bound(lambda: decode_json_object(body), len(body), (ProtocolError,))
    within_bound(lambda: decode_status_options(body), len(body), (ProtocolError,))
    del request


@FUZZ
@given(st.dictionaries(st.sampled_from(["change", "id", "address", "force", "other"]),
                       st.none() | st.booleans() | st.integers(-5, 2**70) | st.text(max_size=30), max_size=5))
def test_membership_change_bodies(body: dict[str, Any]) -> None:
    within_bound(lambda: MemberChangeRequest(body), 64, (ValueError,))


@FUZZ
@given(st.binary(max_size=64))
def test_hellos(data: bytes) -> None:
    within_bound(lambda: Hello.decode(data), len(data), (HelloError,))


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=6), st.lists(st.integers(1, 64), min_size=1, max_size=8),
       st.integers(0, 2**32 - 1))
def test_frames_split_anywhere_with_hostile_length_prefixes(bodies: list[bytes], cuts: list[int],
                                                           announced: int) -> None:
    """Good frames followed by a frame announcing `announced` bytes, fed in random pieces: the
    good bodies come out in order, and the decoder never holds more than one frame's limit."""
    limit = 1024
    stream = b"".join(HEADER.pack(len(b), crc32c(b)) + b for b in bodies) + HEADER.pack(announced, 0) + b"tail"
    decoder = FrameDecoder(crc32c, limit)
    got: list[bytes] = []
    pos, k = 0, 0
    try:
        while pos < len(stream):
            piece = stream[pos:pos + cuts[k % len(cuts)]]
            pos += len(piece)
            k += 1
            got += within_bound(functools.partial(decoder.feed, piece), len(piece), ())
            assert decoder.buffered_bytes <= HEADER.size + limit + 64
    except FrameError:
        pass
    # What came out is the good bodies in order (then at most the hostile frame, when its
    # length and CRC happen to be valid); a piece that ends in the damage drops its bodies.
    assert got[: len(bodies)] == bodies[: len(got)] and len(got) <= len(bodies) + 1


@FUZZ
@given(st.binary(max_size=9000))
def test_http_request_heads(head: bytes) -> None:
    route = within_bound(lambda: route_request(head), len(head), ())
    assert route.target in ("status", "metrics") or route.code in (400, 404, 405)


# ------------------------------------------------------------------------------ entries
@FUZZ
@given(st.binary(max_size=4096))
def test_event_batches(data: bytes) -> None:
    within_bound(lambda: decode_batch(data), len(data), (CodecError,))


@FUZZ
@given(st.binary(max_size=512))
def test_membership_entries_and_address_maps(data: bytes) -> None:
    within_bound(lambda: decode_membership_entry(b"\x06" + data), len(data) + 1, (MembershipError,))
    within_bound(lambda: decode_addresses(data), len(data), (AddressError,))


# ------------------------------------------------------------------------------ files
@FUZZ
@given(st.binary(max_size=128))
def test_hard_state_files(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    directory = tmp_path_factory.mktemp("hs")
    (directory / HARD_STATE_FILE).write_bytes(data)
    within_bound(lambda: HardState.load(str(directory)), len(data), (StorageError,))


@FUZZ
@given(st.lists(st.tuples(st.integers(1, 3), st.binary(max_size=200)), min_size=1, max_size=12), damage)
def test_wal_segments_damaged_anywhere(tmp_path_factory: pytest.TempPathFactory,
                                       records: list[tuple[int, bytes]], how: tuple[list[int], int | None]) -> None:
    """A segment written by the log, then damaged anywhere: opening it recovers a prefix or
    names the damage (StorageError), and never allocates beyond the bound."""
    directory = tmp_path_factory.mktemp("wal")
    log = SegmentLog.open(str(directory), segment_bytes=64 * 1024, wal_sync=False)
    term = 1
    for i, (step, data) in enumerate(records, start=1):
        term += step - 1
        log.append([(i, term, data)])
    log.close()
    segment = max(Path(directory).glob("*"), key=lambda p: p.stat().st_size)
    original = segment.read_bytes()
    segment.write_bytes(flipped(original, *how))

    def reopen() -> int:
        reopened = SegmentLog.open(str(directory), segment_bytes=64 * 1024, wal_sync=False)
        try:
            return reopened.last_index
        finally:
            reopened.close()

    result = within_bound(reopen, len(original), (StorageError,))
    assert isinstance(result, StorageError) or 0 <= result <= len(records)


@FUZZ
@given(st.text(max_size=400))
def test_toml_configs(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "node.toml"
    path.write_text(text)
    within_bound(lambda: load_config(path), len(text.encode()), (ConfigError,))


@FUZZ
@given(st.dictionaries(st.sampled_from(["id", "listen", "peers", "join", "batch_size", "tick_ms", "wal_sync",
                                        "replication", "max_promotion_lag", "dedup_window", "unknown_key"]),
                       st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=40),
                       max_size=6))
def test_config_values(tmp_path_factory: pytest.TempPathFactory, overrides: dict[str, Any]) -> None:
    within_bound(lambda: load_config(overrides=overrides), 256, (ConfigError,))
