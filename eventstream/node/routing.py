"""Messages between this node's core and its peers: out through a pipeline per follower
(in-process, or a replication worker while this node leads in pool mode), in from the peer
links and the workers' relayed answers."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from eventstream.metrics import NodeMetrics
from eventstream.node.clock import Clock
from eventstream.raft.messages import Message, MessageType
from eventstream.raft.node import MalformedMessageError, RaftNode
from eventstream.replication.pipeline import FollowerPipeline, InProcessPipeline
from eventstream.replication.pool import ReplicationPool
from eventstream.storage import crc32c
from eventstream.transport.peer_codec import PeerCodecError, decode_message
from eventstream.transport.peers import PeerNetwork

log = logging.getLogger(__name__)

# What only a leader sends to a follower.
_LEADER_TYPES = frozenset({MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT})


class LateEntries:
    """Which applied entries reached this node long after they were proposed.

    Entries up to `through` reached this node after the leader had committed them: replayed
    from this node's disk at start, or sent to catch it up after a restart, a partition or a
    pause. How long ago they were proposed is unknown, so the times in them bound the log's
    clock from below but do not measure a gap between two clocks (proposal_clock.py). The
    leader's messages that end a silence longer than an election timeout (a cut link, a pause)
    may carry entries that waited in a socket or a worker's queue all that while, with the
    commit index of when they were sent: entries applied until `until` count as late too."""

    __slots__ = ("through", "until", "_heard_at", "_silence_s")

    def __init__(self, through: int, silence_s: float) -> None:
        self.through = through
        self.until = 0.0
        self._heard_at = -float("inf")
        self._silence_s = silence_s

    def heard_leader(self, now: float) -> None:
        if now - self._heard_at > self._silence_s:
            self.until = now + 2 * self._silence_s
        self._heard_at = now

    def in_window(self, now: float) -> bool:
        return now < self.until


class PeerRouting:
    """Owns the peer links and, in pool mode, the replication workers."""

    def __init__(self, node_id: int, raft: RaftNode, peer_addresses: dict[int, tuple[str, int]], local_host: str,
                 frame_bytes_max: int, use_pool: bool, late: LateEntries, metrics: NodeMetrics, clock: Clock,
                 wake: Callable[[], None], tls: ssl.SSLContext | None = None, tls_dir: str | None = None) -> None:
        self.node_id = node_id
        self.raft = raft
        self.late = late
        self.metrics = metrics
        self.clock = clock
        self._wake = wake
        self.peers = PeerNetwork(node_id, peer_addresses, crc32c, frame_bytes_max, self.on_peer_messages,
                                 self.on_unreachable, local_host=local_host, on_connected=self.on_connected,
                                 tls=tls)
        self.pool: ReplicationPool | None = None  # pool mode only
        if use_pool:
            self.pool = ReplicationPool(node_id, peer_addresses, self.peers, self.on_worker_reprobe,
                                        on_responses=self.on_worker_responses, on_dropped=self.on_worker_dropped,
                                        local_host=local_host, append_bytes_max=raft.config.max_append_bytes,
                                        tls_dir=tls_dir)
            metrics.replication_usage = self.pool.usage
            metrics.worker_wake.source = self.pool.wake_counters
        self.inprocess: dict[int, FollowerPipeline] = {pid: InProcessPipeline(pid, self.peers) for pid in peer_addresses}
        self.pipelines: dict[int, FollowerPipeline] = dict(self.inprocess)

    # ReadySender
    def send(self, messages: list[Message]) -> None:
        pipelines = self.pipelines
        touched: dict[int, FollowerPipeline] = {}
        for m in messages:
            pipeline = pipelines.get(m.to)
            if pipeline is None:
                log.warning("core addressed a message to unknown node %d; dropped", m.to)
                continue
            pipeline.submit(m)
            touched[m.to] = pipeline
        for pipeline in touched.values():
            pipeline.flush()

    def start_leading(self) -> None:
        if self.pool is not None:
            try:
                self.pipelines = {**self.inprocess, **self.pool.start()}
            except OSError as exc:
                log.warning("replication pool did not start (%s); replicating in-process this term", exc)

    def stop_leading(self) -> None:
        if self.pool is not None:
            self.pool.stop()
            self.pipelines = dict(self.inprocess)

    def set_peers(self, peers: dict[int, tuple[str, int]]) -> None:
        """Follow a membership change (eventstream/node/members.py): link with exactly `peers`,
        with a pipeline to each, and in pool mode a worker for each follower while leading."""
        self.peers.set_peers(peers)
        for pid in list(self.inprocess):
            if pid not in peers:
                del self.inprocess[pid]
        for pid in peers:
            if pid not in self.inprocess:
                self.inprocess[pid] = InProcessPipeline(pid, self.peers)
        pooled = {}
        if self.pool is not None:
            try:
                pooled = self.pool.set_peers(peers)
            except OSError as exc:
                log.warning("replication pool could not follow the membership (%s); replicating in-process", exc)
                self.pool.stop()
        self.pipelines = {**self.inprocess, **pooled}

    def on_peer_messages(self, peer_id: int, bodies: list[bytes]) -> None:
        messages = []
        for body in bodies:
            try:
                msg = decode_message(body)
            except PeerCodecError as exc:
                log.warning("dropping a malformed message from peer %d: %s", peer_id, exc)
                continue
            if msg.sender != peer_id or msg.to != self.node_id:
                log.warning("dropping a message from peer %d that claims sender %d, to %d", peer_id, msg.sender, msg.to)
                continue
            messages.append(msg)
        self.step(peer_id, messages)

    def step(self, peer_id: int, messages: list[Message]) -> None:
        raft, late = self.raft, self.late
        self.metrics.peer_messages.inc(len(messages))
        now = self.clock.monotonic()
        for msg in messages:
            if msg.type in _LEADER_TYPES:
                late.heard_leader(now)
            if msg.type == MessageType.APPEND and msg.entries and msg.commit >= msg.entries[0].index:
                late.through = max(late.through, min(msg.commit, msg.entries[-1].index))
            try:
                raft.step(msg)
            except MalformedMessageError as exc:
                # The core changed nothing; a peer that sends such messages has a bug or is
                # not ours. Dropping them keeps this node safe.
                log.warning("dropping a malformed message from peer %d: %s", peer_id, exc)
        self._wake()

    def on_connected(self, peer_id: int) -> None:
        self.raft.report_reconnected(peer_id)
        self._wake()

    def on_worker_reprobe(self, peer_id: int) -> None:
        # A (re)started worker's link, or entries a worker found overwritten in the shared ring:
        # what the follower was sent is unknown, so probe it afresh (§5.3).
        self.raft.report_reconnected(peer_id)
        self._wake()

    def on_worker_responses(self, peer_id: int, messages: list[Message]) -> None:
        # The follower's answers as the worker relayed them: the same Messages the peer link
        # would have carried in-process.
        self.step(peer_id, messages)

    def on_worker_dropped(self, peer_id: int, count: int) -> None:
        self.metrics.peer_frames_dropped.inc(count)

    def on_unreachable(self, peer_id: int) -> None:
        # The core needs no report: a lost append shows as a gap on the follower's next
        # heartbeat response, and the leader falls back to probing (raft/node.py).
        self.metrics.peer_frames_dropped.inc()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        await self.peers.stop()
