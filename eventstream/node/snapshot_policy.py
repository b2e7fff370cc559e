"""When a node takes its next snapshot: the one rule both the node and the simulator's host use.

A snapshot replaces the one a leader may be streaming to a lagging follower, and the stream then
starts over with the new one. A node that snapshots more often than a stream takes to finish
would never bring that follower back, so while a stream is under way the next snapshot waits,
up to POSTPONE_FACTOR thresholds of applied entries (then the log's growth matters more, and the
follower gets the newer snapshot). See docs/raft.md.
"""

from __future__ import annotations

POSTPONE_FACTOR = 4


def snapshot_due(applied_since: int, threshold: int, streaming: bool) -> bool:
    """Whether a node that applied `applied_since` entries since its last snapshot takes one now,
    given its snapshot threshold and whether it is streaming a snapshot to a follower."""
    if threshold <= 0:
        return False
    if streaming:
        return applied_since >= POSTPONE_FACTOR * threshold
    return applied_since >= threshold
