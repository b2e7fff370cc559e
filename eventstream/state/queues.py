"""Queue storage: each queue is an ordered log with dense offsets from 0, kept in segment files.

On disk, a queue is the folder `queues/<queue:05d>/` of segment files `<base_offset:020d>.qseg`.
A segment file is a WAL segment image in the storage layer's one record framing
(csrc/wal_format.h, 28-byte header with CRC-32C): record index = queue offset, record term = the
Raft index of the entry that stored the event, payload = the event's batch_codec.h bytes
unchanged. The newest segment is the active one and is only appended to; once it reaches
`queue_segment_bytes` after a batch it is sealed and never changes again, which is what lets
snapshots hard-link it.

Why not the storage layer's SegmentLog class itself: it rolls segments inside a batch, fsyncs on
every roll, holds a lock file and a descriptor per log and a background flusher; a queue needs
rolls at batch boundaries only (for deterministic retention and snapshot cuts), no fsync of its
own (the Raft log is the durable copy) and a bounded number of open files across 65,536 queues.
The bytes on disk are the same format, read by the same native parser.

Determinism (docs/state-machine.md, "Determinism"):
segments roll only after a whole batch, and retention runs right after, dropping whole sealed
segments oldest first while the queue is over its byte cap or the segment's newest event is
older than the queue's newest event minus the age cap (an event stamped past its entry's
proposal time, SET_EVENT_AT, counts as stamped then). Both depend only on applied entries and
replicated config, so every replica cuts and drops the same segments. The newest segment is
always kept, so a queue's byte total may exceed its cap by up to one segment.

Memory: a sparse u32 byte position per 64 stored events (PositionIndex), nothing else per
event; a read walks at most 63 records to reach its first offset.
Durability: segment writes are not synced at apply; the Raft log is the durable copy, and a
snapshot syncs what it links. After a restart the state is rebuilt from the newest snapshot and
the log is replayed from there.
"""

from __future__ import annotations

import mmap
import os
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from eventstream.state._state import (
    PositionIndex,
    QueueDataError,
    QueueLogCore,
    QueueSegment,
    append_touched,
    apply_set_event,
    decode_queue_records,
    scan_queue_segment,
)
from eventstream.state.config import QUEUE_COUNT_MAX, retention_limits
from eventstream.state.errors import OffsetRangeError, SnapshotError, StateError

SEGMENT_SUFFIX = ".qseg"
READ_EVENTS_MAX = 100_000
READ_BYTES_MAX = 64 << 20
# Active segment files kept open for appends; the least recently appended queue's file is closed
# past this, so 65,536 queues never need 65,536 descriptors.
OPEN_SEGMENTS_MAX = 256
# Records a queue gathers in memory before they are written to its segment file (see
# QueueLog.unwritten); with OPEN_SEGMENTS_MAX this bounds the memory at 64 MiB.
WRITE_BEHIND_BYTES = 256 * 1024


class StoredEvent(NamedTuple):
    """An event as read back from a queue, with its offset."""

    offset: int
    event_id: bytes | None
    key: bytes | None
    queue: int | None  # the explicit queue the client named, None when routed by key
    timestamp_us: int
    payload: bytes
    id_generated: bool = False  # the client library made the id up (storage.event.Event)


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}{SEGMENT_SUFFIX}"


def queue_folder(queue: int) -> str:
    return os.path.join("queues", f"{queue:05d}")


def segment_prefix_pieces(path: str, length: int, piece_bytes: int = 1 << 20) -> Iterator[bytes]:
    """The first `length` bytes of a segment file in pieces; an active segment may have grown
    past `length` since it was described, and only that prefix belongs to the description."""
    with open(path, "rb") as f:
        remaining = length
        while remaining:
            piece = f.read(min(remaining, piece_bytes))
            if not piece:
                raise StateError(f"{path}: ends {remaining} bytes before the expected {length}")
            yield piece
            remaining -= len(piece)


def write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


