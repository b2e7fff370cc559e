"""Plain-Python model of the state machine, for differential tests (docs/conventions.md §8 and §19).

Obviously correct rather than fast: events in lists, ids in insertion-ordered dicts keyed by
the id bytes (one per class: ids callers chose, ids the client library generated), segments as
plain lists. It follows the same rules as the real machine (routing, check-and-add, segment
rolling after a batch, whole-segment retention, read limits) and shares only the configuration
validation with it. It stores no files.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import mmh3

from eventstream.state.commands import SET_EVENT_AT_HEAD, CommandType
from eventstream.state.config import default_config, merge_config, retention_limits, validate_config
from eventstream.storage.codec_reference import decode_batch
from eventstream.storage.event import Event

STORED, DUPLICATE, BAD_QUEUE, DEDUP_FULL = 0, 1, 2, 3
RECORD_HEADER_BYTES = 28 + 24  # WAL record header + codec event header


def record_bytes(event: Event) -> int:
    return (
        RECORD_HEADER_BYTES
        + len(event.event_id or b"")
        + len(event.key or b"")
        + len(event.payload)
    )


@dataclass
class ModelSegment:
    base_offset: int
    events: list[Event] = field(default_factory=list)
    size_bytes: int = 0
    max_timestamp_us: int = 0
    sealed: bool = False


@dataclass
class ModelQueue:
    segments: list[ModelSegment] = field(default_factory=list)
    next_offset: int = 0
    newest_timestamp_us: int = 0

    @property
    def floor_offset(self) -> int:
        return self.segments[0].base_offset if self.segments else self.next_offset


class ReferenceStateMachine:
    def __init__(self) -> None:
        self.config: dict[str, Any] = default_config()
        self.queues: dict[int, ModelQueue] = {}
        self.dedup: dict[bytes, tuple[int, int, int]] = {}
        self.dedup_generated: dict[bytes, tuple[int, int, int]] = {}
        self.applied_index = 0

    def apply(self, index: int, data: bytes) -> tuple[Any, list[int], list[int], list[int], int]:
        """(command, statuses, queues, offsets, expired) for one entry."""
        assert index == self.applied_index + 1
        self.applied_index = index
        if not data:
            return None, [], [], [], 0
        kind, body = data[0], data[1:]
        if kind == CommandType.SET_EVENT:
            return (kind, *self._set_event(decode_batch(body), None), 0)
        if kind == CommandType.SET_EVENT_AT:
            _, first_seen_us = SET_EVENT_AT_HEAD.unpack_from(data)
            return (kind, *self._set_event(decode_batch(data[SET_EVENT_AT_HEAD.size:]), first_seen_us), 0)
        if kind == CommandType.DEDUP_ADD:
            (count,) = struct.unpack_from("<I", body)
            pos, statuses = 4, []
            for _ in range(count):
                id_len, seen = struct.unpack_from("<Hq", body, pos)
                event_id = body[pos + 10 : pos + 10 + id_len]
                pos += 10 + id_len
                statuses.append(self._remember(self.dedup, event_id, -1, -1, seen))
            return kind, statuses, [], [], 0
        if kind == CommandType.DEDUP_EXPIRE:
            if len(body) == 8:
                cutoff = generated_cutoff = struct.unpack("<q", body)[0]
            else:
                cutoff, generated_cutoff = struct.unpack("<qq", body)
            expired = 0
            for ids, before in ((self.dedup, cutoff), (self.dedup_generated, generated_cutoff)):
                for event_id, (_, _, seen) in list(ids.items()):
                    if seen >= before:
                        break
                    del ids[event_id]
                    expired += 1
            return kind, [], [], [], expired
        if kind == CommandType.CONFIG_UPDATE:
            update = validate_config(json.loads(body))
            self.config = merge_config(self.config, update)
            if any(k.startswith("retention") or k == "queue_retention" for k in update):
                for queue in self.queues:
                    self._retention(queue)
            return kind, [], [], [], 0
        raise ValueError(f"unknown command {kind}")

    def _remember(self, ids: dict[bytes, tuple[int, int, int]], event_id: bytes, queue: int, offset: int,
                  seen: int) -> int:
        if event_id in ids:
            return DUPLICATE
        if len(self.dedup) + len(self.dedup_generated) >= self.config["dedup_ids_max"]:
            return DEDUP_FULL
        ids[event_id] = (queue, offset, seen)
        return STORED

    def _set_event(self, events: list[Event], first_seen_us: int | None) -> tuple[list[int], list[int], list[int]]:
        queue_count = self.config["queue_count"]
        statuses, queues, offsets = [], [], []
        arrived: dict[int, list[Event]] = {}
        next_offsets = {q: self.queues[q].next_offset for q in self.queues}
        for event in events:
            if event.queue is not None:
                if event.queue >= queue_count:
                    statuses.append(BAD_QUEUE)
                    queues.append(-1)
                    offsets.append(-1)
                    continue
                queue = event.queue
            else:
                queue = mmh3.hash(event.key or b"", signed=False) % queue_count
            offset = next_offsets.get(queue, 0)
            if event.event_id is not None:
                seen = event.timestamp_us if first_seen_us is None else first_seen_us
                ids = self.dedup_generated if event.id_generated else self.dedup
                status = self._remember(ids, event.event_id, queue, offset, seen)
                if status == DUPLICATE:
                    first_queue, first_offset, _ = ids[event.event_id]
                    statuses.append(DUPLICATE)
                    queues.append(first_queue)
                    offsets.append(first_offset)
                    continue
                if status == DEDUP_FULL:
                    statuses.append(DEDUP_FULL)
                    queues.append(-1)
                    offsets.append(-1)
                    continue
            statuses.append(STORED)
            queues.append(queue)
            offsets.append(offset)
            next_offsets[queue] = offset + 1
            arrived.setdefault(queue, []).append(event)
        for queue in sorted(arrived):
            self._append(queue, arrived[queue], first_seen_us)
            self._retention(queue)
        return statuses, queues, offsets

    def _append(self, queue: int, events: list[Event], first_seen_us: int | None) -> None:
        q = self.queues.setdefault(queue, ModelQueue())
        if not q.segments or q.segments[-1].sealed:
            q.segments.append(ModelSegment(q.next_offset))
        segment = q.segments[-1]
        # For age retention an event stamped past the proposal time counts as stamped then.
        batch_max = max(e.timestamp_us if first_seen_us is None else min(e.timestamp_us, first_seen_us)
                        for e in events)
        segment.max_timestamp_us = (
            max(segment.max_timestamp_us, batch_max) if segment.events else batch_max
        )
        q.newest_timestamp_us = (
            max(q.newest_timestamp_us, batch_max) if q.next_offset else batch_max
        )
        segment.events.extend(events)
        segment.size_bytes += sum(record_bytes(e) for e in events)
        q.next_offset += len(events)
        if segment.size_bytes >= self.config["queue_segment_bytes"]:
            segment.sealed = True

    def _retention(self, queue: int) -> None:
        bytes_max, age_ms_max = retention_limits(self.config, queue)
        q = self.queues[queue]
        while len(q.segments) > 1:
            total = sum(s.size_bytes for s in q.segments)
            oldest = q.segments[0]
            over_bytes = bytes_max and total > bytes_max
            too_old = age_ms_max and (
                oldest.max_timestamp_us < q.newest_timestamp_us - age_ms_max * 1000
            )
            if not (over_bytes or too_old):
                break
            q.segments.pop(0)

    def queue_range(self, queue: int) -> tuple[int, int]:
        q = self.queues.get(queue)
        return (q.floor_offset, q.next_offset) if q else (0, 0)

    def read(self, queue: int, offset: int, limit: int, max_bytes: int) -> list[tuple[int, Event]]:
        q = self.queues.get(queue, ModelQueue())
        if not q.floor_offset <= offset <= q.next_offset:
            raise LookupError(offset)
        retained = [(s.base_offset + i, e) for s in q.segments for i, e in enumerate(s.events)]
        out: list[tuple[int, Event]] = []
        used = 0
        for at, event in retained:
            if at < offset:
                continue
            if len(out) == limit:
                break
            size = record_bytes(event)
            if out and used + size > max_bytes:
                break
            out.append((at, event))
            used += size
        return out
