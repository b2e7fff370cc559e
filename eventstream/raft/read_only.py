"""Pending linearizable reads on the leader (Raft thesis §6.4, ReadIndex).

Each read gets a sequence number when it is registered, together with the commit index at that
moment. The leader then sends a heartbeat round tagged with the latest sequence number; a
follower echoes the tag. A follower acknowledging tag s proves the leader was still leader after
every read with sequence <= s was registered, so once a majority has acknowledged s, all those
reads are confirmed at their recorded index.
"""

from __future__ import annotations

from collections import deque

from eventstream.raft.quorum import MajorityConfig


class PendingRead:
    __slots__ = ("seq", "index", "context", "requester")

    def __init__(self, seq: int, index: int, context: bytes, requester: int) -> None:
        self.seq = seq
        self.index = index
        self.context = context
        # The node that asked: the leader itself, or a follower that forwarded the read.
        self.requester = requester


class ReadOnlyQueue:
    """Invariant: reads are in increasing seq order; acked[p] <= last_seq for every peer p."""

    __slots__ = ("_reads", "last_seq", "_acked")

    def __init__(self) -> None:
        self._reads: deque[PendingRead] = deque()
        self.last_seq = 0
        self._acked: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._reads)

    def add(self, index: int, context: bytes, requester: int) -> int:
        self.last_seq += 1
        self._reads.append(PendingRead(self.last_seq, index, context, requester))
        return self.last_seq

    def ack(self, leader_id: int, peer: int, seq: int, voters: MajorityConfig) -> list[PendingRead]:
        """Record that `peer` acknowledged heartbeat tag `seq`; return the reads now confirmed."""
        if seq <= self._acked.get(peer, 0) or seq > self.last_seq:
            return []
        self._acked[peer] = seq
        self._acked[leader_id] = self.last_seq
        confirmed_seq = voters.committed_index(self._acked)
        released: list[PendingRead] = []
        reads = self._reads
        while reads and reads[0].seq <= confirmed_seq:
            released.append(reads.popleft())
        return released

    def drain(self) -> list[PendingRead]:
        """Forget every pending read (leadership lost); returns them so callers can report."""
        dropped = list(self._reads)
        self._reads.clear()
        self._acked.clear()
        return dropped