class QueueLog(QueueLogCore):
    """One queue: its segments, offsets and retention.

    QueueLogCore (native) holds segments, next_offset, newest_timestamp_us, bytes_total and
    `unwritten`, and stores each applied batch (append_touched); this class owns the files. `unwritten` holds records
    applied but not yet written to the active segment file. The queue files are not the
    durable copy of the state (a restart rebuilds them from the newest snapshot and the Raft
    log, machine.py _rebuild), so small applies are gathered there and written in large pieces:
    one write per WRITE_BEHIND_BYTES instead of one per queue per entry. Anything that reads
    the files (reads, describe() for digests and snapshots) flushes first.
    """

    def __init__(self, root: str, queue: int) -> None:
        self.queue = queue
        self.folder = os.path.join(root, queue_folder(queue))
        self._active_fd: int | None = None

    @property
    def floor_offset(self) -> int:
        return self.segments[0].base_offset if self.segments else self.next_offset

    def flush(self) -> None:
        """Write the gathered records to the active segment file."""
        if not self.unwritten:
            return
        if self._active_fd is None:
            self._active_fd = os.open(self.segments[-1].path, os.O_WRONLY | os.O_APPEND)
        write_all(self._active_fd, memoryview(self.unwritten))
        self.unwritten = bytearray()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._active_fd is not None:
                os.close(self._active_fd)
                self._active_fd = None

    def start_segment(self, max_ts: int) -> None:
        """Create the next segment file, starting at next_offset (QueueLogCore.append)."""
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, segment_name(self.next_offset))
        self._active_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        self.segments.append(QueueSegment(self.next_offset, path, PositionIndex(), 0, max_ts, False))

    def enforce_retention(self, bytes_max: int, age_ms_max: int) -> int:
        """Drop whole old segments over the caps (0 = no cap); returns how many were dropped."""
        dropped = 0
        age_us_max = age_ms_max * 1000
        while len(self.segments) > 1:
            oldest = self.segments[0]
            over_bytes = bytes_max > 0 and self.bytes_total > bytes_max
            too_old = (
                age_us_max > 0 and oldest.max_timestamp_us < self.newest_timestamp_us - age_us_max
            )
            if not (over_bytes or too_old):
                break
            os.unlink(oldest.path)
            self.bytes_total -= oldest.size_bytes
            self.segments.pop(0)
            dropped += 1
        return dropped

    def read(self, offset: int, limit: int, max_bytes: int) -> list[StoredEvent]:
        """Events from `offset`: at most `limit` and, past the first, at most `max_bytes` of
        stored records (the first event is always returned, so a reader always progresses).
        The caller flushes first (StateMachine.read: a failed write must stop apply)."""
        floor, end = self.floor_offset, self.next_offset
        if not floor <= offset <= end:
            raise OffsetRangeError(
                f"queue {self.queue}: offset {offset} is outside the readable range "
                f"[{floor}, {end}] (retention floor to end)"
            )
        out: list[StoredEvent] = []
        budget = max_bytes
        for segment in self._segments_from(offset):
            first = offset + len(out) - segment.base_offset
            start, skip = segment.index.locate(first)
            with (
                open(segment.path, "rb") as f,
                mmap.mmap(f.fileno(), segment.size_bytes, access=mmap.ACCESS_READ) as image,
            ):
                view = memoryview(image)
                try:
                    events, used = decode_queue_records(
                        view,
                        start,
                        segment.base_offset + first - skip,
                        skip,
                        limit - len(out),
                        budget,
                        not out,
                        StoredEvent,
                    )
                except QueueDataError as e:
                    raise StateError(f"{segment.path}: {e}") from e
                finally:
                    view.release()
            out.extend(events)
            budget -= used
            if len(out) >= limit or offset + len(out) < segment.base_offset + segment.count:
                break  # limit reached, or stopped inside this segment by the byte budget
        return out

    def _segments_from(self, offset: int) -> Iterator[QueueSegment]:
        for segment in self.segments:
            if offset < segment.base_offset + segment.count:
                yield segment


