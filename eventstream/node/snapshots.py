"""Snapshots: the ones this node takes (cut between two applies, written on a worker thread,
then the log compacted through them) and the ones a leader streams to it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from eventstream.metrics import NodeMetrics
from eventstream.node.durability import NodeLog
from eventstream.node.raft_storage import membership_meta
from eventstream.node.snapshot_policy import snapshot_due
from eventstream.raft.messages import SnapshotChunk
from eventstream.raft.node import RaftNode
from eventstream.state import SnapshotReceiver, StateError, StateMachine
from eventstream.transport._append_intake import AppendIntake

log = logging.getLogger(__name__)


class Snapshots:
    def __init__(self, state: StateMachine, node_log: NodeLog, raft: RaftNode, intake: AppendIntake,
                 metrics: NodeMetrics, snapshot_threshold: int, wake: Callable[[], None]) -> None:
        self.state = state
        self.node_log = node_log
        self.raft = raft
        self.intake = intake
        self.metrics = metrics
        self.default_threshold = snapshot_threshold
        self._wake = wake
        self.last_index = state.applied_index
        self._receiver: SnapshotReceiver | None = None  # a leader's snapshot being staged
        self.task: asyncio.Task[None] | None = None  # this node's snapshot being written

    def stage(self, chunks: list[SnapshotChunk]) -> None:
        for chunk in chunks:
            if chunk.offset == 0 or self._receiver is None:
                if self._receiver is not None:
                    self._receiver.abort()
                self._receiver = self.state.snapshot_receiver()
            self._receiver.feed(chunk.data)

    def install(self, index: int, term: int) -> None:
        state = self.state
        receiver, self._receiver = self._receiver, None
        if receiver is None:
            raise RuntimeError(f"snapshot {index} accepted but no chunks were staged")
        state.restore(receiver)
        if state.applied_index != index:
            raise RuntimeError(f"installed snapshot is at {state.applied_index}, Raft said {index}")
        self.node_log.reset_to_snapshot(index, term)
        self.last_index = index
        self.intake.queue_count = state.config["queue_count"]
        self.metrics.snapshots_installed.inc()
        self.metrics.applied_index.set(index)
        log.info("installed snapshot at index %d (term %d) from the leader", index, term)

    def maybe_take(self) -> None:
        state = self.state
        threshold = state.config.get("snapshot_threshold", self.default_threshold)
        if self.task is None and snapshot_due(state.applied_index - self.last_index, threshold,
                                              self.raft.streaming_snapshot()):
            self.task = asyncio.get_running_loop().create_task(self.take())

    def trigger(self) -> bool:
        if self.task is not None or self.state.applied_index <= self.last_index:
            return False
        self.task = asyncio.get_running_loop().create_task(self.take())
        return True

    async def take(self) -> None:
        """Cut between two applies (short: hard links and a copy of the dedup table), write in a
        worker thread while apply goes on, then let the core compact the log through it."""
        state, storage = self.state, self.node_log.storage
        at = state.applied_index
        try:
            # The membership in force at the cut goes with it: a restart from this snapshot, or
            # a follower that installs it, knows who takes part (docs/raft.md, "Membership").
            cut = state.begin_snapshot(membership_meta(self.raft.membership_at(at)))
            index = cut.manifest["last_index"]
            await asyncio.get_running_loop().run_in_executor(None, cut.write)
            state.prune_snapshots()
            storage.refresh_snapshot()
            if index <= self.last_index:
                # The leader's snapshot was installed while this one was written: it is newer
                # (the latest by index, kept by the prune), and the log is compacted through it.
                log.info("snapshot at index %d written, but the leader's snapshot at index %d was installed "
                         "meanwhile; nothing more to compact", index, self.last_index)
                return
            self.last_index = index
            self.raft.compact(index)
            self.metrics.snapshots_taken.inc()
            log.info("snapshot at index %d written; log compaction through it requested", index)
            self._wake()
        except (OSError, StateError) as exc:
            # A full or failing disk: one line naming the file and the error. The log is not
            # compacted meanwhile, so nothing is lost; it grows until a snapshot succeeds.
            log.warning("snapshot at index %d failed: %s; will retry at the next threshold", at, exc)
            self.last_index = state.applied_index
        except Exception:
            log.exception("snapshot at index %d failed; will retry at the next threshold", at)
            self.last_index = state.applied_index
        finally:
            self.task = None

    async def wait(self) -> None:
        if self.task is not None:
            try:
                await self.task
            except Exception:
                log.exception("snapshot failed during shutdown")
