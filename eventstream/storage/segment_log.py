"""SegmentLog: the durable Raft log, a directory of append-only segment files.

Layout of a log directory:
    <first_index:020d>.wal   segments; records back to back (csrc/wal_format.h), the name is
                             the index of the first record; every segment but the active
                             (last) one is sealed: fsynced and never modified again in place
    log.meta                 first index and the term before it, after a compaction
                             (written atomically; absent until the first compaction)
    LOCK                     flock'd while the log is open, so two processes never share it

Loops over records (framing, CRC, scans, range reads), the writes themselves and the append
path are native (eventstream.storage._wal: SegmentFile, LogTail, which SegmentLog extends); this module
keeps the rest of the control flow: segment rolls, durability, recovery, truncation, compaction.
With wal_sync=False the active segment has disk blocks reserved a few MiB ahead of its end
(fallocate, file size unchanged); with wal_sync=True it is extended with zeros 1 MiB ahead of
its records, so each append overwrites written blocks and its fdatasync commits no filesystem
journal (SegmentFile.zero_fill). Sealing or closing a segment cuts what is past its records;
recovery reads an all-zero tail of the last segment as the end of the log, not as a cut.

Durability (docs/storage.md, "Durability"): with wal_sync=True, append() returns only after fdatasync, and appends
from concurrent threads share one fdatasync (group commit). With wal_sync=False, data reaches
the OS at once and a background thread syncs it every sync_interval_ms; close() syncs too.
A sync covers everything written before it: the active segment, segments sealed since the
last sync, and the directory entries of new segment files (the directory is fsynced first).
Truncation, compaction and rewrites fsync the directory before they return.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import mmap
import os
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from eventstream.storage._wal import (
    SPARSE_STRIDE,
    WAL_HEADER_BYTES,
    LogTail,
    SegmentFile,
    prepare_packed,
    read_records,
    scan_records,
)
from eventstream.storage.atomic_file import (
    fsync_directory,
    lock_directory,
    pack_checked,
    unpack_checked,
    write_atomically,
)
from eventstream.storage.errors import (
    CompactedError,
    CorruptionError,
    StorageError,
    UnavailableError,
)

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".wal"
META_FILE = "log.meta"
LOCK_FILE = "LOCK"
SEGMENT_BYTES_DEFAULT = 64 * 1024 * 1024
SEGMENT_BYTES_MIN = 256
SYNC_INTERVAL_MS_DEFAULT = 200
READ_CHUNK_BYTES = 1024 * 1024
_META_MAGIC = b"ESCLOGM1"
_META_LAYOUT = struct.Struct("<QQ")  # first_index, term of first_index - 1
_NAME_DIGITS = 20


@dataclass(frozen=True)
class RecoveryCut:
    """What recovery dropped from the tail of the last segment, and why."""

    path: str
    offset: int
    bytes_dropped: int
    reason: str


def _segment_name(first_index: int) -> str:
    return f"{first_index:0{_NAME_DIGITS}d}{SEGMENT_SUFFIX}"


def _parse_segment_name(name: str) -> int | None:
    stem = name[: -len(SEGMENT_SUFFIX)]
    if name.endswith(SEGMENT_SUFFIX) and len(stem) == _NAME_DIGITS and (stem.isascii() and stem.isdigit()):
        return int(stem)
    return None


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite every byte of `data` at `offset`, resuming after short writes."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class SegmentLog(LogTail):
    """The durable Raft log. Use SegmentLog.open(); all methods are thread-safe.

    Indexes are contiguous: an append must start at last_index + 1 and terms never decrease
    (Raft paper 5.3). first_index/last_index follow etcd's convention: an empty log has
    last_index == first_index - 1, and term(first_index - 1) is still answered.
    """

    def __init__(self, directory: str, segment_bytes: int, wal_sync: bool,
                 sync_interval_ms: int, lock_fd: int) -> None:
        self._directory = directory
        self._segment_bytes = segment_bytes
        self._wal_sync = wal_sync
        # With wal_sync off, a record appended alone with a payload of 64 KiB or more gets it
        # aligned to 64 KiB in the file, after a hole (csrc/wal_format.h, SegmentFile.write):
        # the kernel's copy into the page cache then costs about what a plain write's does.
        # With wal_sync on the fdatasync dominates instead, and an fdatasync per padded record
        # measured slower than per dense one (265 us against 220 us on this disk).
        self._align_payloads = not wal_sync
        # Zeros written ahead of the records (SegmentFile.zero_fill) pay only where every
        # append is synced; open(zero_fill=...) overrides this for measurements and tests.
        self._zero_fill = wal_sync
        self._sync_interval_s = sync_interval_ms / 1000.0
        self._lock_fd = lock_fd
        self._lock = threading.Lock()
        # Invariant: _segments is sorted by first_index and contiguous; _active, when set, is
        # _segments[-1] and the only segment ever written.
        self._segments: list[SegmentFile] = []
        self._firsts: list[int] = []
        self._active: SegmentFile | None = None
        # Segments sealed since the last sync; the next sync (or close) fdatasyncs them, so a
        # roll costs no fdatasync on the append path.
        self._unsynced_sealed: list[SegmentFile] = []
        # A segment file was created since the last sync: its directory entry is made durable
        # by the next sync, together with its bytes.
        self._directory_unsynced = False
        self._first_index = 1
        self._last_index = 0
        self._last_term = 0
        self._prev_term = 0  # term of first_index - 1 when no run covers it
        # Term of index i: _run_terms[k] for the last k with _run_starts[k] <= i (else _prev_term).
        self._run_starts: list[int] = []
        self._run_terms: list[int] = []
        self._recovery: RecoveryCut | None = None
        self._closed = False
        self._failure: BaseException | None = None
        # Group commit: every write gets a sequence number; a sync covers all writes up to the
        # sequence it read. One thread at a time holds the "syncing" token; it is also held by
        # operations that close or replace file descriptors, so a sync never sees a closed fd.
        self._sync_cond = threading.Condition(threading.Lock())
        self._syncing = False
        self._written_seq = 0
        self._synced_seq = 0
        self._last_sync_time = time.monotonic()
        self._records_appended = 0
        self._bytes_appended = 0
        self._fdatasync_count = 0

    # ------------------------------------------------------------------ open and recovery

    @classmethod
    def open(cls, directory: str, *, segment_bytes: int = SEGMENT_BYTES_DEFAULT,
             wal_sync: bool = True,
             sync_interval_ms: int = SYNC_INTERVAL_MS_DEFAULT,
             zero_fill: bool | None = None) -> SegmentLog:
        """Opens (creating if needed) the log in `directory` and recovers it.

        A torn or corrupt tail of the last segment is cut at the first bad record, logged, and
        reported by `recovery`. Damage in any earlier segment raises CorruptionError naming the
        file and offset; nothing is guessed.
        """
        if segment_bytes < SEGMENT_BYTES_MIN:
            raise StorageError(f"segment_bytes must be at least {SEGMENT_BYTES_MIN}")
        if sync_interval_ms <= 0:
            raise StorageError("sync_interval_ms must be positive")
        os.makedirs(directory, exist_ok=True)
        lock_fd = lock_directory(directory, LOCK_FILE, "log")
        self = cls(directory, segment_bytes, wal_sync, sync_interval_ms, lock_fd)
        if zero_fill is not None:
            self._zero_fill = zero_fill
        try:
            self._recover()
        except BaseException:
            self._close_files()
            raise
        if not wal_sync:
            _interval_flusher.register(self)
        return self

    def _recover(self) -> None:
        directory = self._directory
        for name in os.listdir(directory):
            if name.endswith(".tmp"):  # an interrupted atomic write or segment rewrite
                os.unlink(os.path.join(directory, name))
        meta = unpack_checked(os.path.join(directory, META_FILE), _META_MAGIC, _META_LAYOUT)
        firsts = sorted(
            first for first in map(_parse_segment_name, os.listdir(directory)) if first is not None
        )
        if meta is not None:
            # Finish a compaction that wrote log.meta but crashed before unlinking everything.
            meta_first = meta[0]
            while len(firsts) > 1 and firsts[1] <= meta_first:
                self._unlink(os.path.join(directory, _segment_name(firsts.pop(0))))
        prev_term = meta[1] if meta is not None and firsts and firsts[0] == meta[0] else 0
        for position, first in enumerate(firsts):
            is_last = position == len(firsts) - 1
            prev_term = self._load_segment(first, is_last, prev_term)
        if meta is not None:
            self._apply_meta(*meta)
        elif self._segments:
            self._first_index = self._segments[0].first_index
        # Makes the unlinks above durable (temp files, segments of a finished compaction).
        fsync_directory(directory)
        if self._active is not None:
            # The tail may exist only in the page cache (the previous process did not sync it);
            # make it durable before Raft acts on it, e.g. by voting.
            os.fdatasync(self._active.fd)
            self._fdatasync_count += 1

    def _load_segment(self, first: int, is_last: bool, prev_term: int) -> int:
        path = os.path.join(self._directory, _segment_name(first))
        if self._segments and first != self._last_index + 1:
            raise CorruptionError(
                f"{path}: offset 0: segment starts at index {first}, expected {self._last_index + 1}"
            )
        fd = os.open(path, os.O_RDWR)
        segment = SegmentFile(path, first, fd)
        self._segments.append(segment)
        self._firsts.append(first)
        file_bytes = os.fstat(fd).st_size
        with _mapped(fd, file_bytes) as image:
            count, valid_bytes, last_term, term_starts, sparse, status, reason = scan_records(
                image, first, prev_term
            )
        if status != 0 or valid_bytes != file_bytes:
            if not is_last:
                raise CorruptionError(
                    f"{path}: offset {valid_bytes}: {reason} (damage before the tail of the log)"
                )
            zero_tail = _all_zero(fd, valid_bytes, file_bytes)
            os.ftruncate(fd, valid_bytes)
            os.fdatasync(fd)
            if zero_tail:
                # The zeros a wal_sync log writes ahead of its records (SegmentFile.zero_fill):
                # no byte of any further record reached the file, so nothing was cut.
                log.info("%s: %d zero bytes after the last record removed", path,
                         file_bytes - valid_bytes)
            else:
                self._recovery = RecoveryCut(path, valid_bytes, file_bytes - valid_bytes, reason)
                log.warning("recovery cut %s at offset %d: %d bytes dropped (%s)",
                            path, valid_bytes, file_bytes - valid_bytes, reason)
        if count == 0 and not is_last:
            raise CorruptionError(f"{path}: offset 0: sealed segment holds no record")
        segment.count = count
        segment.size = valid_bytes
        segment.sparse.frombytes(sparse)
        for index, term in term_starts:
            self._add_run(index, term)
        self._last_index = first + count - 1
        self._last_term = last_term if count else prev_term
        if is_last:
            self._active = segment
            segment.zero_fill = self._zero_fill
        return self._last_term

    def _apply_meta(self, first_index: int, prev_term: int) -> None:
        if self._segments and self._last_index < first_index - 1:
            # Compacted past the end of the log (a snapshot install): nothing below survives.
            for segment in list(self._segments):
                self._drop_segment(segment)
        if self._segments and self._segments[0].first_index > first_index:
            raise CorruptionError(
                f"{self._segments[0].path}: offset 0: log.meta starts the log at {first_index} "
                f"but the first segment starts at {self._segments[0].first_index}"
            )
        self._first_index = first_index
        self._prev_term = prev_term
        if not self._segments:
            self._last_index = first_index - 1
            self._last_term = prev_term
            self._run_starts.clear()
            self._run_terms.clear()

    @property
    def recovery(self) -> RecoveryCut | None:
        """The tail cut made when this log was opened, or None if the log was clean."""
        return self._recovery

    # ------------------------------------------------------------------ reads

    @property
    def first_index(self) -> int:
        return self._first_index

    @property
    def directory(self) -> str:
        return self._directory

    def term(self, index: int) -> int:
        """Term of the entry at `index`; index first_index - 1 is answered too (Raft 5.3 needs
        the term of prevLogIndex)."""
        with self._lock:
            self._check_open()
            return self._term_locked(index)

    def _term_locked(self, index: int) -> int:
        if index < self._first_index - 1:
            raise CompactedError(f"index {index} is compacted (first index {self._first_index})")
        if index > self._last_index:
            raise UnavailableError(f"index {index} is after the last index {self._last_index}")
        position = bisect.bisect_right(self._run_starts, index) - 1
        return self._run_terms[position] if position >= 0 else self._prev_term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[tuple[int, int, memoryview]]:
        """Entries lo <= index < hi as (index, term, payload) with zero-copy payload views.

        With max_bytes, stops before the payload total would exceed it, but always returns at
        least one entry when lo < hi. Every record's CRC is checked on the way out.
        """
        with self._lock:
            self._check_open()
            if lo < self._first_index:
                raise CompactedError(f"index {lo} is compacted (first index {self._first_index})")
            if hi > self._last_index + 1:
                raise UnavailableError(f"index {hi - 1} is after the last index {self._last_index}")
            if lo > hi:
                raise StorageError(f"entries({lo}, {hi}): lo is above hi")
            budget = -1 if max_bytes is None else max_bytes
            out: list[tuple[int, int, memoryview]] = []
            taken = 0
            index = lo
            while index < hi:
                segment = self._segments[bisect.bisect_right(self._firsts, index) - 1]
                segment_hi = min(hi, segment.last_index + 1)
                taken, stopped = self._read_segment(segment, index, segment_hi, budget, taken, out)
                if stopped:
                    break
                index = segment_hi
            return out

    def _read_segment(self, segment: SegmentFile, lo: int, hi: int, budget: int, taken: int,
                      out: list[tuple[int, int, memoryview]]) -> tuple[int, bool]:
        """Appends segment records lo..hi-1 to `out`; returns (payload bytes taken, budget hit)."""
        offset, at = segment.locate(lo)
        end = segment.end_offset(hi)
        need = 0
        while at < hi:
            length = end - offset
            if budget >= 0:
                # Read about what the budget can still take, plus the records skipped before lo.
                length = min(length, max(READ_CHUNK_BYTES, budget - taken + WAL_HEADER_BYTES * SPARSE_STRIDE))
            length = max(length, min(need, segment.size - offset))
            data = os.pread(segment.fd, length, offset)
            if len(data) != length:
                raise CorruptionError(f"{segment.path}: offset {offset + len(data)}: file is "
                                      f"shorter than its indexed records")
            records, at, consumed, need, stop, taken = read_records(
                data, at, lo, hi, budget, taken, bool(out), segment.path, offset
            )
            out.extend(records)
            if stop:
                return taken, at < hi
            if consumed == 0 and need == 0:
                raise CorruptionError(f"{segment.path}: offset {offset}: no record where the "
                                      f"index expects record {at}")
            offset += consumed
        return taken, False

    def sealed_segments(self) -> list[str]:
        """Paths of the sealed segments, oldest first: complete, durable files that are never
        modified in place again (a truncation rewrites a copy), so a snapshot may hard-link them.
        """
        while True:
            with self._lock:
                self._check_open()
                if not self._unsynced_sealed:
                    return [s.path for s in self._segments if s is not self._active]
                seq = self._written_seq
            self._sync_through(seq)

    def stats(self) -> dict[str, int]:
        """Counters since open: appended records and bytes, fdatasync calls, segments."""
        with self._lock:
            return {
                "records_appended": self._records_appended,
                "bytes_appended": self._bytes_appended,
                "fdatasync_count": self._fdatasync_count,
                "segment_count": len(self._segments),
            }

    # ------------------------------------------------------------------ appends

    def append(self, records: Iterable[tuple[int, int, Any]]) -> None:
        """Appends (index, term, payload) records; the first must be last_index + 1.

        The whole batch is validated before any byte is written. With wal_sync=True the call
        returns once the records are on disk (fdatasync, shared with concurrent appends).
        """
        ticket = self.append_nowait(records)
        if self._wal_sync:
            self.wait_durable(ticket)

    def append_packed(self, first_index: int, term: int, buffer: Any, lengths: Any) -> None:
        """Appends len(lengths) records of one term whose payloads lie back to back in
        `buffer`; `lengths` is a buffer of uint32 (array('I'), numpy uint32...). No per-record
        Python object is built. Durability as for append()."""
        ticket = self.append_packed_nowait(first_index, term, buffer, lengths)
        if self._wal_sync:
            self.wait_durable(ticket)

    def append_packed_nowait(self, first_index: int, term: int, buffer: Any, lengths: Any) -> int:
        """append_packed() without waiting for durability; returns a wait_durable() ticket."""
        with self._lock:
            self._check_open()
            if first_index != self._last_index + 1:
                raise StorageError(
                    f"index {first_index} is not the next index {self._last_index + 1}"
                )
            prepared = prepare_packed(first_index, term, self._last_term, buffer, lengths)
            return self._write_prepared(prepared)

    def wait_durable(self, ticket: int) -> None:
        """Returns once the appends up to `ticket` are on disk. Concurrent waiters share one
        fdatasync (group commit)."""
        self._sync_through(ticket)

    def _undo_partial_write(self, segment: SegmentFile, error: OSError) -> None:
        """A failed write may leave part of a record; cut it so the file stays a valid prefix."""
        try:
            os.ftruncate(segment.fd, segment.size)
            segment.keep_records(segment.count, segment.size)  # the cut also took any zero fill
        except OSError as second:
            self._failure = second
            raise StorageError(f"{segment.path}: write failed ({error}) and the partial record "
                               f"at offset {segment.size} could not be cut ({second}); "
                               f"the log is closed to writes") from error
        raise StorageError(f"{segment.path}: write at offset {segment.size} failed: {error}") \
            from error

    def _create_segment(self, first_index: int) -> SegmentFile:
        path = os.path.join(self._directory, _segment_name(first_index))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise StorageError(f"{path}: segment file already exists") from None
        self._directory_unsynced = True
        segment = SegmentFile(path, first_index, fd)
        segment.zero_fill = self._zero_fill
        self._segments.append(segment)
        self._firsts.append(first_index)
        self._active = segment
        return segment

    def _seal_active(self) -> None:
        """Closes the active segment to writes; the next write starts a new one. Its bytes
        become durable with the next sync, before that sync reports anything durable."""
        if self._active is not None:
            self._active.release_preallocation()
            self._unsynced_sealed.append(self._active)
            self._active = None

    def _add_run(self, index: int, term: int) -> None:
        self._run_starts.append(index)
        self._run_terms.append(term)

    # ------------------------------------------------------------------ durability

    def sync(self) -> None:
        """Makes every append so far durable."""
        with self._lock:
            self._check_open()
            seq = self._written_seq
        self._sync_through(seq)

    def _sync_through(self, seq: int) -> None:
        """Group commit: returns once writes up to `seq` are durable. The first waiter syncs for
        everyone who wrote before it read the sequence; later ones ride on its fdatasync."""
        if not self._acquire_sync_token(seq):
            return
        target = 0
        try:
            with self._lock:
                target = self._written_seq
                segments, directory = self._take_unsynced_locked()
            self._fdatasync_all(segments, directory)
        except BaseException:
            target = 0
            raise
        finally:
            self._release_sync_token(target)

    def _take_unsynced_locked(self) -> tuple[list[SegmentFile], bool]:
        """Every segment that may hold writes not yet synced (sealed since the last sync, and
        the active one) and whether the directory has new entries. Invariant kept: no other
        segment holds unsynced writes."""
        segments = self._unsynced_sealed
        self._unsynced_sealed = []
        if self._active is not None:
            segments.append(self._active)
        directory = self._directory_unsynced
        self._directory_unsynced = False
        return segments, directory

    def _fdatasync_all(self, segments: list[SegmentFile], directory: bool) -> None:
        """fsyncs the directory (when it has new segment files) and fdatasyncs each segment.
        Called holding the sync token, which every operation that closes a descriptor also
        takes, so no descriptor here can be closed meanwhile."""
        if directory:
            try:
                fsync_directory(self._directory)
            except OSError as error:
                self._failure = error
                raise StorageError(f"{self._directory}: directory fsync failed: {error}") \
                    from error
        for segment in segments:
            try:
                os.fdatasync(segment.fd)
            except OSError as error:
                # After a failed fsync the kernel may have dropped the dirty pages: the only
                # safe state is failed (never retry and report success).
                self._failure = error
                raise StorageError(f"{segment.path}: fdatasync failed: {error}") from error
        with self._lock:
            self._fdatasync_count += len(segments)

    def _acquire_sync_token(self, seq: int | None) -> bool:
        """Waits for the token; False (token not taken) once writes up to `seq` are synced."""
        with self._sync_cond:
            while True:
                if seq is not None and self._synced_seq >= seq:
                    return False
                if not self._syncing:
                    self._syncing = True
                    return True
                self._sync_cond.wait()

    def _release_sync_token(self, synced_seq: int) -> None:
        with self._sync_cond:
            self._syncing = False
            self._synced_seq = max(self._synced_seq, synced_seq)
            if synced_seq:
                self._last_sync_time = time.monotonic()
            self._sync_cond.notify_all()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Holds the sync token and the lock: for operations that close or replace files."""
        self._acquire_sync_token(None)
        try:
            with self._lock:
                self._check_open()
                yield
        finally:
            self._release_sync_token(0)

    def _maybe_sync_on_interval(self) -> None:
        """Called by the background flusher (wal_sync=False)."""
        if self._closed or self._written_seq <= self._synced_seq:
            return
        if time.monotonic() - self._last_sync_time < self._sync_interval_s:
            return
        self.sync()

    # ------------------------------------------------------------------ truncation, compaction

    def truncate_after(self, index: int) -> None:
        """Deletes entries after `index` (a conflicting suffix, Raft paper 5.3)."""
        with self._exclusive():
            if index >= self._last_index:
                return
            if index < self._first_index - 1:
                raise CompactedError(
                    f"cannot truncate after {index}: compacted through {self._first_index - 1}"
                )
            new_last_term = self._term_locked(index)
            while self._segments and self._segments[-1].first_index > index:
                self._drop_segment(self._segments[-1])
            if self._segments and self._segments[-1].last_index > index:
                self._cut_segment(self._segments[-1], index)
            else:
                # Cut at a segment boundary: the remaining last segment stays sealed and the
                # next append opens a new one.
                self._active = None
            fsync_directory(self._directory)
            self._last_index = index
            self._last_term = new_last_term
            keep = bisect.bisect_right(self._run_starts, index)
            del self._run_starts[keep:]
            del self._run_terms[keep:]

    def _cut_segment(self, segment: SegmentFile, index: int) -> None:
        """Keeps records through `index`; a sealed segment is rewritten as a new file first."""
        offset = self._offset_after(segment, index)
        if segment is self._active:
            os.ftruncate(segment.fd, offset)
        else:
            self._rewrite_prefix(segment, offset)
            if segment in self._unsynced_sealed:
                self._unsynced_sealed.remove(segment)
            self._active = segment
        os.fdatasync(segment.fd)
        self._fdatasync_count += 1
        segment.keep_records(index - segment.first_index + 1, offset)

    def _offset_after(self, segment: SegmentFile, index: int) -> int:
        offset, at = segment.locate(index)
        end = segment.end_offset(index + 1)
        data = os.pread(segment.fd, end - offset, offset)
        _, next_index, consumed, _, _, _ = read_records(
            data, at, at, index + 1, -1, 0, False, segment.path, offset
        )
        if next_index != index + 1:
            raise CorruptionError(f"{segment.path}: offset {offset + consumed}: record "
                                  f"{next_index} is not where the index expects it")
        return offset + consumed

    def _rewrite_prefix(self, segment: SegmentFile, size: int) -> None:
        """Copy-on-write: hard links to the old file (snapshots) keep their bytes."""
        temp = f"{segment.path}.tmp"
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            copied = 0
            while copied < size:
                chunk = os.pread(segment.fd, min(READ_CHUNK_BYTES, size - copied), copied)
                if not chunk:
                    raise CorruptionError(f"{segment.path}: offset {copied}: unexpected end")
                _pwrite_all(fd, chunk, copied)
                copied += len(chunk)
            os.fdatasync(fd)
            os.replace(temp, segment.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        os.close(segment.fd)
        segment.fd = fd

    def compact_through(self, index: int, term: int | None = None) -> None:
        """Drops entries through `index` after a snapshot covers them (Raft paper 7).

        Compacting beyond last_index (installing a snapshot) empties the log and needs `term`,
        the snapshot's last included term; the next append is then index + 1.
        """
        with self._exclusive():
            if index < self._first_index:
                return
            if index > self._last_index:
                if term is None:
                    raise StorageError(f"compacting through {index}, past the last index "
                                       f"{self._last_index}, needs that index's term")
                prev_term = term
            else:
                prev_term = self._term_locked(index)
                if term is not None and term != prev_term:
                    raise StorageError(f"term {term} given for index {index}, log has {prev_term}")
            # log.meta goes first: a crash after it but before the unlinks is finished on open.
            write_atomically(os.path.join(self._directory, META_FILE),
                             pack_checked(_META_MAGIC, _META_LAYOUT, index + 1, prev_term))
            while self._segments and (
                self._segments[0].last_index <= index or index > self._last_index
            ):
                self._drop_segment(self._segments[0])
            fsync_directory(self._directory)
            self._first_index = index + 1
            self._prev_term = prev_term
            if index > self._last_index or not self._segments:
                self._last_index = index
                self._last_term = prev_term
                self._run_starts.clear()
                self._run_terms.clear()
            else:
                # Keep the run that covers first_index - 1; older runs describe dropped entries.
                keep_from = max(0, bisect.bisect_right(self._run_starts, index) - 1)
                del self._run_starts[:keep_from]
                del self._run_terms[:keep_from]

    def _drop_segment(self, segment: SegmentFile) -> None:
        """Unlinks a segment (the caller fsyncs the directory). Hard links elsewhere survive."""
        position = self._segments.index(segment)
        del self._segments[position]
        del self._firsts[position]
        if segment in self._unsynced_sealed:
            self._unsynced_sealed.remove(segment)
        if segment is self._active:
            self._active = None
        os.close(segment.fd)
        self._unlink(segment.path)

    @staticmethod
    def _unlink(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    # ------------------------------------------------------------------ lifecycle

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self._directory}: log is closed")
        if self._failure is not None:
            raise StorageError(f"{self._directory}: log failed earlier: {self._failure}")

    def close(self) -> None:
        """Syncs outstanding appends and closes the files. Idempotent."""
        if self._closed:
            return
        _interval_flusher.unregister(self)
        self._acquire_sync_token(None)
        try:
            with self._lock:
                if self._closed:
                    return
                segments, directory = self._take_unsynced_locked()
                unsynced = self._written_seq > self._synced_seq or len(segments) > 1
            try:
                if (unsynced or directory) and self._failure is None:
                    self._fdatasync_all(segments, directory)
            finally:
                with self._lock:
                    self._close_files()
        finally:
            self._release_sync_token(0)

    def _close_files(self) -> None:
        self._closed = True
        if self._active is not None:
            self._active.release_preallocation()
        for segment in self._segments:
            os.close(segment.fd)
        self._segments.clear()
        self._firsts.clear()
        self._active = None
        os.close(self._lock_fd)

    def __enter__(self) -> SegmentLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<SegmentLog {self._directory} first={self._first_index} "
                f"last={self._last_index} segments={len(self._segments)}>")


