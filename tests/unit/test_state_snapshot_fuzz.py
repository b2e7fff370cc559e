"""Any damage to a snapshot stream is refused with SnapshotError, never another exception, and
leaves the receiving machine's state and snapshot folder untouched ("A truncated or
corrupt snapshot is rejected with a clear error and the previous state stays intact")."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstream.state import SnapshotError, StateMachine, encode_config_update, encode_set_event
from eventstream.storage.codec import Event


@functools.lru_cache(maxsize=1)
def good_stream() -> bytes:
    folder = tempfile.mkdtemp(prefix="esc-snap-fuzz-")
    atexit.register(shutil.rmtree, folder, True)
    machine = StateMachine.open(folder)
    machine.apply(1, 1, encode_config_update({"queue_segment_bytes": 4096, "queue_count": 3}))
    batch = [
        Event(b"id-%d" % i if i % 2 else None, b"k%d" % (i % 5), None, i, b"p" * (i % 90))
        for i in range(120)
    ]
    machine.apply(2, 1, encode_set_event(batch))
    machine.snapshot()
    stream = b"".join(machine.snapshot_chunks(chunk_bytes=1 << 20))
    machine.close()
    return stream


def refused(stream: bytes, chunk_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        target = StateMachine.open(folder)
        target.apply(1, 1, encode_set_event([Event(None, b"k", None, 1, b"before")]))
        before = target.digest()
        with pytest.raises(SnapshotError):
            receiver = target.snapshot_receiver()
            for at in range(0, len(stream), chunk_bytes):
                receiver.feed(stream[at : at + chunk_bytes])
            target.restore(receiver)
        assert target.digest() == before and target.applied_index == 1
        assert os.listdir(target.snapshots_root) == []
        target.close()


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(1, 5000))
def test_flipped_byte_is_refused(data: st.DataObject, chunk_bytes: int) -> None:
    stream = good_stream()
    at = data.draw(st.integers(0, len(stream) - 1))
    bit = data.draw(st.integers(0, 7))
    damaged = bytearray(stream)
    damaged[at] ^= 1 << bit
    refused(bytes(damaged), chunk_bytes)


@settings(max_examples=30, deadline=None)
@given(st.data(), st.integers(1, 5000))
def test_truncated_stream_is_refused(data: st.DataObject, chunk_bytes: int) -> None:
    stream = good_stream()
    refused(stream[: data.draw(st.integers(0, len(stream) - 1))], chunk_bytes)
