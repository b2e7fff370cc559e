"""The node's side of ReadyLog: writes to the Raft log and hard state, and the fdatasyncs that
make them durable, including the leader's deferred ones.

Durability per wal_sync: with true, an acknowledged append is in the fdatasync'ed log of a
majority (the leader acks after commit, and followers ack AppendEntries after their
fdatasync). With false, every node's write reaches the OS page cache before it acks, and a
background thread syncs at most sync_interval_ms (200 ms) later: a crash of the esc process
loses nothing, but a power loss or kernel crash on a majority of machines within that window
can lose acknowledged events (docs/operations.md, "Durability").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from eventstream.metrics import NodeMetrics
from eventstream.node.clock import Clock
from eventstream.node.raft_storage import NodeStorage
from eventstream.raft.messages import Entry, HardState
from eventstream.raft.node import RaftNode
from eventstream.storage import SegmentLog
from eventstream.storage.errors import StorageError

# A leader whose followers commit on their own lets its writes gather for up to
# LEADER_SYNC_GATHER_STEPS steps of LEADER_SYNC_STEP_S before one fdatasync covers them all,
# unless its copy is needed for a commit sooner (see NodeLog.sync_loop).
LEADER_SYNC_STEP_S = 0.001
LEADER_SYNC_GATHER_STEPS = 5
# The commit index alone is saved at most this often (see save_hard_state).
COMMIT_SAVE_INTERVAL_S = 1.0


class NodeLog:
    def __init__(self, seg_log: SegmentLog, storage: NodeStorage, raft: RaftNode, hard: HardState,
                 metrics: NodeMetrics, clock: Clock, wal_sync: bool, wake: Callable[[], None]) -> None:
        self.seg_log = seg_log
        self.storage = storage
        self.raft = raft
        self.metrics = metrics
        self.clock = clock
        self.wal_sync = wal_sync
        self._wake = wake
        self._saved_term_vote = (hard.term, hard.vote)
        self.commit_saved = hard.commit
        self._commit_saved_at = 0.0
        # The leader's deferred fdatasync (sync_loop): the last entry written but not yet
        # synced, and the last index known durable (the commit index saved never passes it).
        self._unsynced: tuple[int, int] | None = None
        self.synced_through = seg_log.last_index  # recovery kept only what is on disk
        self._sync_wanted = asyncio.Event()

    # ReadyLog
    def append(self, entries: list[Entry]) -> None:
        seg_log = self.seg_log
        first = entries[0].index
        if first <= seg_log.last_index:
            # A conflicting suffix (5.3): the leader's entries replace it.
            seg_log.truncate_after(first - 1)
            self.synced_through = min(self.synced_through, first - 1)
        seg_log.append([(e.index, e.term, e.data) for e in entries])
        self.storage.recent.written(entries)

    def save_hard_state(self, hs: HardState) -> None:
        # Term and vote must be durable before any vote or ack goes out (Figure 2). The commit
        # index alone is saved at most every second: a stale commit after a crash is safe (the
        # leader re-sends it), and saving it each cycle would add two fsyncs per commit.
        now = self.clock.monotonic()
        if (hs.term, hs.vote) != self._saved_term_vote or now - self._commit_saved_at > COMMIT_SAVE_INTERVAL_S:
            if self.wal_sync and hs.commit > self.synced_through:
                # Commit may run ahead of this leader's own durable log (a majority of
                # followers holds it); the saved commit must never point past what a restart
                # finds in the log.
                hs = HardState(hs.term, hs.vote, self.synced_through)
            self.storage.save_hard_state(hs)
            self._saved_term_vote = (hs.term, hs.vote)
            self.commit_saved = hs.commit
            self._commit_saved_at = now

    def saved_term_vote(self) -> tuple[int, int]:
        return self._saved_term_vote

    def has_unsynced(self) -> bool:
        return self._unsynced is not None

    def sync(self) -> None:
        """fdatasync the log on this thread; covers the leader's deferred writes too. A
        follower has nothing to do until its write is durable, and a thread handoff costs it
        more CPU per entry than the blocking call does."""
        started = self.clock.perf()
        last = self.seg_log.last_index
        self.seg_log.sync()
        self.synced_through = last
        self._count_fsync(started)
        unsynced, self._unsynced = self._unsynced, None
        if unsynced is not None:
            self.raft.persisted(*unsynced)

    def defer_sync(self, index: int, term: int) -> None:
        self._unsynced = (index, term)
        self._sync_wanted.set()

    def compact(self, index: int) -> None:
        self.seg_log.compact_through(index)

    def reset_to_snapshot(self, index: int, term: int) -> None:
        """The log replaced by an installed snapshot through (index, term)."""
        self.storage.recent.clear()
        if index <= self.seg_log.last_index:
            self.seg_log.truncate_after(index)
        self.seg_log.compact_through(index, term)
        self.storage.refresh_snapshot()

    def _count_fsync(self, started: float) -> None:
        self.metrics.fsyncs.inc()
        self.metrics.fsync_seconds.observe(self.clock.perf() - started)

    async def sync_loop(self) -> None:
        """The leader's deferred fdatasyncs: each covers every entry written before it starts,
        so entries proposed while one runs share the next (group commit)."""
        seg_log, raft, clock = self.seg_log, self.raft, self.clock
        loop = asyncio.get_running_loop()
        while True:
            await self._sync_wanted.wait()
            if raft.followers_form_quorum():
                # The followers commit without this copy, so it is not on any append's path:
                # gather the writes of the next few entries into one fdatasync, saving the
                # leader a sync and two thread handoffs per entry. Checked every step: when
                # one follower's answer is late and this copy would decide a commit, sync
                # now, so a slow follower costs an append at most a step. A follower that
                # stops answering turns the gathering off within an election timeout.
                for _ in range(LEADER_SYNC_GATHER_STEPS):
                    await clock.sleep(LEADER_SYNC_STEP_S)
                    if raft.commit_waits_on_leader():
                        break
            self._sync_wanted.clear()
            target = self._unsynced
            if target is None:
                continue
            started = clock.perf()
            await loop.run_in_executor(None, seg_log.sync)
            self._count_fsync(started)
            if self._unsynced == target:
                self._unsynced = None
            try:
                still_there = seg_log.term(target[0]) == target[1]
            except StorageError:
                still_there = False
            if still_there:  # not replaced since (this node may have lost leadership meanwhile)
                self.synced_through = max(self.synced_through, target[0])
            raft.persisted(*target)
            self._wake()
