"""FollowerPipeline: how the leader's messages for one peer get onto the wire.

The Raft core decides what each follower needs (Progress, docs/conventions.md §4); a pipeline only moves
those messages: it encodes them, batches everything one Ready produced for that peer into one
write, bounds what may wait unsent (the send window), and counts what it did. The process-pool
issue adds a second implementation that does the encoding and socket work in a worker process;
the node talks to both through this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from eventstream.raft.messages import Message
from eventstream.transport.peer_codec import encode_message
from eventstream.transport.peers import PeerNetwork

# Bytes one Ready may queue for one follower. The core's own window (max_inflight entries of at
# most max_append_bytes) keeps real traffic far below it; past it the message is dropped and
# the core resends after the follower's next response shows the gap.
SEND_WINDOW_BYTES_DEFAULT = 256 * 1024 * 1024


@dataclass(slots=True)
class PipelineStats:
    messages: int = 0
    bytes: int = 0
    writes: int = 0
    dropped_window: int = 0


class FollowerPipeline(Protocol):
    peer_id: int
    stats: PipelineStats

    def submit(self, message: Message) -> None:
        """Queue one message the core produced for this follower."""
        ...

    def flush(self) -> None:
        """Send everything queued since the last flush (one write)."""
        ...

    def close(self) -> None: ...


class InProcessPipeline:
    """Encodes on the node's own thread and writes through the shared PeerNetwork."""

    __slots__ = ("peer_id", "stats", "_network", "_pending", "_pending_bytes", "_window_bytes")

    def __init__(self, peer_id: int, network: PeerNetwork, window_bytes: int = SEND_WINDOW_BYTES_DEFAULT) -> None:
        self.peer_id = peer_id
        self.stats = PipelineStats()
        self._network = network
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._window_bytes = window_bytes

    def submit(self, message: Message) -> None:
        body = encode_message(message)
        if self._pending_bytes + len(body) > self._window_bytes:
            self.stats.dropped_window += 1
            return
        self._pending.append(body)
        self._pending_bytes += len(body)

    def flush(self) -> None:
        if not self._pending:
            return
        bodies, self._pending = self._pending, []
        self.stats.messages += len(bodies)
        self.stats.bytes += self._pending_bytes
        self.stats.writes += 1
        self._pending_bytes = 0
        self._network.send(self.peer_id, bodies)

    def close(self) -> None:
        self._pending = []
        self._pending_bytes = 0
