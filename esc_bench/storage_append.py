"""Measures SegmentLog append throughput against a plain os.write of the same bytes.

Used by `esc-bench storage` (esc_bench/cli.py). Every run is bounded twice, by seconds
and by bytes, and works in a fresh directory that it deletes afterwards.
"""

from __future__ import annotations

import array
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from eventstream.storage.segment_log import SegmentLog


@dataclass(frozen=True)
class AppendFigures:
    """What one bounded append run did; the rates derive from these counts."""

    label: str
    wal_sync: bool
    batch_records: int
    payload_bytes: int
    threads: int
    records: int
    seconds: float
    fdatasync_count: int

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds

    @property
    def payload_mb_per_s(self) -> float:
        return self.records * self.payload_bytes / self.seconds / 1e6

    @property
    def fdatasyncs_per_s(self) -> float:
        return self.fdatasync_count / self.seconds

    @property
    def records_per_fdatasync(self) -> float:
        return self.records / self.fdatasync_count if self.fdatasync_count else 0.0


def measure_append(parent: str, *, wal_sync: bool, batch_records: int, payload_bytes: int,
                   seconds: float, bytes_max: int, threads: int = 1,
                   packed: bool = False) -> AppendFigures:
    """Appends batches of `batch_records` records of `payload_bytes` until `seconds` or
    `bytes_max` payload bytes, from `threads` threads (each batch's index is taken under a
    shared lock; the fdatasync happens outside it, so waiting threads share it)."""
    directory = tempfile.mkdtemp(prefix="append-", dir=parent)
    payload = os.urandom(payload_bytes)
    packed_buffer = payload * batch_records
    lengths = array.array("I", [payload_bytes]) * batch_records
    order = threading.Lock()
    try:
        log = SegmentLog.open(directory, wal_sync=wal_sync)
        try:
            start_syncs = log.stats()["fdatasync_count"]
            deadline = time.perf_counter() + seconds

            def worker() -> None:
                # The same stop rule as measure_plain_write, so both write the same bytes.
                while (time.perf_counter() < deadline
                       and log.last_index * payload_bytes < bytes_max):
                    with order:
                        first = log.last_index + 1
                        if packed:
                            ticket = log.append_packed_nowait(first, 1, packed_buffer, lengths)
                        else:
                            ticket = log.append_nowait(
                                [(first + k, 1, payload) for k in range(batch_records)]
                            )
                    if wal_sync:
                        log.wait_durable(ticket)

            started = time.perf_counter()
            _run_threads(worker, threads)
            elapsed = time.perf_counter() - started
            records = log.last_index
            syncs = log.stats()["fdatasync_count"] - start_syncs
        finally:
            log.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    label = f"{'packed' if packed else 'tuples'} x{threads} thread{'s' if threads > 1 else ''}"
    return AppendFigures(label, wal_sync, batch_records, payload_bytes, threads, records,
                         elapsed, syncs)


def measure_plain_write(parent: str, *, sync: bool, batch_records: int, payload_bytes: int,
                        seconds: float, bytes_max: int) -> AppendFigures:
    """The yardstick: os.write of the same payload bytes per batch (and fdatasync per batch
    when `sync`), no framing, no CRC, no index."""
    fd, path = tempfile.mkstemp(prefix="plain-", dir=parent)
    chunk = os.urandom(payload_bytes) * batch_records
    written = 0
    syncs = 0
    try:
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline and written < bytes_max:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fdatasync(fd)
                syncs += 1
            written += len(chunk)
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        os.unlink(path)
    records = written // payload_bytes
    return AppendFigures("plain os.write", sync, batch_records, payload_bytes, 1, records,
                         elapsed, syncs)


def compare_with_plain_write(parent: str, *, wal_sync: bool, batch_records: int,
                             payload_bytes: int, seconds: float, bytes_max: int,
                             rounds: int = 3) -> tuple[AppendFigures, AppendFigures]:
    """SegmentLog append and plain os.write of the same bytes, alternated `rounds` times so
    both see the same disk and page-cache weather; returns the median round of each."""
    logs: list[AppendFigures] = []
    plains: list[AppendFigures] = []
    for _ in range(rounds):
        logs.append(measure_append(parent, wal_sync=wal_sync, batch_records=batch_records,
                                   payload_bytes=payload_bytes, seconds=seconds / rounds,
                                   bytes_max=bytes_max // rounds))
        plains.append(measure_plain_write(parent, sync=wal_sync, batch_records=batch_records,
                                          payload_bytes=payload_bytes, seconds=seconds / rounds,
                                          bytes_max=bytes_max // rounds))
    return _median(logs), _median(plains)


def _median(runs: list[AppendFigures]) -> AppendFigures:
    return sorted(runs, key=lambda figures: figures.records_per_s)[len(runs) // 2]


def _run_threads(target: Callable[[], None], count: int) -> None:
    if count == 1:
        target()
        return
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as error:  # surfaced below, not lost in the thread
            errors.append(error)

    workers = [threading.Thread(target=guarded) for _ in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
