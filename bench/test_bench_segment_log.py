"""SegmentLog.append throughput, wal_sync off and on, beside plain os.write.

Run with `make bench`. Each benchmark writes into pytest's tmp dir (same disk as /tmp) and is
bounded in rounds so its bytes stay below ~64 MiB per round set. Derived rates go to
extra_info: records_per_s, payload_mb_per_s and, with wal_sync on, fdatasync_per_s and
records_per_fdatasync.
"""

from __future__ import annotations

import array
import os
import time
from pathlib import Path
from typing import Any

import pytest

from esc_bench.storage_append import compare_with_plain_write, measure_append
from eventstream.storage import SegmentLog

ROUND_BYTES_BUDGET = 64 * 1024 * 1024


def _rounds(batch: int, payload_bytes: int, wal_sync: bool) -> int:
    cap = 150 if wal_sync else 400
    return max(3, min(cap, ROUND_BYTES_BUDGET // (batch * payload_bytes)))


def _record_rates(benchmark: Any, batch: int, payload_bytes: int, syncs: int = 0,
                  rounds: int = 0) -> None:
    median = benchmark.stats.stats.median
    benchmark.extra_info["records_per_s"] = round(batch / median)
    benchmark.extra_info["payload_mb_per_s"] = round(batch * payload_bytes / median / 1e6, 1)
    if syncs:
        benchmark.extra_info["fdatasync_per_s"] = round(syncs / (median * rounds))
        benchmark.extra_info["records_per_fdatasync"] = round(batch * rounds / syncs, 1)


@pytest.mark.parametrize("payload_bytes", [100, 65536])
@pytest.mark.parametrize("batch", [1, 100, 1000])
@pytest.mark.parametrize("wal_sync", [False, True], ids=["sync_off", "sync_on"])
def test_segment_log_append(benchmark: Any, tmp_path: Path, wal_sync: bool, batch: int,
                            payload_bytes: int) -> None:
    payload = os.urandom(payload_bytes)
    rounds = _rounds(batch, payload_bytes, wal_sync)
    with SegmentLog.open(str(tmp_path), wal_sync=wal_sync) as log:
        syncs_before = log.stats()["fdatasync_count"]

        def append_next_batch() -> None:
            first = log.last_index + 1
            log.append([(first + k, 1, payload) for k in range(batch)])

        benchmark.pedantic(append_next_batch, rounds=rounds, iterations=1, warmup_rounds=1)
        assert log.last_index == batch * (rounds + 1)
        syncs = log.stats()["fdatasync_count"] - syncs_before
    _record_rates(benchmark, batch, payload_bytes, syncs if wal_sync else 0, rounds + 1)


@pytest.mark.parametrize("wal_sync", [False, True], ids=["sync_off", "sync_on"])
def test_segment_log_append_packed(benchmark: Any, tmp_path: Path, wal_sync: bool) -> None:
    """The bulk path: 1000 records of 100 bytes as one buffer plus a lengths array."""
    batch, payload_bytes = 1000, 100
    buffer = os.urandom(payload_bytes) * batch
    lengths = array.array("I", [payload_bytes]) * batch
    rounds = _rounds(batch, payload_bytes, wal_sync)
    with SegmentLog.open(str(tmp_path), wal_sync=wal_sync) as log:
        benchmark.pedantic(lambda: log.append_packed(log.last_index + 1, 1, buffer, lengths),
                           rounds=rounds, iterations=1, warmup_rounds=1)
        assert log.last_index == batch * (rounds + 1)
    _record_rates(benchmark, batch, payload_bytes)


@pytest.mark.parametrize("payload_bytes", [65536])
@pytest.mark.parametrize("batch", [1, 100, 1000])
@pytest.mark.parametrize("sync", [False, True], ids=["sync_off", "sync_on"])
def test_plain_os_write(benchmark: Any, tmp_path: Path, sync: bool, batch: int,
                        payload_bytes: int) -> None:
    """The yardstick for the 64 KiB rows: os.write of the same payload bytes, same disk, same
    run (fdatasync per batch when sync is on)."""
    chunk = os.urandom(payload_bytes) * batch
    fd = os.open(tmp_path / "plain", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        def write_batch() -> None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fdatasync(fd)

        benchmark.pedantic(write_batch, rounds=_rounds(batch, payload_bytes, sync), iterations=1,
                           warmup_rounds=1)
    finally:
        os.close(fd)
    _record_rates(benchmark, batch, payload_bytes)


@pytest.mark.parametrize("batch", [1, 100, 1000])
@pytest.mark.parametrize("wal_sync", [False, True], ids=["sync_off", "sync_on"])
def test_append_64kib_vs_plain_write(benchmark: Any, tmp_path: Path, wal_sync: bool,
                                     batch: int) -> None:
    """The 64 KiB ratio target: SegmentLog.append and plain os.write of the same payload bytes
    (fdatasync per batch when wal_sync is on), alternated three times so both see the same
    disk weather; extra_info holds both medians and their ratio. The timing of this benchmark
    itself is the whole comparison (about 1 s) and means nothing on its own."""
    figures = []

    def run() -> None:
        figures.append(compare_with_plain_write(
            str(tmp_path), wal_sync=wal_sync, batch_records=batch, payload_bytes=65536,
            seconds=0.6, bytes_max=ROUND_BYTES_BUDGET * 3,
        ))

    benchmark.pedantic(run, rounds=1, iterations=1)
    log_run, plain_run = figures[0]
    assert log_run.records > 0 and plain_run.records > 0
    benchmark.extra_info["log_mb_per_s"] = round(log_run.payload_mb_per_s, 1)
    benchmark.extra_info["plain_mb_per_s"] = round(plain_run.payload_mb_per_s, 1)
    benchmark.extra_info["ratio"] = round(log_run.payload_mb_per_s / plain_run.payload_mb_per_s, 2)


def test_group_commit_four_threads(benchmark: Any, tmp_path: Path) -> None:
    """wal_sync on, batch 1, four threads: appends that queue behind an fdatasync share the
    next one. One round is a bounded 0.5 s run; records_per_fdatasync > 1 is group commit."""
    runs = []

    def run() -> None:
        runs.append(measure_append(str(tmp_path), wal_sync=True, batch_records=1,
                                   payload_bytes=100, seconds=0.5, bytes_max=1 << 20, threads=4))

    benchmark.pedantic(run, rounds=3, iterations=1)
    records = sum(r.records for r in runs)
    seconds = sum(r.seconds for r in runs)
    syncs = sum(r.fdatasync_count for r in runs)
    assert records > 0
    benchmark.extra_info["records_per_s"] = round(records / seconds)
    benchmark.extra_info["fdatasync_per_s"] = round(syncs / seconds)
    benchmark.extra_info["records_per_fdatasync"] = round(records / syncs, 2)


@pytest.mark.parametrize("payload_bytes", [100, 65536])
def test_segment_log_entries_read(benchmark: Any, tmp_path: Path, payload_bytes: int) -> None:
    """entries(lo, lo + 1000): what a leader pays to read entries for AppendEntries (every
    record's CRC is checked on the way out)."""
    batch = 1000 if payload_bytes == 100 else 64
    with SegmentLog.open(str(tmp_path), wal_sync=False) as log:
        payload = os.urandom(payload_bytes)
        for first in range(1, 5 * batch, batch):
            log.append([(first + k, 1, payload) for k in range(batch)])
        lo = 2 * batch + 17  # not on a sparse-index boundary
        got = benchmark(log.entries, lo, lo + batch)
        assert len(got) == batch and bytes(got[0][2]) == payload
    _record_rates(benchmark, batch, payload_bytes)


@pytest.mark.parametrize("zero_fill", [False, True], ids=["reserve_blocks", "zero_fill"])
def test_synced_append_zero_fill_vs_reserved_blocks(benchmark: Any, tmp_path: Path,
                                                     zero_fill: bool) -> None:
    """wal_sync on, one 4.6 KB record per append (an entry of ~34 single events): the segment
    extended with zeros ahead of the records (the default with wal_sync) against blocks reserved
    with fallocate(KEEP_SIZE) (the wal_sync=False way). extra_info: process CPU per append."""
    payload = os.urandom(4600)
    state: dict[str, Any] = {"index": 0, "cpu": 0.0, "appends": 0}
    log = SegmentLog.open(str(tmp_path / "log"), wal_sync=True, zero_fill=zero_fill)

    def one() -> None:
        state["index"] += 1
        started = time.process_time()
        log.append([(state["index"], 1, payload)])
        state["cpu"] += time.process_time() - started
        state["appends"] += 1

    try:
        benchmark.pedantic(one, rounds=2000, iterations=1, warmup_rounds=20)
    finally:
        log.close()
    benchmark.extra_info["cpu_us_per_append"] = round(state["cpu"] / state["appends"] * 1e6, 1)