class QueueStore:
    """All queues of one state machine, under `root`."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.logs: dict[int, QueueLog] = {}
        self._appended_recently: OrderedDict[int, QueueLog] = OrderedDict()
        # Next offset per queue number, shared with the native apply loop (updated in place).
        self.next_offsets = array("q")

    def close(self) -> None:
        failure: OSError | None = None
        for log in self.logs.values():
            try:
                log.close()
            except OSError as e:  # every descriptor is closed whatever one flush did
                failure = failure or e
        if failure is not None:
            raise failure

    def flush(self, queue: int | None = None) -> None:
        """Write the gathered records of one queue, or of every queue, to the segment files."""
        if queue is not None:
            log = self.logs.get(queue)
            if log is not None:
                log.flush()
            return
        for log in self.logs.values():
            log.flush()

    def log(self, queue: int) -> QueueLog:
        log = self.logs.get(queue)
        if log is None:
            log = self.logs[queue] = QueueLog(self.root, queue)
        return log

    def _ensure_slots(self, queue_count: int) -> None:
        if len(self.next_offsets) < queue_count:
            self.next_offsets.extend([0] * (queue_count - len(self.next_offsets)))

    def apply_set_event(
        self, batch: memoryview, config: Mapping[str, Any], dedup: Any, log_index: int, first_seen_us: int | None
    ) -> tuple[memoryview, memoryview, memoryview]:
        """Store one SET_EVENT batch, its ids remembered as first seen at first_seen_us (None:
        at each event's timestamp); returns per-event (statuses u8, queues i32, offsets i64)."""
        queue_count = config["queue_count"]
        self._ensure_slots(queue_count)
        statuses, queues, offsets, records, positions, touched = apply_set_event(
            batch, queue_count, dedup, self.next_offsets, log_index, first_seen_us
        )
        mismatch = append_touched(
            self.logs, touched, records, positions, self.next_offsets, config["queue_segment_bytes"],
            WRITE_BEHIND_BYTES, self._appended_recently, self.log, self._note_open,
            lambda queue, log: log.enforce_retention(*retention_limits(config, queue)),
        )
        if mismatch >= 0:
            raise StateError(
                f"queue {mismatch}: stored through {self.logs[mismatch].next_offset} but the apply "
                f"loop assigned through {self.next_offsets[mismatch]}"
            )
        return (
            memoryview(statuses),
            memoryview(queues).cast("i"),
            memoryview(offsets).cast("q"),
        )

    def _note_open(self, queue: int, log: QueueLog) -> None:
        self._appended_recently[queue] = log
        self._appended_recently.move_to_end(queue)
        while len(self._appended_recently) > OPEN_SEGMENTS_MAX:
            _, idle = self._appended_recently.popitem(last=False)
            idle.close()

    def enforce_retention_all(self, config: Mapping[str, Any]) -> None:
        for queue, log in self.logs.items():
            log.enforce_retention(*retention_limits(config, queue))

    def read(
        self, queue: int, offset: int, limit: int, max_bytes: int, queue_count: int
    ) -> list[StoredEvent]:
        if not 1 <= limit <= READ_EVENTS_MAX:
            raise ValueError(f"limit must be in [1, {READ_EVENTS_MAX}], got {limit}")
        if not 1 <= max_bytes <= READ_BYTES_MAX:
            raise ValueError(f"max_bytes must be in [1, {READ_BYTES_MAX}], got {max_bytes}")
        queues = max(len(self.next_offsets), queue_count)
        if not 0 <= queue < queues:
            raise OffsetRangeError(
                f"queue {queue} does not exist; queues are numbered [0, {queues})"
            )
        return self.log(queue).read(offset, limit, max_bytes)

    def describe(self) -> list[dict[str, Any]]:
        """Per queue that ever held an event: offsets, newest timestamp and segments, in queue
        order. This is what a snapshot manifest records and what the digest covers; every
        segment file holds all its bytes once this returns."""
        for log in self.logs.values():
            log.flush()
        out = []
        for queue in sorted(self.logs):
            log = self.logs[queue]
            if log.next_offset == 0:
                continue
            out.append(
                {
                    "queue": queue,
                    "next_offset": log.next_offset,
                    "newest_timestamp_us": log.newest_timestamp_us,
                    "segments": [
                        {
                            "file": os.path.relpath(s.path, self.root),
                            "base_offset": s.base_offset,
                            "bytes": s.size_bytes,
                            "count": s.count,
                            "max_timestamp_us": s.max_timestamp_us,
                            "sealed": s.sealed,
                        }
                        for s in log.segments
                    ],
                }
            )
        return out

    def load(self, queues: list[dict[str, Any]], queue_slots: int) -> None:
        """Rebuild the in-memory view from segment files already placed under root (a restore),
        checking every record against the description; raises SnapshotError on a mismatch."""
        if not 0 <= queue_slots <= QUEUE_COUNT_MAX:
            raise SnapshotError(f"queue_slots {queue_slots} outside [0, {QUEUE_COUNT_MAX}]")
        self._ensure_slots(queue_slots)
        for entry in queues:
            queue = entry["queue"]
            if not 0 <= queue < queue_slots or queue in self.logs:
                raise SnapshotError(f"queue {queue} is out of range or listed twice")
            log = self.log(queue)
            log.next_offset = entry["next_offset"]
            log.newest_timestamp_us = entry["newest_timestamp_us"]
            self.next_offsets[queue] = log.next_offset
            expected_base = None
            for s in entry["segments"]:
                if expected_base is not None and s["base_offset"] != expected_base:
                    raise SnapshotError(
                        f"queue {queue}: segment at {s['base_offset']} does not follow the "
                        f"previous one, which ends at {expected_base}"
                    )
                path = os.path.join(self.root, s["file"])
                segment = QueueSegment(
                    s["base_offset"], path, PositionIndex(), s["bytes"], 0, s["sealed"]
                )
                count, max_ts = scan_segment_file(path, segment)
                # The manifest's newest time may be below the records' own: apply counts an
                # event stamped past its entry's proposal time as stamped then (SET_EVENT_AT).
                if count != s["count"] or (count and s["max_timestamp_us"] > max_ts):
                    raise SnapshotError(
                        f"{path}: holds {count} events (newest {max_ts}), the manifest says "
                        f"{s['count']} (newest {s['max_timestamp_us']})"
                    )
                segment.max_timestamp_us = s["max_timestamp_us"]
                log.segments.append(segment)
                log.bytes_total += segment.size_bytes
                expected_base = segment.base_offset + count
            if log.floor_offset + sum(s.count for s in log.segments) != log.next_offset:
                raise SnapshotError(
                    f"queue {queue}: segments do not cover [{log.floor_offset}, {log.next_offset})"
                )


def scan_segment_file(path: str, segment: QueueSegment) -> tuple[int, int]:
    """Check every record of a segment file and index it; raises SnapshotError on damage."""
    try:
        size = os.path.getsize(path)
        if size != segment.size_bytes:
            raise SnapshotError(f"{path}: {size} bytes, expected {segment.size_bytes}")
        if size == 0:
            return 0, 0
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                count, max_ts = scan_queue_segment(view, segment.base_offset, segment.index)
            finally:
                view.release()
        return count, max_ts
    except QueueDataError as e:
        raise SnapshotError(f"{path}: {e}") from e