@contextlib.contextmanager
def _mapped(fd: int, size: int) -> Iterator[Any]:
    """A read-only map of the first `size` bytes of fd (b"" for an empty file)."""
    if size == 0:
        yield b""
        return
    image = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    try:
        yield image
    finally:
        image.close()


def _all_zero(fd: int, start: int, end: int) -> bool:
    """Whether bytes [start, end) of the file are all zero."""
    piece_bytes = 1 << 20
    position = start
    while position < end:
        piece = os.pread(fd, min(piece_bytes, end - position), position)
        if not piece or piece.count(0) != len(piece):
            return False
        position += len(piece)
    return True


class _IntervalFlusher:
    """One daemon thread that syncs every open wal_sync=False log on its interval."""

    _TICK_S = 0.02

    def __init__(self) -> None:
        self._logs: weakref.WeakSet[SegmentLog] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def register(self, segment_log: SegmentLog) -> None:
        with self._lock:
            self._logs.add(segment_log)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wal-flusher", daemon=True)
                self._thread.start()

    def unregister(self, segment_log: SegmentLog) -> None:
        with self._lock:
            self._logs.discard(segment_log)

    def _run(self) -> None:
        while True:
            time.sleep(self._TICK_S)
            with self._lock:
                logs = list(self._logs)
            for segment_log in logs:
                try:
                    segment_log._maybe_sync_on_interval()
                except StorageError:
                    pass  # closed meanwhile; close() synced it
                except OSError as error:
                    # Reported on the log's next call instead of dying silently here.
                    log.error("background sync of %s failed: %s", segment_log.directory, error)
                    segment_log._failure = error


_interval_flusher = _IntervalFlusher()
