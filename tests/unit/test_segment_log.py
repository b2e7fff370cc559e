"""SegmentLog behaviour: appends, reads, truncation, compaction, durability and locking."""

from __future__ import annotations

import array
import contextlib
import os
import resource
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventstream.storage import (
    CompactedError,
    SegmentLog,
    StorageError,
    UnavailableError,
)


def records(first: int, count: int, term: int = 1, size: int = 20) -> list[tuple[int, int, bytes]]:
    return [(i, term, i.to_bytes(4, "little") * (size // 4)) for i in range(first, first + count)]


def payloads(log: SegmentLog, lo: int, hi: int, **kwargs: Any) -> list[tuple[int, int, bytes]]:
    return [(i, t, bytes(p)) for i, t, p in log.entries(lo, hi, **kwargs)]


@pytest.fixture
def log(tmp_path: Path) -> Any:
    with SegmentLog.open(str(tmp_path / "log"), segment_bytes=1024) as opened:
        yield opened


def test_empty_log(log: SegmentLog) -> None:
    assert (log.first_index, log.last_index) == (1, 0)
    assert log.term(0) == 0
    assert log.entries(1, 1) == []
    with pytest.raises(UnavailableError):
        log.term(1)


def test_append_and_read_back_across_segments(log: SegmentLog) -> None:
    written = records(1, 300)
    log.append(written[:100])
    log.append(written[100:])
    assert log.last_index == 300
    assert log.stats()["segment_count"] > 5
    assert payloads(log, 1, 301) == written
    assert payloads(log, 137, 201) == written[136:200]
    entry = log.entries(5, 6)[0]
    assert isinstance(entry[2], memoryview)


def test_terms_are_tracked_per_index(log: SegmentLog) -> None:
    log.append(records(1, 10, term=1) + records(11, 5, term=3))
    log.append(records(16, 5, term=3))
    log.append(records(21, 1, term=7))
    assert [log.term(i) for i in (0, 1, 10, 11, 20, 21)] == [0, 1, 1, 3, 3, 7]


def test_max_bytes_limits_but_returns_at_least_one(log: SegmentLog) -> None:
    log.append(records(1, 50, size=100))
    assert len(log.entries(1, 51, max_bytes=0)) == 1
    assert len(log.entries(1, 51, max_bytes=350)) == 3
    assert len(log.entries(10, 51, max_bytes=10_000)) == 41


def test_large_records_and_max_bytes_across_read_chunks(tmp_path: Path) -> None:
    with SegmentLog.open(str(tmp_path), segment_bytes=8 * 1024 * 1024, wal_sync=False) as log:
        big = [(i, 1, bytes([i]) * 700_000) for i in range(1, 8)]
        log.append(big)
        assert payloads(log, 1, 8) == big
        assert payloads(log, 2, 8, max_bytes=1_500_000) == big[1:3]


def test_range_errors(log: SegmentLog) -> None:
    log.append(records(1, 10))
    log.compact_through(3)
    with pytest.raises(CompactedError):
        log.entries(3, 5)
    with pytest.raises(UnavailableError):
        log.entries(5, 12)
    with pytest.raises(StorageError):
        log.entries(6, 5)
    with pytest.raises(CompactedError):
        log.term(1)
    assert log.term(3) == 1


@pytest.mark.parametrize(
    "batch, message",
    [
        (records(2, 1), "not the next index 1"),
        (records(1, 1) + records(3, 1), "not the next index 2"),
        ([(1, 2, b""), (2, 1, b"")], "below the previous term"),
    ],
)
def test_rejects_gaps_and_decreasing_terms(log: SegmentLog, batch: Any, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        log.append(batch)
    assert log.last_index == 0
    log.append(records(1, 1))
    assert log.last_index == 1


def test_rejected_batch_writes_nothing(log: SegmentLog) -> None:
    log.append(records(1, 5))
    with pytest.raises(StorageError):
        log.append(records(6, 3) + [(9, 1, "not bytes")])
    assert log.last_index == 5
    log.append(records(6, 1))
    assert payloads(log, 6, 7) == records(6, 1)


def test_append_packed(log: SegmentLog) -> None:
    log.append(records(1, 2))
    sizes = array.array("I", [3, 0, 5] * 40)
    buffer = b"".join(bytes([k % 256]) * n for k, n in enumerate(sizes))
    log.append_packed(3, 2, buffer, sizes)
    assert log.last_index == 122
    assert log.term(3) == 2
    got = log.entries(3, 123)
    assert [len(p) for _, _, p in got] == list(sizes)
    assert b"".join(bytes(p) for _, _, p in got) == buffer
    with pytest.raises(StorageError, match="not the next index"):
        log.append_packed(200, 2, b"", array.array("I"))


def test_large_packed_records_are_written_without_copies(tmp_path: Path) -> None:
    """Payloads of 16 KiB and more take the vectored (pwritev) path."""
    with SegmentLog.open(str(tmp_path), segment_bytes=100_000, wal_sync=False) as log:
        sizes = array.array("I", [20_000, 30_000, 17_000, 40_000])
        buffer = bytes(range(256)) * (sum(sizes) // 256) + bytes(sum(sizes) % 256)
        log.append_packed(1, 1, buffer, sizes)
        log.append([(5, 1, b"z" * 50_000)])
        got = log.entries(1, 6)
        assert b"".join(bytes(p) for _, _, p in got[:4]) == buffer
        assert bytes(got[4][2]) == b"z" * 50_000
        assert log.stats()["segment_count"] == 2


def test_truncate_after_and_append_again(log: SegmentLog) -> None:
    log.append(records(1, 100, term=1))
    log.truncate_after(40)
    assert log.last_index == 40
    with pytest.raises(UnavailableError):
        log.term(41)
    log.append(records(41, 10, term=2))
    assert log.term(40) == 1 and log.term(41) == 2
    assert payloads(log, 35, 51) == records(35, 6, term=1) + records(41, 10, term=2)


def test_truncate_everything(log: SegmentLog) -> None:
    log.append(records(1, 30))
    log.truncate_after(0)
    assert (log.first_index, log.last_index) == (1, 0)
    log.append(records(1, 3, term=4))
    assert log.term(1) == 4


def test_compact_then_reopen_keeps_first_index(tmp_path: Path) -> None:
    path = str(tmp_path)
    with SegmentLog.open(path, segment_bytes=1024) as log:
        log.append(records(1, 100, term=1) + records(101, 20, term=2))
        log.compact_through(105)
        assert log.first_index == 106
        assert log.term(105) == 2
    with SegmentLog.open(path, segment_bytes=1024) as log:
        assert (log.first_index, log.last_index) == (106, 120)
        assert log.term(105) == 2
        assert payloads(log, 106, 121) == records(106, 15, term=2)


def test_compact_past_the_end_installs_a_snapshot_point(tmp_path: Path) -> None:
    path = str(tmp_path)
    with SegmentLog.open(path, segment_bytes=1024) as log:
        log.append(records(1, 10))
        with pytest.raises(StorageError, match="needs that index's term"):
            log.compact_through(50)
        log.compact_through(50, term=6)
        assert (log.first_index, log.last_index, log.term(50)) == (51, 50, 6)
        log.append(records(51, 2, term=6))
    with SegmentLog.open(path, segment_bytes=1024) as log:
        assert (log.first_index, log.last_index, log.term(50), log.term(52)) == (51, 52, 6, 6)


def test_sealed_segments_are_immutable_under_truncation(log: SegmentLog, tmp_path: Path) -> None:
    log.append(records(1, 200))
    sealed = log.sealed_segments()
    assert len(sealed) >= 3
    snapshot_dir = tmp_path / "snapshot"
    snapshot_dir.mkdir()
    linked = []
    for path in sealed:
        target = snapshot_dir / os.path.basename(path)
        os.link(path, target)
        linked.append((target, target.read_bytes()))
    log.truncate_after(5)
    log.append(records(6, 3, term=9))
    log.compact_through(7)
    for target, content in linked:
        assert target.read_bytes() == content
    assert payloads(log, 8, 9) == records(8, 1, term=9)


def test_second_open_of_the_same_directory_fails(log: SegmentLog) -> None:
    with pytest.raises(StorageError, match="open in another process"):
        SegmentLog.open(log.directory)


def test_closed_log_refuses_calls(tmp_path: Path) -> None:
    log = SegmentLog.open(str(tmp_path))
    log.close()
    log.close()
    with pytest.raises(StorageError, match="closed"):
        log.append(records(1, 1))


def test_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        SegmentLog.open(str(tmp_path), segment_bytes=10)
    with pytest.raises(StorageError):
        SegmentLog.open(str(tmp_path), sync_interval_ms=0)


class _GatedFdatasync:
    """Stands in for os.fdatasync: the first call blocks until released, so a test can line
    appends up behind an fsync in progress, deterministically."""

    def __init__(self) -> None:
        self.real = os.fdatasync
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(30)
        self.real(fd)


def test_group_commit_shares_one_fdatasync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SegmentLog.open(str(tmp_path), wal_sync=True) as log:
        log.append(records(1, 1))  # segment creation and first sync happen before the gate
        gate = _GatedFdatasync()
        monkeypatch.setattr(os, "fdatasync", gate)
        leader = threading.Thread(target=log.append, args=(records(2, 1),))
        leader.start()
        assert gate.entered.wait(30)
        followers = []
        for index in (3, 4, 5):
            thread = threading.Thread(target=log.append, args=(records(index, 1),))
            thread.start()
            followers.append(thread)
            deadline = time.monotonic() + 30
            while log.last_index < index and time.monotonic() < deadline:
                time.sleep(0.001)
        assert log.last_index == 5
        assert all(thread.is_alive() for thread in followers)  # waiting for durability
        gate.release.set()
        for thread in [leader, *followers]:
            thread.join(30)
        # One fdatasync for the leader's write, then one shared by the three that queued.
        assert gate.calls == 2


def test_wal_sync_off_syncs_on_an_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    with SegmentLog.open(str(tmp_path), wal_sync=False, sync_interval_ms=50) as log:
        log.append(records(1, 1))
        monkeypatch.setattr(os, "fdatasync", counting)
        log.append(records(2, 100))
        deadline = time.monotonic() + 30
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls, "the background flusher never synced"


def test_wal_sync_off_close_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fdatasync
    log = SegmentLog.open(str(tmp_path), wal_sync=False, sync_interval_ms=600_000)
    log.append(records(1, 1))
    def counted(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counted)
    log.append(records(2, 1))
    assert calls == []
    log.close()
    assert len(calls) == 1


def test_concurrent_appenders_keep_every_record(tmp_path: Path) -> None:
    """Threads order their appends under their own lock and share fdatasyncs outside it."""
    order = threading.Lock()
    path = str(tmp_path)
    with SegmentLog.open(path, segment_bytes=4096, wal_sync=True) as log:
        def worker(name: int) -> None:
            for _ in range(25):
                with order:
                    first = log.last_index + 1
                    ticket = log.append_nowait([(first, 1, b"%d:%d" % (name, first))])
                log.wait_durable(ticket)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert log.stats()["fdatasync_count"] <= 100 + log.stats()["segment_count"]
    with SegmentLog.open(path, segment_bytes=4096) as log:
        assert log.last_index == 100
        for index, _, payload in log.entries(1, 101):
            assert bytes(payload).endswith(b":%d" % index)


def test_sealed_segments_are_synced_before_they_are_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fdatasync
    with SegmentLog.open(str(tmp_path), segment_bytes=1024, wal_sync=False,
                         sync_interval_ms=600_000) as log:
        def counted(fd: int) -> None:
            synced.append(fd)
            real(fd)

        monkeypatch.setattr(os, "fdatasync", counted)
        log.append(records(1, 100))
        assert synced == []  # rolling segments does not wait for the disk
        sealed = log.sealed_segments()
        assert len(sealed) >= 2
        assert len(synced) >= len(sealed)


@contextlib.contextmanager
def file_size_limit(limit_bytes: int) -> Iterator[None]:
    """Writes past `limit_bytes` of any file fail with EFBIG (RLIMIT_FSIZE, SIGXFSZ ignored):
    a real partial write followed by an error, from the kernel, for the native writer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_failed_write_is_cut_back_and_the_log_stays_usable(tmp_path: Path) -> None:
    with SegmentLog.open(str(tmp_path), wal_sync=False) as log:
        log.append(records(1, 5))
        (segment,) = tmp_path.glob("*.wal")
        size_before = segment.stat().st_size
        attempts = [
            records(6, 3),  # copied behind the headers, one write
            [(6, 1, b"v" * 40_000), (7, 1, b"w" * 20_000)],  # vectored
            [(6, 1, b"v" * 70_000)],  # alone: padded with wal_sync off
        ]
        for batch in attempts:
            # The first write stops 10 bytes in.
            with file_size_limit(size_before + 10), pytest.raises(StorageError,
                                                                  match="File too large"):
                log.append(batch)
            assert log.last_index == 5
            assert segment.stat().st_size == size_before
        log.append(records(6, 3))
        assert payloads(log, 1, 9) == records(1, 8)
        log.append([(9, 1, b"v" * 70_000)])
        assert bytes(log.entries(9, 10)[0][2]) == b"v" * 70_000


def test_wal_sync_log_writes_zeros_ahead_and_leaves_none_behind(tmp_path: Path) -> None:
    """A wal_sync log extends its segment with zeros ahead of the records (appends are then
    overwrites, whose fdatasync commits no journal); closing cuts them off."""
    with SegmentLog.open(str(tmp_path), wal_sync=True) as log:
        log.append(records(1, 5))
        (segment,) = tmp_path.glob("*.wal")
        data_end = log._segments[-1].size  # bytes of records; private, no user needs it
        assert segment.stat().st_size >= data_end + 1024 * 1024
        assert segment.read_bytes()[data_end:].count(0) == segment.stat().st_size - data_end
    assert segment.stat().st_size == data_end


def test_failed_zero_fill_is_cut_back_and_the_log_stays_usable(tmp_path: Path) -> None:
    with SegmentLog.open(str(tmp_path), wal_sync=True) as log:
        log.append(records(1, 5))
        (segment,) = tmp_path.glob("*.wal")
        data_end = log._segments[-1].size
        filled_end = segment.stat().st_size
        # Enough to pass the zeros written so far: the next fill must extend the file, which
        # the limit refuses (EFBIG) before any byte of the batch is written.
        batch = [(6 + k, 1, bytes([k]) * 60_000) for k in range(20)]
        with file_size_limit(filled_end + 10), pytest.raises(StorageError, match="File too large"):
            log.append(batch)
        assert log.last_index == 5
        assert segment.stat().st_size == data_end  # the zeros went with the failed write
        log.append(batch)
        assert payloads(log, 6, 26) == batch
    with SegmentLog.open(str(tmp_path), wal_sync=True) as log:
        assert log.recovery is None
        assert payloads(log, 1, 26) == records(1, 5) + batch


def test_failed_fdatasync_fails_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failed fsync the page cache may have dropped the data: never report success."""
    log = SegmentLog.open(str(tmp_path), wal_sync=True)
    log.append(records(1, 1))

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(StorageError, match="fdatasync failed"):
        log.append(records(2, 1))
    with pytest.raises(StorageError, match="failed earlier"):
        log.append(records(3, 1))
    monkeypatch.undo()
    log.close()


def test_interrupted_compaction_is_finished_on_open(tmp_path: Path) -> None:
    """log.meta is written before segments are unlinked; segments left behind by a crash in
    between are removed on the next open."""
    path = tmp_path / "log"
    backup = tmp_path / "backup"
    with SegmentLog.open(str(path), segment_bytes=1024) as log:
        log.append(records(1, 100))
        backup.mkdir()
        for segment in log.sealed_segments():
            os.link(segment, backup / os.path.basename(segment))
        log.compact_through(60)
    for kept in backup.iterdir():
        if not (path / kept.name).exists():
            os.link(kept, path / kept.name)  # as if the unlinks never happened
    with SegmentLog.open(str(path), segment_bytes=1024) as log:
        assert (log.first_index, log.last_index) == (61, 100)
        assert payloads(log, 61, 101) == records(61, 40)
        assert int(Path(log.sealed_segments()[0]).stem) <= 61


def test_leftover_temp_files_are_removed_on_open(tmp_path: Path) -> None:
    with SegmentLog.open(str(tmp_path)) as log:
        log.append(records(1, 3))
    (tmp_path / f"{1:020d}.wal.tmp").write_bytes(b"half a rewrite")
    (tmp_path / "log.meta.tmp").write_bytes(b"half a meta")
    with SegmentLog.open(str(tmp_path)) as log:
        assert log.last_index == 3
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_readers_appenders_and_compaction_race(tmp_path: Path) -> None:
    """One appender, two readers and a compactor for a bounded number of rounds: readers only
    ever see correct payloads or a CompactedError for what was just dropped."""
    errors: list[BaseException] = []
    stop = threading.Event()
    with SegmentLog.open(str(tmp_path), segment_bytes=4096, wal_sync=False) as log:
        def appender() -> None:
            for _ in range(400):
                log.append(records(log.last_index + 1, 10))
            stop.set()

        def reader() -> None:
            while not stop.is_set():
                first, last = log.first_index, log.last_index
                try:
                    for index, _, payload in log.entries(first, last + 1, max_bytes=2000):
                        assert bytes(payload) == index.to_bytes(4, "little") * 5
                except CompactedError:
                    pass

        def compactor() -> None:
            while not stop.is_set():
                if log.last_index > log.first_index + 200:
                    log.compact_through(log.last_index - 100)
                time.sleep(0.001)

        def guarded(target: Any) -> Any:
            def run() -> None:
                try:
                    target()
                except BaseException as error:
                    errors.append(error)
                    stop.set()
            return run

        threads = [threading.Thread(target=guarded(t))
                   for t in (appender, reader, reader, compactor)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert log.last_index == 4000


def test_short_writes_are_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite

    def short_pwrite(fd: int, data: Any, offset: int) -> int:
        return real_pwrite(fd, bytes(memoryview(data)[:7]), offset)

    def short_pwritev(fd: int, buffers: list[Any], offset: int) -> int:
        return real_pwrite(fd, b"".join(bytes(b) for b in buffers)[:1000], offset)

    monkeypatch.setattr(os, "pwrite", short_pwrite)
    monkeypatch.setattr(os, "pwritev", short_pwritev)
    with SegmentLog.open(str(tmp_path), wal_sync=False) as log:
        log.append(records(1, 3))
        log.append([(4, 1, b"a" * 20_000), (5, 1, b"b" * 30_000)])
        monkeypatch.undo()
        assert payloads(log, 1, 6) == records(1, 3) + [(4, 1, b"a" * 20_000), (5, 1, b"b" * 30_000)]


@pytest.mark.parametrize("wal_sync", [True, False])
def test_new_segment_files_are_made_durable_with_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wal_sync: bool
) -> None:
    """A new segment's directory entry is fsynced before the append that created it is
    reported durable: at once with wal_sync, at the next sync without."""
    from eventstream.storage import segment_log

    directory_syncs: list[str] = []
    real = segment_log.fsync_directory
    def counted(path: str) -> None:
        directory_syncs.append(path)
        real(path)

    monkeypatch.setattr(segment_log, "fsync_directory", counted)
    with SegmentLog.open(str(tmp_path), segment_bytes=1024, wal_sync=wal_sync,
                         sync_interval_ms=600_000) as log:
        directory_syncs.clear()
        log.append(records(1, 100))
        assert log.stats()["segment_count"] > 3
        assert len(directory_syncs) == (1 if wal_sync else 0)
        log.sync()
        assert len(directory_syncs) == 1


def test_budgeted_reads_over_padded_records(tmp_path: Path) -> None:
    """entries(max_bytes) reads pieces of a segment; pieces that end inside padding or a padded
    record's header ask for the rest (wal_sync off pads 64 KiB+ payloads appended alone)."""
    payloads = [bytes([k]) * (65_536 + 1000 * k) for k in range(1, 14)]  # spans 1 MiB reads
    with SegmentLog.open(str(tmp_path), wal_sync=False) as log:
        for index, payload in enumerate(payloads, start=1):
            log.append([(index, 1, payload)])
        for budget, expected in [(1, 1), (150_000, 2), (300_000, 4), (None, 13)]:
            got = log.entries(1, 14, max_bytes=budget)
            assert [bytes(p) for _, _, p in got] == payloads[:expected]
        assert [bytes(p) for _, _, p in log.entries(4, 6)] == payloads[3:5]
    (segment,) = tmp_path.glob("*.wal")
    assert segment.stat().st_size > 1024 * 1024  # more than one READ_CHUNK_BYTES piece
    assert segment.stat().st_size > sum(map(len, payloads)) + 13 * 28  # padding is in the file
