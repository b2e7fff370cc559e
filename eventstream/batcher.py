"""ProposalBatcher: coalesces concurrent client appends into one SET_EVENT_AT Raft entry.

This is the Python reference of the leader's entry building: the node runs its native twin,
csrc/_append_intake.pyx AppendIntake (which also reads the requests and frames the answers),
and tests/unit/transport/test_append_intake.py checks both build the same entries.

Many clients each sending one event would otherwise cost one entry, one WAL record and one
fdatasync each. The leader instead gathers every append that arrives while the previous entry
is being written and proposes them together (up to batch_size events or batch_bytes_max), so
throughput grows with the number of clients instead of being capped by fsyncs per second.

Client batches are validated natively when they arrive (csrc/_append_intake.pyx) (a malformed batch is refused
then and never reaches the log, where it would stop every replica's apply). Merging them is one
header plus the event bytes of each batch back to back (csrc/batch_codec.h): events are never
decoded or re-encoded. One client request always lands whole in one entry, so its events are
committed together and answered with one log index.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from eventstream.state.commands import SET_EVENT_AT_HEAD, CommandType
from eventstream.storage.codec import BATCH_HEADER_BYTES, BATCH_VERSION

_BATCH_HEADER = struct.Struct("<BBHII")


@dataclass(slots=True)
class PendingAppend:
    """One client request waiting for its entry to be applied."""

    session: object
    request_id: int
    event_count: int
    received_at: float
    # Position of this request's first event within its entry; set when the entry is built.
    first_event: int = 0


@dataclass(slots=True)
class BuiltEntry:
    data: bytes
    waiters: list[PendingAppend]
    event_count: int


class ProposalBatcher:
    """Invariant: pending batches are validated codec batches whose events sum to
    pending_events, and whose event bytes (past each batch header) sum to pending_bytes."""

    def __init__(self, batch_size: int, batch_bytes_max: int) -> None:
        self.batch_size = batch_size
        self.batch_bytes_max = batch_bytes_max
        self._batches: list[memoryview] = []
        self._waiters: list[PendingAppend] = []
        self.pending_events = 0
        self.pending_bytes = 0

    def __len__(self) -> int:
        return len(self._waiters)

    def add(self, batch: bytes | memoryview, waiter: PendingAppend, start: int = 0) -> None:
        """Queue a validated batch that begins at batch[start] (a request body holds one after
        its header, so the request need not be sliced first)."""
        events = memoryview(batch)[start + BATCH_HEADER_BYTES:]
        self._batches.append(events)
        self._waiters.append(waiter)
        self.pending_events += waiter.event_count
        self.pending_bytes += len(events)

    def take(self, first_seen_us: int) -> BuiltEntry | None:
        """The next entry's data and the requests it carries, or None when nothing waits; its
        ids are to be remembered as first seen at first_seen_us (the leader's clock now).

        Takes requests in arrival order until adding the next would pass batch_size events or
        batch_bytes_max bytes; a single request larger than that forms an entry of its own.
        """
        if not self._waiters:
            return None
        events = 0
        size = 0
        n = 0
        for view, waiter in zip(self._batches, self._waiters):
            if n and (events + waiter.event_count > self.batch_size or size + len(view) > self.batch_bytes_max):
                break
            waiter.first_event = events
            events += waiter.event_count
            size += len(view)
            n += 1
        parts: list[bytes | memoryview] = [
            SET_EVENT_AT_HEAD.pack(CommandType.SET_EVENT_AT, first_seen_us),
            _BATCH_HEADER.pack(BATCH_VERSION, 0, 0, events, BATCH_HEADER_BYTES + size),
        ]
        parts.extend(self._batches[:n])
        waiters = self._waiters[:n]
        del self._batches[:n]
        del self._waiters[:n]
        self.pending_events -= events
        self.pending_bytes -= size
        return BuiltEntry(b"".join(parts), waiters, events)

    def drain(self) -> list[PendingAppend]:
        """Remove and return every waiting request (this node stopped leading)."""
        waiters = self._waiters
        self._batches = []
        self._waiters = []
        self.pending_events = 0
        self.pending_bytes = 0
        return waiters
