"""What a node says about itself: GET /status, the STATUS request, and the state digest that
lets an operator (and the tests) see that every replica holds the same state."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from eventstream import __version__
from eventstream.config import NodeConfig
from eventstream.node.answers import Replies
from eventstream.node.clock import Clock
from eventstream.node.routing import PeerRouting
from eventstream.node.snapshots import Snapshots
from eventstream.raft.node import RaftNode
from eventstream.state import StateError, StateMachine
from eventstream.storage import SegmentLog
from eventstream.transport.client_protocol import (
    ProtocolError,
    Request,
    Status,
    decode_status_options,
    encode_json,
    encode_response,
)
from eventstream.transport.client_server import ClientSession

log = logging.getLogger(__name__)

DIGEST_RECOMPUTE_S = 10.0


@dataclass(slots=True)
class Health:
    """What the node's loops learn about the node as a whole."""

    started_at: float
    rejoining: bool  # lost its data; no vote until caught up (--rejoin)
    fatal: str | None = None  # why the node stops, once it must


class StatusReporter:
    def __init__(self, config: NodeConfig, raft: RaftNode, state: StateMachine, seg_log: SegmentLog,
                 snapshots: Snapshots, routing: PeerRouting, health: Health, replies: Replies, clock: Clock) -> None:
        self.config = config
        self.raft = raft
        self.state = state
        self.seg_log = seg_log
        self.snapshots = snapshots
        self.routing = routing
        self.health = health
        self.replies = replies
        self.clock = clock
        self._digest_cache: tuple[int, str, float] = (-1, "", 0.0)
        self._digest_task: asyncio.Task[None] | None = None  # the computation under way
        self._digest_asked_at = -1  # the applied index when the digest was last asked for
        self._replies: set[asyncio.Task[None]] = set()  # STATUS requests waiting on a digest

    def on_request(self, session: ClientSession, request: Request) -> None:
        try:
            options = decode_status_options(request.body)
        except ProtocolError as exc:
            self.replies.error(session, request.request_id, Status.INVALID_ARGUMENT, str(exc))
            return
        if not options.get("digest"):
            session.reply(encode_response(Status.OK, request.request_id, encode_json(self.status())))
            return
        task = asyncio.get_running_loop().create_task(self.reply_status(session, request.request_id))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def answer_status(self, digest: bool = False) -> dict[str, Any]:
        """status(), and with `digest` the state digest ("digest", "digest_index"), or why there
        is none ("digest_error": a failing disk, a stopped state machine)."""
        out = self.status()
        if digest:
            try:
                out["digest_index"], out["digest"] = await self._state_digest()
            except (OSError, StateError) as exc:
                out["digest_error"] = str(exc)
        return out

    async def reply_status(self, session: ClientSession, request_id: int) -> None:
        try:
            out = await self.answer_status(digest=True)
        except Exception as exc:  # the request must get an answer; the log gets the detail
            log.exception("status with digest failed")
            self.replies.error(session, request_id, Status.INTERNAL, f"status failed: {exc}")
            return
        session.reply(encode_response(Status.OK, request_id, encode_json(out)))

    async def _state_digest(self) -> tuple[int, str]:
        """(index, digest) of the state. The digest reads every retained event, so it is taken
        from a cut (hard links and the frozen dedup entries, as for a snapshot) on a worker
        thread while the node goes on, and only for a status request that asks for it. While
        the node applies it is recomputed at most every DIGEST_RECOMPUTE_S, and at once when
        the node has stopped moving: a converged cluster always shows the digest at `applied`;
        a busy one shows it at `digest_index`. Requests meanwhile share one computation."""
        state = self.state
        index, _, at = self._digest_cache
        now = self.clock.monotonic()
        settled = self._digest_asked_at == state.applied_index  # nothing applied since the last ask
        if index != state.applied_index and (now - at >= DIGEST_RECOMPUTE_S or settled):
            if self._digest_task is None:
                self._digest_task = asyncio.get_running_loop().create_task(self._compute_digest())
            await asyncio.shield(self._digest_task)
        self._digest_asked_at = state.applied_index
        return self._digest_cache[0], self._digest_cache[1]

    async def _compute_digest(self) -> None:
        try:
            cut = self.state.begin_digest()
            started = self.clock.monotonic()
            digest = await asyncio.get_running_loop().run_in_executor(None, cut.compute)
            self._digest_cache = (cut.index, digest, started)
        finally:
            self._digest_task = None

    def status(self) -> dict[str, Any]:
        """This node's view, cheap enough to poll; answer_status adds the state digest."""
        state, seg_log, config, pool = self.state, self.seg_log, self.config, self.routing.pool
        st = self.raft.status()
        queues = {str(q): {"first": lo, "next": hi} for q in sorted(state.queues.logs) for lo, hi in [state.queue_range(q)]}
        followers = {str(pid): {"state": s, "match": m, "next": n} for pid, (s, m, n) in st.progress.items() if pid != config.id}
        return {
            "id": config.id,
            "version": __version__,
            "role": st.role.name.lower(),
            "term": st.term,
            "leader": st.leader,
            "leader_address": self.replies.peers.get(st.leader),
            "rejoining": self.health.rejoining,
            "commit": st.commit,
            "applied": state.applied_index,
            "first_index": seg_log.first_index,
            "last_index": seg_log.last_index,
            "queues": queues,
            "dedup": {"ids": len(state.dedup), "generated_ids": state.dedup.generated_count,
                      "ids_max": state.dedup.ids_max},
            "followers": followers,
            "membership": {"voters": list(st.membership.voters), "learners": list(st.membership.learners),
                           "index": st.membership_index, "pending": st.membership_pending,
                           "this_node": st.membership.role_of(config.id),
                           "addresses": {str(n): self.replies.peers.get(n) for n in st.membership.members}},
            "last_snapshot": self.snapshots.last_index,
            "pipelines": {str(pid): dataclasses.asdict(p.stats) for pid, p in self.routing.pipelines.items()},
            "replication": "pool" if pool is not None else "inprocess",
            "replication_setting": config.replication,
            "replication_workers": ({str(peer): dataclasses.asdict(u) for peer, u in pool.usage().items()}
                                    if pool is not None else {}),
            "wal_sync": config.wal_sync,
            "fatal": self.health.fatal,
            "uptime_s": round(self.clock.wall() - self.health.started_at, 3),
        }
