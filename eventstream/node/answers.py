"""Answers to clients: errors, redirects to the leader, and the appends waiting on their entry's
apply. Every reply the node sends that is not a plain OK passes here, so each is counted."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from eventstream.metrics import NodeMetrics
from eventstream.node.clock import Clock
from eventstream.raft.messages import NONE
from eventstream.raft.node import RaftNode
from eventstream.state import STATUS_BAD_QUEUE, STATUS_DEDUP_FULL, STATUS_DUPLICATE, StateMachine
from eventstream.transport._append_intake import AppendIntake, EntryWaiters
from eventstream.transport.client_protocol import Status, encode_json, encode_response
from eventstream.transport.client_server import ClientServer, ClientSession

log = logging.getLogger(__name__)

# Statuses of the state machine's per-event results that refuse an event, as flags for the
# native answer encoder; a request is answered for its gravest. A full dedup table passes: the
# request is answered OVERLOADED, so the client backs off and retries the same ids, stored once
# older ids expire. An explicit queue out of range does not pass (INVALID_ARGUMENT).
_REFUSED_DEDUP_FULL = 1
_REFUSED_BAD_QUEUE = 2
_REFUSED_FLAGS = bytes(
    _REFUSED_BAD_QUEUE if s == STATUS_BAD_QUEUE else _REFUSED_DEDUP_FULL if s == STATUS_DEDUP_FULL else 0
    for s in range(256)
)
# A full dedup table is logged at most this often.
DEDUP_FULL_LOG_INTERVAL_S = 10.0
# Appends wait at most this long for commit and apply before they are answered Timeout; the
# client then retries with the same event ids, which the dedup table makes safe.
APPEND_TIMEOUT_S = 10.0


@dataclass(slots=True)
class TermWaiters:
    """The appends in one proposed entry, and the term it was proposed in."""

    term: int
    waiters: EntryWaiters


class Replies:
    def __init__(self, node_id: int, peers: dict[int, str], raft: RaftNode, metrics: NodeMetrics) -> None:
        self.node_id = node_id
        self.peers = peers
        self.raft = raft
        self.metrics = metrics

    def error(self, session: object, request_id: int, status: Status, message: str, leader_id: int = 0) -> None:
        assert isinstance(session, ClientSession)
        self.metrics.client_errors.labels(status.name).inc()
        session.reply_error(status, request_id, message, leader_id)

    def not_leader(self, session: ClientSession, request_id: int) -> None:
        leader = self.raft.leader
        if leader == NONE or leader == self.node_id or not self.peers.get(leader):
            self.error(session, request_id, Status.UNAVAILABLE, "no leader is known (election in progress or no quorum)")
        else:
            # The message is the leader's client address: the client follows it directly.
            self.error(session, request_id, Status.NOT_LEADER, self.peers[leader], leader)


class AppendAnswers:
    """Proposed entries' waiting appends (by index) and config updates, answered once applied."""

    def __init__(self, intake: AppendIntake, clients: ClientServer, replies: Replies, state: StateMachine,
                 metrics: NodeMetrics, clock: Clock) -> None:
        self.intake = intake
        self.clients = clients
        self.replies = replies
        self.state = state
        self.metrics = metrics
        self.clock = clock
        self.waiting: dict[int, TermWaiters] = {}
        self.config_waiters: dict[int, list[tuple[ClientSession, int]]] = {}
        self._dedup_full_logged = -DEDUP_FULL_LOG_INTERVAL_S

    def answer(self, index: int, waiters: EntryWaiters, statuses: memoryview, queues: memoryview,
               offsets: memoryview) -> None:
        clients = self.clients
        refused, duplicates = self.intake.answer(waiters, index, statuses, queues, offsets,
                                                 _REFUSED_FLAGS, STATUS_DUPLICATE, self.clock.monotonic())
        if duplicates:
            self.metrics.duplicates.inc(duplicates)
        for slot, gen, request_id, flag in refused:
            session = clients.session_for(slot, gen)
            if session is None:
                continue
            if flag == _REFUSED_DEDUP_FULL:
                self.replies.error(session, request_id, Status.OVERLOADED, self._dedup_full(index))
            else:
                self.replies.error(session, request_id, Status.INVALID_ARGUMENT,
                                   f"entry {index}: events naming a queue outside 0..{self.intake.queue_count - 1} "
                                   "were refused (queue_count changed since they were sent); the request's other "
                                   "events were stored")
        clients.flush_soon()

    def answer_config(self, index: int) -> None:
        for session, request_id in self.config_waiters.pop(index, ()):
            session.reply(encode_response(Status.OK, request_id, encode_json(self.state.config)))

    def _dedup_full(self, index: int) -> str:
        """The answer to a request with events refused by a full dedup table; also logged, at
        most every DEDUP_FULL_LOG_INTERVAL_S."""
        state = self.state
        config = state.config
        message = (f"entry {index}: the dedup table is full ({len(state.dedup):,} ids remembered, "
                   f"{state.dedup.generated_count:,} of them generated by the client library; dedup_ids_max "
                   f"{state.dedup.ids_max:,}): events with new ids were not stored, the request's other events were; "
                   f"retry with the same ids once older ids expire (dedup_window_ms {config['dedup_window_ms']:,}, "
                   f"dedup_generated_window_ms {config['dedup_generated_window_ms']:,}), or raise dedup_ids_max")
        now = self.clock.monotonic()
        if now - self._dedup_full_logged >= DEDUP_FULL_LOG_INTERVAL_S:
            self._dedup_full_logged = now
            log.warning("appends with new ids are answered OVERLOADED: %s", message)
        return message

    def fail(self, waiters: EntryWaiters, status: Status, message: str) -> None:
        count = self.intake.fail(waiters, status, message.encode())
        if count:
            self.metrics.client_errors.labels(status.name).inc(count)
            self.clients.flush_soon()

    def fail_all(self, status: Status, message: str) -> None:
        waiting, self.waiting = self.waiting, {}
        for entry in waiting.values():
            self.fail(entry.waiters, status, message)
        self.fail(self.intake.drain(), status, message)
        config_waiters, self.config_waiters = self.config_waiters, {}
        for waiters in config_waiters.values():
            for session, request_id in waiters:
                self.replies.error(session, request_id, status, message)

    def expire(self, now: float) -> None:
        for index in [i for i, w in self.waiting.items() if now - w.waiters.first_arrival > APPEND_TIMEOUT_S]:
            entry = self.waiting.pop(index)
            self.fail(entry.waiters, Status.TIMEOUT,
                      f"entry {index} not committed within {APPEND_TIMEOUT_S:.0f} s; retry with the same event ids")
