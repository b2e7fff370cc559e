"""READ requests: stale reads served at once, the others after a ReadIndex round confirms the
leader still leads and this node has applied through the index it confirmed (thesis 6.4)."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from eventstream.node.answers import Replies
from eventstream.node.clock import Clock
from eventstream.raft.node import NotLeaderError, RaftNode, ReadState
from eventstream.state import OffsetRangeError, StateMachine
from eventstream.storage.codec import encode_batch
from eventstream.transport.client_protocol import (
    Consistency,
    Request,
    Status,
    decode_read,
    encode_read_ok,
    encode_response,
)
from eventstream.transport.client_server import ClientSession

READ_TIMEOUT_S = 5.0
READ_BYTES_MAX = 16 * 1024 * 1024
READ_EVENTS_MAX = 100_000
# Reads kept waiting for their ReadIndex confirmation or for apply to catch up.
PENDING_READS_MAX = 100_000


@dataclass(slots=True)
class PendingRead:
    session: ClientSession
    request_id: int
    queue: int
    offset: int
    limit: int
    max_bytes: int
    deadline: float
    index: int = 0  # set once the read index is confirmed


class Reads:
    def __init__(self, raft: RaftNode, state: StateMachine, replies: Replies, clock: Clock) -> None:
        self.raft = raft
        self.state = state
        self.replies = replies
        self.clock = clock
        self.by_context: dict[bytes, PendingRead] = {}
        self.confirmed: deque[PendingRead] = deque()
        self._seq = itertools.count(1)

    def on_read(self, session: ClientSession, request: Request) -> bool:
        """Serve or queue a READ; returns whether the core was asked to confirm one."""
        req = decode_read(request.body)
        limit = min(req.limit, READ_EVENTS_MAX)
        max_bytes = min(req.max_bytes, READ_BYTES_MAX)
        pending = PendingRead(session, request.request_id, req.queue, req.offset, limit, max_bytes,
                              self.clock.monotonic() + READ_TIMEOUT_S)
        if req.consistency == Consistency.STALE:
            self.serve(pending)
            return False
        if len(self.by_context) + len(self.confirmed) >= PENDING_READS_MAX:
            self.replies.error(session, request.request_id, Status.OVERLOADED, "too many reads waiting")
            return False
        context = next(self._seq).to_bytes(8, "little")
        try:
            self.raft.read_index(context)
        except NotLeaderError:
            self.replies.not_leader(session, request.request_id)
            return False
        self.by_context[context] = pending
        return True

    def confirm(self, read_states: list[ReadState], dropped: list[bytes]) -> None:
        for rs in read_states:
            pending = self.by_context.pop(rs.context, None)
            if pending is not None:
                pending.index = rs.index
                self.confirmed.append(pending)
        for ctx in dropped:
            pending = self.by_context.pop(ctx, None)
            if pending is not None:
                self.replies.not_leader(pending.session, pending.request_id)

    def serve_confirmed(self) -> None:
        applied = self.state.applied_index
        while self.confirmed and self.confirmed[0].index <= applied:
            self.serve(self.confirmed.popleft())

    def serve(self, r: PendingRead) -> None:
        try:
            events = self.state.read(r.queue, r.offset, r.limit, r.max_bytes)
        except OffsetRangeError as exc:
            self.replies.error(r.session, r.request_id, Status.OUT_OF_RANGE, str(exc))
            return
        except (ValueError, KeyError) as exc:
            self.replies.error(r.session, r.request_id, Status.INVALID_ARGUMENT, str(exc))
            return
        rows = [(e.event_id, e.key, None, e.timestamp_us, e.payload, e.id_generated) for e in events]
        batch = encode_batch(rows)
        first = events[0].offset if events else r.offset
        next_offset = events[-1].offset + 1 if events else r.offset
        r.session.reply(encode_response(Status.OK, r.request_id, encode_read_ok(first, next_offset, batch)))

    def expire(self, now: float) -> None:
        expired = [ctx for ctx, r in self.by_context.items() if r.deadline < now]
        for ctx in expired:
            r = self.by_context.pop(ctx)
            self.replies.error(r.session, r.request_id, Status.TIMEOUT, "read not confirmed by a quorum in time")
        while self.confirmed and self.confirmed[0].deadline < now:
            r = self.confirmed.popleft()
            self.replies.error(r.session, r.request_id, Status.TIMEOUT, "read index not applied in time")

    def fail_all(self, status: Status, message: str) -> None:
        for r in list(self.by_context.values()) + list(self.confirmed):
            self.replies.error(r.session, r.request_id, status, message)
        self.by_context.clear()
        self.confirmed.clear()
