"""A node's data dir opened for serving: the Raft log, the state machine, the storage the core
reads, and the core itself, recovered to where the files left off.

    DATA_DIR/log/       the Raft log (eventstream/storage/segment_log.py)
    DATA_DIR/state/     the state machine's queues, dedup table and snapshots
    DATA_DIR/hard_state the term, vote and commit index (NodeStorage)
    DATA_DIR/REJOINING  present while a node that lost its data catches up (--rejoin)
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

from eventstream.config import NodeConfig
from eventstream.node.damage import DamagedDataError, set_aside
from eventstream.node.raft_storage import NodeStorage
from eventstream.raft.config import RaftConfig
from eventstream.raft.membership import Membership
from eventstream.raft.messages import HardState
from eventstream.raft.node import RaftNode
from eventstream.state import StateError, StateMachine
from eventstream.storage import SegmentLog, StorageError
from eventstream.storage.atomic_file import fsync_directory, write_atomically

log = logging.getLogger(__name__)

# In the data dir while a node that lost its data catches up (NodeConfig.rejoin).
REJOIN_MARKER = "REJOINING"


@dataclass(slots=True)
class NodeFiles:
    seg_log: SegmentLog
    state: StateMachine
    storage: NodeStorage
    raft: RaftNode
    hard_state: HardState  # as found at start
    rejoining: bool  # RaftConfig.rejoining: this node lost its data and catches up

    def close(self) -> None:
        self.seg_log.close()
        self.state.close()


def open_files(config: NodeConfig, initial: Membership | None = None) -> NodeFiles:
    """Open the data dir; `initial` is the membership before any change in its log (default:
    config.peers; a joining node's is what it learned). With config.repair, a data dir that fails its checks is set aside and
    the node starts empty, rejoining (eventstream/node/damage.py)."""
    try:
        return _open_files(config, config.rejoin, initial)
    except (StorageError, StateError) as exc:
        data = config.data_path
        if not config.repair:
            raise DamagedDataError(f"{exc} (`esc wal check {data}` lists the damage; --repair moves it aside and "
                                   f"catches up from the leader)") from exc
        if len(set(config.peers) | set(initial.members if initial is not None else ())) < 2:
            raise DamagedDataError(f"{exc}; --repair needs peers to catch up from, and this node has none") from exc
        aside = set_aside(data)
        log.critical("node %d: damaged data: %s; --repair moved the log, state and hard state into %s: "
                     "starting empty, no vote until caught up from the leader", config.id, exc, aside)
        return _open_files(config, True, initial)


def _open_files(config: NodeConfig, rejoin: bool, initial: Membership | None) -> NodeFiles:
    data = config.data_path
    os.makedirs(data, exist_ok=True)
    state = StateMachine.open(str(data / "state"))
    try:
        return _open_log(config, state, rejoin, initial or Membership.of(config.peers))
    except BaseException:
        state.close()
        raise


def _open_log(config: NodeConfig, state: StateMachine, rejoin: bool, initial: Membership) -> NodeFiles:
    data = config.data_path
    # The node syncs the log itself (must_sync, in a worker thread), so the log is opened
    # without per-append sync; with wal_sync=false its background flusher bounds the window.
    seg_log = SegmentLog.open(str(data / "log"), segment_bytes=config.segment_bytes, wal_sync=False)
    try:
        return _open_core(config, state, seg_log, rejoin, initial)
    except BaseException:
        seg_log.close()
        raise


def _open_core(config: NodeConfig, state: StateMachine, seg_log: SegmentLog, rejoin: bool,
               initial: Membership) -> NodeFiles:
    data = config.data_path
    cut = seg_log.recovery
    if cut is not None:
        log.warning("raft log recovery cut a torn tail: %s", cut)
    storage = NodeStorage(str(data), seg_log, state, initial)
    applied = state.applied_index
    if applied > seg_log.last_index:
        # A snapshot was installed but the crash came before the log was reset to it.
        seg_log.compact_through(applied, state.applied_term)
    hard, _ = storage.initial_state()
    rejoining = _check_rejoin(config, seg_log, state, hard, rejoin)
    raft_config = RaftConfig(
        id=config.id,
        voters=initial.voters,
        election_ticks=config.election_ticks,
        heartbeat_ticks=config.heartbeat_ticks,
        max_inflight=config.max_inflight,
        max_entry_bytes=config.batch_bytes_max + 64 * 1024,
        max_uncommitted_bytes=max(config.max_uncommitted_bytes, config.batch_bytes_max + 64 * 1024),
        max_append_bytes=min(4 << 20, config.frame_bytes_max // 4),
        snapshot_chunk_bytes=min(1 << 20, config.frame_bytes_max // 4),
        # Under load the commit index rides on the next entries; an idle follower learns
        # it within one tick_ms. Halves the messages and Ready cycles per entry.
        lazy_commit=True,
        applied=applied,
        rejoining=rejoining,
        max_promotion_lag=config.max_promotion_lag,
        auto_promote=config.auto_promote,
    )
    # Election jitter only; the core never reads global random state.
    raft = RaftNode(raft_config, storage, random.Random())
    return NodeFiles(seg_log, state, storage, raft, hard, rejoining)


def _check_rejoin(config: NodeConfig, seg_log: SegmentLog, state: StateMachine, hard: HardState,
                  rejoin: bool) -> bool:
    """Whether this node withholds its vote until caught up (config.rejoin, RaftConfig.
    rejoining). The marker file keeps it so across restarts until the catch-up is durable."""
    marker = config.data_path / REJOIN_MARKER
    if marker.exists():
        log.warning("node %d: still catching up after losing its data (%s): it votes again once it "
                    "holds every committed entry", config.id, marker)
        return True
    if not rejoin:
        return False
    empty = seg_log.last_index == 0 and state.applied_index == 0 and hard.term == 0 and hard.vote == 0
    if not empty:
        log.info("node %d: --rejoin has no effect: the data dir holds a log (term %d, last index %d)",
                 config.id, hard.term, seg_log.last_index)
        return False
    write_atomically(str(marker), b"This node started empty with --rejoin: it votes again once caught up.\n")
    log.warning("node %d: rejoining with an empty data dir: no vote and no election until it holds every "
                "entry the cluster has committed", config.id)
    return True


def note_caught_up(config: NodeConfig, committed: int) -> None:
    """The core votes again (its catch-up is durable): the marker goes, durably."""
    marker = config.data_path / REJOIN_MARKER
    try:
        marker.unlink(missing_ok=True)
        fsync_directory(str(config.data_path))
    except OSError as exc:
        # The node votes now either way; a marker left behind only repeats the catch-up
        # after a restart, which costs availability, never safety.
        log.warning("node %d: could not remove %s: %s", config.id, marker, exc)
    log.info("node %d: caught up through index %d after rejoining: votes again", config.id, committed)
