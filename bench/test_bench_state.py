"""State machine figures: apply throughput, memory per remembered id, snapshot create
and restore of 10 million events. Run with `make bench`; figures in bench/RESULTS.md.

Derived figures (events/s, bytes per id, bytes on disk, peak RSS) go into extra_info so the saved
JSON carries them beside pytest-benchmark's timings.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from eventstream.state import STATUS_STORED, StateMachine, encode_set_event
from eventstream.state._state import DedupTable, apply_dedup_add
from eventstream.storage.codec import Event

BATCH_EVENTS = 1000
PAYLOAD_BYTES = 100
BATCHES_PER_ROUND = 50
ROUNDS = 10
IDS_FOR_MEMORY = 10_000_000
EVENTS_FOR_SNAPSHOT = 10_000_000


@pytest.fixture()
def workdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="esc-bench-state-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def batch_command(first: int, with_ids: bool) -> bytes:
    payload = os.urandom(PAYLOAD_BYTES)
    return encode_set_event(
        [
            Event(
                b"id-%012d" % i if with_ids else None,
                b"key-%04d" % (i % 97),
                None,
                1_700_000_000_000_000 + i,
                payload,
            )
            for i in range(first, first + BATCH_EVENTS)
        ]
    )


@pytest.mark.parametrize("with_ids", [False, True], ids=["no_ids", "with_ids"])
def test_apply_set_event_batches(benchmark: Any, workdir: str, with_ids: bool) -> None:
    """StateMachine.apply of SET_EVENT entries of 1000 100-byte events, 16 queues; every event
    is stored (ids are all new), records are written to the queue segment files."""
    total = BATCHES_PER_ROUND * (ROUNDS + 1)
    commands = [batch_command(n * BATCH_EVENTS, with_ids) for n in range(total)]
    mean_s = apply_in_rounds(benchmark, workdir, commands, BATCHES_PER_ROUND, total * BATCH_EVENTS)
    benchmark.extra_info["events_per_s"] = round(BATCHES_PER_ROUND * BATCH_EVENTS / mean_s)


def apply_in_rounds(benchmark: Any, workdir: str, commands: list[bytes], per_round: int, events: int) -> float:
    """Apply `commands` to a fresh state machine, `per_round` of them per timed round (ROUNDS
    rounds after one warm-up); checks every event was stored; returns the mean round time."""
    machine = StateMachine.open(workdir)
    feed = iter(commands)

    def one_round() -> None:
        for _ in range(per_round):
            result = machine.apply(machine.applied_index + 1, 1, next(feed))
        assert result.statuses is not None and result.statuses[-1] == STATUS_STORED

    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert sum(machine.queue_range(q)[1] for q in range(16)) == events
    machine.close()
    return float(benchmark.stats.stats.mean)


SMALL_ENTRY_EVENTS = 19
SMALL_ENTRIES_PER_ROUND = 2000


def test_apply_small_entries_across_queues(benchmark: Any, workdir: str) -> None:
    """StateMachine.apply of the entries 64 single-event clients make: 19 events with ids and
    distinct keys each, so one entry touches about 11 of the 16 queues and the per-queue step
    of apply weighs as much as the per-event one."""
    payload = os.urandom(PAYLOAD_BYTES)
    total = SMALL_ENTRIES_PER_ROUND * (ROUNDS + 1)
    commands = [
        encode_set_event([
            Event(b"id-%012d" % (n * SMALL_ENTRY_EVENTS + i), b"key-%08d" % (n * SMALL_ENTRY_EVENTS + i), None,
                  1_700_000_000_000_000 + n, payload)
            for i in range(SMALL_ENTRY_EVENTS)
        ])
        for n in range(total)
    ]
    mean_s = apply_in_rounds(benchmark, workdir, commands, SMALL_ENTRIES_PER_ROUND, total * SMALL_ENTRY_EVENTS)
    benchmark.extra_info["us_per_entry"] = round(1e6 * mean_s / SMALL_ENTRIES_PER_ROUND, 2)


def dedup_add_body(first: int, count: int) -> bytes:
    record = struct.Struct("<Hq16s")
    parts = [struct.pack("<I", count)]
    parts += [record.pack(16, i, i.to_bytes(16, "little")) for i in range(first, first + count)]
    return b"".join(parts)


def test_dedup_memory_per_id_10m(benchmark: Any) -> None:
    """RSS growth of holding 10 million remembered ids (target <= 64 bytes per id)."""
    process = psutil.Process()
    result: dict[str, float] = {}

    def fill() -> None:
        table = DedupTable()
        before = process.memory_info().rss
        step = 65536
        for first in range(0, IDS_FOR_MEMORY, step):
            apply_dedup_add(dedup_add_body(first, min(step, IDS_FOR_MEMORY - first)), table)
        after = process.memory_info().rss
        assert len(table) == IDS_FOR_MEMORY
        result["rss_bytes_per_id"] = (after - before) / IDS_FOR_MEMORY
        result["table_bytes_per_id"] = table.memory_bytes / IDS_FOR_MEMORY
        del table

    benchmark.pedantic(fill, rounds=1, iterations=1)
    benchmark.extra_info["rss_bytes_per_id"] = round(result["rss_bytes_per_id"], 1)
    benchmark.extra_info["table_bytes_per_id"] = round(result["table_bytes_per_id"], 1)


class PeakRss:
    """Samples this process's RSS every 5 ms while the block runs."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        process = psutil.Process()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, process.memory_info().rss)
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def folder_bytes(path: str) -> int:
    """Bytes of distinct files below path (hard links counted once)."""
    seen, total = set(), 0
    for root, _, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(root, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = action()
    return time.perf_counter() - start, value


def test_snapshot_create_and_restore_10m_events(benchmark: Any, workdir: str) -> None:
    """10 million 100-byte events in 16 queues: cut pause, full snapshot write, streamed restore
    (1 MiB chunks through the receiver) into a second machine, with bytes and peak RSS."""
    command = batch_command(0, with_ids=False)
    machine = StateMachine.open(os.path.join(workdir, "source"))
    for index in range(1, EVENTS_FOR_SNAPSHOT // BATCH_EVENTS + 1):
        machine.apply(index, 1, command)
    figures: dict[str, float] = {}

    def snapshot_and_restore() -> None:
        with PeakRss() as peak_create:
            pause_s, cut = timed(machine.begin_snapshot)
            write_s, folder = timed(cut.write)
        target = StateMachine.open(os.path.join(workdir, "target"))
        with PeakRss() as peak_restore:

            def restore() -> None:
                receiver = target.snapshot_receiver()
                for chunk in machine.snapshot_chunks(folder, chunk_bytes=1 << 20):
                    receiver.feed(chunk)
                target.restore(receiver)

            restore_s, _ = timed(restore)
        assert target.applied_index == machine.applied_index
        figures.update(
            cut_pause_ms=pause_s * 1000,
            snapshot_write_s=write_s,
            restore_streamed_s=restore_s,
            snapshot_bytes=folder_bytes(folder),
            peak_rss_create_mib=peak_create.peak / 2**20,
            peak_rss_restore_mib=peak_restore.peak / 2**20,
        )
        target.close()

    benchmark.pedantic(snapshot_and_restore, rounds=1, iterations=1)
    for name, value in figures.items():
        benchmark.extra_info[name] = round(value, 3)
    machine.close()


def test_snapshot_cut_pause_with_10m_ids(benchmark: Any, workdir: str) -> None:
    """The apply pause of a snapshot cut when 10 million ids are remembered: the cut freezes the
    dedup entries by reference (one pointer per 65,536 ids), it copies none."""
    machine = StateMachine.open(workdir)
    step = 65536
    for first in range(0, IDS_FOR_MEMORY, step):
        body = dedup_add_body(first, min(step, IDS_FOR_MEMORY - first))
        machine.apply(machine.applied_index + 1, 1, b"\x02" + body)
    assert len(machine.dedup) == IDS_FOR_MEMORY
    cuts = []

    def cut_once() -> None:
        cuts.append(machine.begin_snapshot())

    benchmark.pedantic(cut_once, rounds=1, iterations=1)
    write_s, _ = timed(cuts[0].write)
    benchmark.extra_info["cut_pause_ms"] = round(benchmark.stats.stats.mean * 1000, 3)
    benchmark.extra_info["snapshot_write_s"] = round(write_s, 3)
    machine.close()
