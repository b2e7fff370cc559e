"""What the leader knows about each follower, and what it may send next (docs/conventions.md §4).

A follower is in one of three states:
  PROBE      the leader does not know where the follower's log matches; it sends one
             AppendEntries and waits for the answer (or a heartbeat response) before the next.
  REPLICATE  the log matches up to `match`; the leader streams entries optimistically, bounded by
             an in-flight window of max_inflight messages and max_inflight_bytes.
  SNAPSHOT   the entries the follower needs are compacted; the leader streams a snapshot in
             chunks, one at a time, and sends no entries until it is installed.
Replication workers carry these decisions out; they never make them.
"""

from __future__ import annotations

import enum
from collections import deque

from eventstream.raft.messages import SnapshotMeta


class ProgressState(enum.IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Inflights:
    """AppendEntries sent in replicate state and not yet acknowledged, oldest first.

    Invariant: the last indexes in _sent increase; bytes == sum of their sizes.
    """

    __slots__ = ("_sent", "bytes", "max_count", "max_bytes")

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self._sent: deque[tuple[int, int]] = deque()
        self.bytes = 0
        self.max_count = max_count
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._sent)

    def add(self, last_index: int, size_bytes: int) -> None:
        self._sent.append((last_index, size_bytes))
        self.bytes += size_bytes

    def free_through(self, index: int) -> None:
        """Forget every message whose last entry is at or below index (acknowledged)."""
        sent = self._sent
        while sent and sent[0][0] <= index:
            self.bytes -= sent.popleft()[1]

    def free_first(self) -> None:
        if self._sent:
            self.bytes -= self._sent.popleft()[1]

    def full(self) -> bool:
        return len(self._sent) >= self.max_count or self.bytes >= self.max_bytes

    def reset(self) -> None:
        self._sent.clear()
        self.bytes = 0


class Progress:
    """The leader's view of one follower.

    Invariant: match < next_index. In SNAPSHOT state, snapshot_index is the index of the
    snapshot being streamed and snapshot_offset the first byte not yet acknowledged.
    """

    __slots__ = (
        "match",
        "next_index",
        "state",
        "probe_sent",
        "recent_active",
        "inflights",
        "snapshot_index",
        "snapshot_term",
        "snapshot_meta",
        "snapshot_offset",
        "commit_sent",
    )

    def __init__(self, next_index: int, max_inflight: int, max_inflight_bytes: int) -> None:
        self.match = 0
        self.next_index = next_index
        self.state = ProgressState.PROBE
        # In PROBE: an AppendEntries is outstanding, so send nothing more until it is answered.
        self.probe_sent = False
        # Heard from since the last check-quorum round (thesis §6.2).
        self.recent_active = True
        self.inflights = Inflights(max_inflight, max_inflight_bytes)
        # The commit index carried by the last AppendEntries sent (RaftConfig.lazy_commit).
        self.commit_sent = 0
        self.snapshot_index = 0
        self.snapshot_term = 0
        self.snapshot_meta: SnapshotMeta | None = None
        self.snapshot_offset = 0

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.name} match={self.match} next={self.next_index} "
            f"inflight={len(self.inflights)})"
        )

    def become_probe(self) -> None:
        # After a snapshot the follower has at least the snapshot's entries.
        if self.state == ProgressState.SNAPSHOT:
            self.next_index = max(self.match + 1, self.snapshot_index + 1)
        else:
            self.next_index = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.snapshot_index = 0
        self.snapshot_offset = 0
        self.inflights.reset()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next_index = self.match + 1
        self.probe_sent = False
        self.inflights.reset()

    def become_snapshot(self, meta: SnapshotMeta) -> None:
        index, term = meta.index, meta.term
        self.state = ProgressState.SNAPSHOT
        self.probe_sent = False
        self.snapshot_index = index
        self.snapshot_term = term
        self.snapshot_meta = meta
        self.snapshot_offset = 0
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """The follower matched through index; returns whether match advanced."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        if self.next_index < index + 1:
            self.next_index = index + 1
        return updated

    def maybe_decrease_to(self, rejected: int, hint_index: int) -> bool:
        """The follower rejected an AppendEntries whose prevLogIndex was `rejected`; its hint says
        no entry after hint_index can match. Returns False for a stale rejection."""
        if self.state == ProgressState.REPLICATE:
            # An answer to a message sent before the follower matched further is stale.
            if rejected <= self.match:
                return False
            self.next_index = self.match + 1
            return True
        # In PROBE only the answer to the one outstanding probe (prev = next_index - 1) counts.
        if self.next_index - 1 != rejected:
            return False
        self.next_index = max(min(rejected, hint_index + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent_entries(self, last_index: int, size_bytes: int) -> None:
        """An AppendEntries ending at last_index (0: no entries) went out."""
        if self.state == ProgressState.REPLICATE:
            if last_index:
                self.next_index = last_index + 1
                self.inflights.add(last_index, size_bytes)
        else:
            self.probe_sent = True
