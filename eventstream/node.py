"""The Node: one `esc` process. It drives the pure Raft core with time and I/O.

It owns the durable files (NodeStorage), the state machine, the peer links and the client
server, all on one asyncio loop. The core decides; the node carries out each Ready in the
order its contract demands (eventstream/raft/node.py, class Ready):

    send messages            leader traffic may overlap its own write (thesis 10.2.1)
    stage snapshot chunks, install a finished snapshot
    append entries, save hard state
    fdatasync                only when wal_sync and the Ready says must_sync; runs in a worker
                             thread, so ticks, peer messages and new client appends go on
    send persisted messages  votes and acks promise durable state
    apply committed entries, answer the clients waiting on them, serve confirmed reads
    compact the log, advance

Group commit falls out of this loop: everything clients send while one fdatasync runs is
proposed as one entry in the next cycle and shares the next fdatasync.

Durability per wal_sync (issue 5): with true, an acknowledged append is in the fdatasync'ed
log of a majority (the leader acks after commit, and followers ack AppendEntries after their
fdatasync). With false, every node's write reaches the OS page cache before it acks, and a
background thread syncs at most sync_interval_ms (200 ms) later: a crash of the esc process
loses nothing, but a power loss or kernel crash on a majority of machines within that window
can lose acknowledged events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from eventstream import __version__
from eventstream._append_wire import (
    REFUSED_INVALID,
    REFUSED_NOT_ACCEPTING,
    REFUSED_OVERLOADED,
    AppendIntake,
    EntryWaiters,
)
from eventstream.config import NodeConfig, parse_address
from eventstream.metrics import LATENCY_BUCKETS_S, NodeMetrics
from eventstream.node_storage import NodeStorage
from eventstream.proposal_clock import CLOCK_GAP_NOTED_US, ProposalClock
from eventstream.raft.config import RaftConfig
from eventstream.raft.messages import NONE, Entry, HardState, Message, MessageType, SnapshotChunk
from eventstream.raft.node import (
    MalformedMessageError,
    NotLeaderError,
    ProposalError,
    RaftNode,
    Ready,
    Role,
    TransferInProgressError,
    UncommittedLimitError,
)
from eventstream.replication.pipeline import FollowerPipeline, InProcessPipeline
from eventstream.replication.pool import ReplicationPool
from eventstream.state import (
    EVENT_COMMANDS,
    STATUS_BAD_QUEUE,
    STATUS_DEDUP_FULL,
    STATUS_DUPLICATE,
    ApplyStoppedError,
    CommandType,
    ConfigError,
    OffsetRangeError,
    SnapshotReceiver,
    StateError,
    StateMachine,
    dedup_cutoffs_us,
    encode_config_update,
    encode_dedup_expire,
    validate_config,
)
from eventstream.storage import SegmentLog, crc32c
from eventstream.storage.atomic_file import fsync_directory, write_atomically
from eventstream.storage.errors import StorageError
from eventstream.transport.client_protocol import (
    Consistency,
    Op,
    ProtocolError,
    Request,
    Status,
    decode_json_object,
    decode_read,
    decode_status_options,
    encode_json,
    encode_read_ok,
    encode_response,
)
from eventstream.transport.client_server import (
    IN_FLIGHT_PER_CONNECTION_MAX,
    ClientServer,
    ClientSession,
    Refusal,
)
from eventstream.transport.hello import ROLE_CLIENT, ROLE_PEER, ROLE_REPLICATION
from eventstream.transport.http_status import HttpStatusServer
from eventstream.transport.listener import Listener
from eventstream.transport.peer_codec import PeerCodecError, decode_message
from eventstream.transport.peers import PeerNetwork

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
READ_TIMEOUT_S = 5.0
READ_BYTES_MAX = 16 * 1024 * 1024
READ_EVENTS_MAX = 100_000
# Reads kept waiting for their ReadIndex confirmation or for apply to catch up.
PENDING_READS_MAX = 100_000
# A leader whose followers commit on their own lets its writes gather for up to
# LEADER_SYNC_GATHER_STEPS steps of LEADER_SYNC_STEP_S before one fdatasync covers them all,
# unless its copy is needed for a commit sooner (see _sync_loop).
LEADER_SYNC_STEP_S = 0.001
LEADER_SYNC_GATHER_STEPS = 5
# What only a leader sends to a follower.
_LEADER_TYPES = frozenset({MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT})
# In the data dir while a node that lost its data catches up (NodeConfig.rejoin).
REJOIN_MARKER = "REJOINING"


@dataclass(slots=True)
class _EntryWaiters:
    term: int
    waiters: EntryWaiters


@dataclass(slots=True)
class _PendingRead:
    session: ClientSession
    request_id: int
    queue: int
    offset: int
    limit: int
    max_bytes: int
    deadline: float
    index: int = 0  # set once the read index is confirmed


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.id = config.id
        self.metrics = NodeMetrics(config.id)
        self.peer_ids = tuple(sorted(config.peers))
        self.storage: NodeStorage | None = None
        self.raft: RaftNode | None = None
        self.state: StateMachine | None = None
        self.seg_log: SegmentLog | None = None
        # Client APPENDs, from the bytes read to the entry proposed and the answers written.
        self.intake = AppendIntake(config.frame_bytes_max, IN_FLIGHT_PER_CONNECTION_MAX,
                                   config.max_uncommitted_bytes, LATENCY_BUCKETS_S)
        self.metrics.append_seconds.native = self.intake
        self._waiting: dict[int, _EntryWaiters] = {}
        self._config_waiters: dict[int, list[tuple[ClientSession, int]]] = {}
        self._reads_by_context: dict[bytes, _PendingRead] = {}
        self._reads_confirmed: deque[_PendingRead] = deque()
        self._read_seq = itertools.count(1)
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._listener: Listener | None = None
        self._peers: PeerNetwork | None = None
        self._pipelines: dict[int, FollowerPipeline] = {}
        self._inprocess_pipelines: dict[int, FollowerPipeline] = {}
        self._pool: ReplicationPool | None = None
        self._clients: ClientServer | None = None
        self._http: HttpStatusServer | None = None
        self._receiver: SnapshotReceiver | None = None
        self._snapshot_task: asyncio.Task[None] | None = None
        self._last_snapshot_index = 0
        self._saved_term_vote = (0, 0)
        self._commit_saved = 0
        # The leader's deferred fdatasync (_sync_loop): the last entry written but not yet
        # synced, and the last index known durable (the commit index saved never passes it).
        self._unsynced: tuple[int, int] | None = None
        self._synced_through = 0
        # Entries up to this index reached this node after the leader had committed them:
        # replayed from this node's disk at start, or sent to catch it up after a restart, a
        # partition or a pause. How long ago they were proposed is unknown, so the times in
        # them bound the log's clock from below but do not measure a gap between two clocks.
        self._late_through = 0
        # The leader's messages that end a silence longer than an election timeout (a cut
        # link, a pause) may carry entries that waited in a socket or a worker's queue all that
        # while, with the commit index of when they were sent: entries applied until
        # _late_until (monotonic) count as late too.
        self._leader_heard_at = -float("inf")
        self._late_until = 0.0
        self._silence_s = config.election_ticks * config.tick_ms / 1000
        self._rejoining = False  # RaftConfig.rejoining: this node lost its data and catches up
        self._sync_wanted = asyncio.Event()
        self._dedup_full_logged = -DEDUP_FULL_LOG_INTERVAL_S
        # The leader's clock for times written into the log (proposal_clock.py); the wall
        # clock's offset from it when last looked at, to log a step once.
        self._clock = ProposalClock()
        self._clock_offset_seen_us = 0
        self._role = Role.FOLLOWER
        self._leader = NONE
        self._bootstrap_config_proposed = False
        self.fatal: str | None = None
        self._digest_cache: tuple[int, str, float] = (-1, "", 0.0)
        self._digest_task: asyncio.Task[None] | None = None
        self._digest_asked_at = -1  # the applied index when the digest was last asked for
        self._status_replies: set[asyncio.Task[None]] = set()  # STATUS requests waiting on a digest
        self.listen_address: tuple[str, int] | None = None
        self.http_address: tuple[str, int] | None = None
        self.leader_since: float | None = None
        self.started_at = time.time()

    # ----------------------------------------------------------------- lifecycle
    def open_storage(self) -> None:
        data = self.config.data_path
        os.makedirs(data, exist_ok=True)
        self.state = StateMachine.open(str(data / "state"))
        # The node syncs the log itself (must_sync, in a worker thread), so the log is opened
        # without per-append sync; with wal_sync=false its background flusher bounds the window.
        self.seg_log = SegmentLog.open(str(data / "log"), segment_bytes=self.config.segment_bytes, wal_sync=False)
        cut = self.seg_log.recovery
        if cut is not None:
            log.warning("raft log recovery cut a torn tail: %s", cut)
        self.storage = NodeStorage(str(data), self.seg_log, self.state, self.peer_ids)
        applied = self.state.applied_index
        if applied > self.seg_log.last_index:
            # A snapshot was installed but the crash came before the log was reset to it.
            self.seg_log.compact_through(applied, self.state.applied_term)
        self._last_snapshot_index = applied
        self.intake.queue_count = self.state.config["queue_count"]
        self._synced_through = self.seg_log.last_index  # recovery kept only what is on disk
        self._late_through = self.seg_log.last_index
        hard, _ = self.storage.initial_state()
        self._saved_term_vote = (hard.term, hard.vote)
        self._commit_saved = hard.commit
        self._rejoining = self._check_rejoin(hard)
        raft_config = RaftConfig(
            id=self.id,
            voters=self.peer_ids,
            election_ticks=self.config.election_ticks,
            heartbeat_ticks=self.config.heartbeat_ticks,
            max_inflight=self.config.max_inflight,
            max_entry_bytes=self.config.batch_bytes_max + 64 * 1024,
            max_uncommitted_bytes=max(self.config.max_uncommitted_bytes, self.config.batch_bytes_max + 64 * 1024),
            max_append_bytes=min(4 << 20, self.config.frame_bytes_max // 4),
            snapshot_chunk_bytes=min(1 << 20, self.config.frame_bytes_max // 4),
            # Under load the commit index rides on the next entries; an idle follower learns
            # it within one tick_ms. Halves the messages and Ready cycles per entry.
            lazy_commit=True,
            applied=applied,
            rejoining=self._rejoining,
        )
        import random

        # Election jitter only; the core never reads global random state.
        self.raft = RaftNode(raft_config, self.storage, random.Random())

    def _check_rejoin(self, hard: HardState) -> bool:
        """Whether this node withholds its vote until caught up (config.rejoin, RaftConfig.
        rejoining). The marker file keeps it so across restarts until the catch-up is durable."""
        assert self.seg_log is not None and self.state is not None
        marker = self.config.data_path / REJOIN_MARKER
        if marker.exists():
            log.warning("node %d: still catching up after losing its data (%s): it votes again once it "
                        "holds every committed entry", self.id, marker)
            return True
        if not self.config.rejoin:
            return False
        empty = self.seg_log.last_index == 0 and self.state.applied_index == 0 and hard.term == 0 and hard.vote == 0
        if not empty:
            log.info("node %d: --rejoin has no effect: the data dir holds a log (term %d, last index %d)",
                     self.id, hard.term, self.seg_log.last_index)
            return False
        write_atomically(str(marker), b"This node started empty with --rejoin: it votes again once caught up.\n")
        log.warning("node %d: rejoining with an empty data dir: no vote and no election until it holds every "
                    "entry the cluster has committed", self.id)
        return True

    def _note_caught_up(self) -> None:
        """The core votes again (its catch-up is durable): the marker goes, durably."""
        marker = self.config.data_path / REJOIN_MARKER
        try:
            marker.unlink(missing_ok=True)
            fsync_directory(str(self.config.data_path))
        except OSError as exc:
            # The node votes now either way; a marker left behind only repeats the catch-up
            # after a restart, which costs availability, never safety.
            log.warning("node %d: could not remove %s: %s", self.id, marker, exc)
        self._rejoining = False
        assert self.raft is not None
        log.info("node %d: caught up through index %d after rejoining: votes again", self.id, self.raft.log.committed)

    async def start(self) -> None:
        if self.raft is None:
            self.open_storage()
        cfg = self.config
        self._listener = Listener(crc32c, cfg.frame_bytes_max)
        host, port = parse_address("listen", cfg.listen)
        self.listen_address = await self._listener.start(host, port)
        peers = {pid: parse_address(f"peers[{pid}]", addr) for pid, addr in cfg.peers.items() if pid != self.id}
        self._peers = PeerNetwork(
            self.id, peers, crc32c, cfg.frame_bytes_max, self._on_peer_messages, self._on_peer_unreachable,
            local_host=host, on_connected=self._on_peer_connected,
        )
        self._inprocess_pipelines = {pid: InProcessPipeline(pid, self._peers) for pid in peers}
        self._pipelines = dict(self._inprocess_pipelines)
        if cfg.replication == "pool" and peers:
            assert self.raft is not None
            self._pool = ReplicationPool(self.id, peers, self._peers, self._on_worker_reprobe,
                                         on_responses=self._on_worker_responses, on_dropped=self._on_worker_dropped,
                                         local_host=host, append_bytes_max=self.raft.config.max_append_bytes)
            self.metrics.replication_usage = self._pool.usage
            self.metrics.worker_wake.source = self._pool.wake_counters
        self._clients = ClientServer(self, self.intake)
        self._listener.set_owner(ROLE_PEER, self._peers)
        # Any node may follow a pool-mode leader, whatever its own mode.
        self._listener.set_owner(ROLE_REPLICATION, self._peers)
        self._listener.set_owner(ROLE_CLIENT, self._clients)
        self._peers.start()
        if cfg.http:
            self._http = HttpStatusServer(self.answer_status, self.metrics.render)
            h, p = parse_address("http", cfg.http)
            self.http_address = await self._http.start(h, p)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._ready_loop(), name="ready-loop"),
            loop.create_task(self._tick_loop(), name="tick-loop"),
            loop.create_task(self._housekeeping_loop(), name="housekeeping"),
            loop.create_task(self._sync_loop(), name="leader-sync"),
        ]
        log.info(
            "node %d (esc %s) listening on %s:%d, peers %s, data %s, wal_sync=%s",
            self.id, __version__, *self.listen_address, cfg.peers, cfg.data_dir, cfg.wal_sync,
        )
        self._wake.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def request_stop(self) -> None:
        self._stopped.set()

    async def shutdown(self, transfer: bool = True) -> None:
        """Stop serving. A leader first hands leadership to the most caught-up follower
        (thesis 3.10) so clients see a new leader within a round trip, not an election timeout."""
        if transfer and self.raft is not None and self.raft.role == Role.LEADER and len(self.peer_ids) > 1:
            await self._transfer_leadership()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("task %s failed during shutdown", task.get_name())
        if self._snapshot_task is not None:
            try:
                await self._snapshot_task
            except Exception:
                log.exception("snapshot failed during shutdown")
        self._fail_all_waiters(Status.UNAVAILABLE, "node is shutting down")
        if self._http is not None:
            await self._http.stop()
        if self._pool is not None:
            await self._pool.close()
        if self._peers is not None:
            await self._peers.stop()
        if self._listener is not None:
            await self._listener.stop()
        if self.seg_log is not None:
            self.seg_log.close()
        if self.state is not None:
            self.state.close()
        log.info("node %d stopped", self.id)

    async def _transfer_leadership(self) -> None:
        raft = self.raft
        assert raft is not None
        progress = raft.status().progress
        candidates = sorted(
            ((match, pid) for pid, (_, match, _) in progress.items() if pid != self.id and self._peers and self._peers.is_connected(pid)),
            reverse=True,
        )
        if not candidates:
            return
        target = candidates[0][1]
        log.info("handing leadership to node %d before stopping", target)
        try:
            raft.transfer_leadership(target)
        except (ProposalError, ValueError) as exc:
            log.warning("leadership transfer not started: %s", exc)
            return
        self._wake.set()
        deadline = time.monotonic() + self.config.election_ticks * self.config.tick_ms / 1000
        while time.monotonic() < deadline and raft.role == Role.LEADER:
            await asyncio.sleep(self.config.tick_ms / 1000)

    # ----------------------------------------------------------------- time
    async def _tick_loop(self) -> None:
        interval = self.config.tick_ms / 1000
        next_at = time.monotonic()
        raft = self.raft
        assert raft is not None
        while True:
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()  # fell behind (paused process): do not burst ticks
            raft.tick()
            self._wake.set()

    async def _housekeeping_loop(self) -> None:
        """Timers that live outside the core: dedup expiry, request deadlines, lazy commit save."""
        last_expire = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            self._expire_requests(now)
            raft = self.raft
            assert raft is not None and self.state is not None
            interval = self.config.dedup_expire_interval
            if raft.role == Role.LEADER and interval > 0 and now - last_expire >= interval:
                last_expire = now
                cutoffs = dedup_cutoffs_us(self._clock.now_us(), self.state.config)
                self._propose_command(encode_dedup_expire(*cutoffs))
                self._note_clock_step()

    def _note_clock_step(self) -> None:
        """Log a wall-clock step during this term once: the log keeps the term's monotonic time."""
        offset = self._clock.wall_offset_us()
        self.metrics.log_clock_offset.set(offset / 1e6)
        if abs(offset - self._clock_offset_seen_us) > CLOCK_GAP_NOTED_US:
            log.warning("node %d: the wall clock moved %+.1f s against the monotonic clock during this term; "
                        "times written into the log keep following the monotonic clock, so no dedup window "
                        "is cut short", self.id, (offset - self._clock_offset_seen_us) / 1e6)
            self._clock_offset_seen_us = offset

    def _expire_requests(self, now: float) -> None:
        for index in [i for i, w in self._waiting.items() if now - w.waiters.first_arrival > APPEND_TIMEOUT_S]:
            entry = self._waiting.pop(index)
            self._fail_waiters(entry.waiters, Status.TIMEOUT,
                               f"entry {index} not committed within {APPEND_TIMEOUT_S:.0f} s; retry with the same event ids")
        expired = [ctx for ctx, r in self._reads_by_context.items() if r.deadline < now]
        for ctx in expired:
            r = self._reads_by_context.pop(ctx)
            self._reply_error(r.session, r.request_id, Status.TIMEOUT, "read not confirmed by a quorum in time")
        while self._reads_confirmed and self._reads_confirmed[0].deadline < now:
            r = self._reads_confirmed.popleft()
            self._reply_error(r.session, r.request_id, Status.TIMEOUT, "read index not applied in time")

    # ----------------------------------------------------------------- the Ready loop
    async def _ready_loop(self) -> None:
        raft = self.raft
        assert raft is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self._flush_proposals()
                while raft.has_ready():
                    rd = raft.ready()
                    self.metrics.ready_cycles.inc()
                    durable = await self._handle_ready(rd)
                    raft.advance(rd, durable=durable)
                    self._after_advance()
                    self._flush_proposals()
            except ApplyStoppedError as exc:
                self.fatal = str(exc)
                log.critical("stopping: %s", exc)
                self.request_stop()
                return
            except StorageError as exc:
                # The log's disk refused a write or a sync (full, failing): the message names
                # the file and the error, and a traceback would only hide it.
                self.fatal = f"log storage failed: {exc}"
                log.critical("stopping: %s", self.fatal)
                self.request_stop()
                return
            except Exception as exc:
                self.fatal = f"ready loop failed: {exc!r}"
                log.critical("stopping: ready loop failed", exc_info=True)
                self.request_stop()
                return

    async def _handle_ready(self, rd: Ready) -> bool:
        """Carry out `rd`; returns whether its writes are durable (see _can_defer_sync)."""
        seg_log = self.seg_log
        storage = self.storage
        assert seg_log is not None and storage is not None
        if rd.messages:
            self._send(rd.messages)
        if rd.snapshot_chunks:
            self._stage_snapshot_chunks(rd.snapshot_chunks)
        if rd.snapshot is not None:
            self._install_snapshot(rd.snapshot.index, rd.snapshot.term)
        if rd.entries:
            self._append_entries(rd.entries)
        if rd.hard_state is not None:
            self._save_hard_state(rd.hard_state)
        durable = True
        wal_sync = self.config.wal_sync
        if wal_sync and rd.must_sync and (rd.entries or rd.snapshot is not None):
            if self._can_defer_sync(rd):
                # A leader's own fdatasync does not hold up its next cycles: it runs in the
                # sync task while new entries are proposed and sent, and the core counts the
                # leader toward commit only once it reports the write durable (advance below,
                # then RaftNode.persisted from _sync_loop; thesis 10.2.1).
                last = rd.entries[-1]
                self._unsynced = (last.index, last.term)
                self._sync_wanted.set()
                durable = False
            else:
                # A follower has nothing to do until its write is durable, and a thread handoff
                # costs it more CPU per entry than the blocking call does.
                self._sync_now()
        elif wal_sync and rd.persisted_messages and self._unsynced is not None:
            self._sync_now()  # no ack or vote while writes of this node's leadership are unsynced
        if rd.persisted_messages:
            self._send(rd.persisted_messages)
        # Committed entries are applied once the acknowledgement is on its way: the leader
        # waits for that acknowledgement, never for this node's apply (commit means a majority
        # holds them durably, §5.3). Entries written by this very Ready may already be
        # committed and are applied before this node's own copy is synced when the leader
        # defers its sync: neither the answer to a client nor the state depends on that copy,
        # and a crash loses nothing the state machine cannot rebuild from its snapshot and the
        # log, which the leader completes again.
        if rd.committed_entries:
            self.metrics.commits.inc(len(rd.committed_entries))
            self._apply(rd.committed_entries)
        for rs in rd.read_states:
            pending = self._reads_by_context.pop(rs.context, None)
            if pending is not None:
                pending.index = rs.index
                self._reads_confirmed.append(pending)
        for ctx in rd.dropped_reads:
            pending = self._reads_by_context.pop(ctx, None)
            if pending is not None:
                self._reply_not_leader(pending.session, pending.request_id)
        self._serve_confirmed_reads()
        if rd.compact_index:
            seg_log.compact_through(rd.compact_index)
        return durable

    def _can_defer_sync(self, rd: Ready) -> bool:
        """A leader's Ready that promises nothing durable to anyone (RaftNode.advance)."""
        raft = self.raft
        assert raft is not None
        hs = rd.hard_state
        return (
            raft.role == Role.LEADER
            and bool(rd.entries)
            and rd.snapshot is None
            and not rd.snapshot_chunks
            and not rd.persisted_messages
            and (hs is None or (hs.term, hs.vote) == self._saved_term_vote)
        )

    def _sync_now(self) -> None:
        """fdatasync the log on this thread; covers the leader's deferred writes too."""
        seg_log = self.seg_log
        assert seg_log is not None
        started = time.perf_counter()
        last = seg_log.last_index
        seg_log.sync()
        self._synced_through = last
        self._count_fsync(started)
        unsynced, self._unsynced = self._unsynced, None
        if unsynced is not None:
            assert self.raft is not None
            self.raft.persisted(*unsynced)

    def _count_fsync(self, started: float) -> None:
        self.metrics.fsyncs.inc()
        self.metrics.fsync_seconds.observe(time.perf_counter() - started)

    async def _sync_loop(self) -> None:
        """The leader's deferred fdatasyncs: each covers every entry written before it starts,
        so entries proposed while one runs share the next (group commit)."""
        seg_log, raft = self.seg_log, self.raft
        assert seg_log is not None and raft is not None
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
                    await asyncio.sleep(LEADER_SYNC_STEP_S)
                    if raft.commit_waits_on_leader():
                        break
            self._sync_wanted.clear()
            target = self._unsynced
            if target is None:
                continue
            started = time.perf_counter()
            await loop.run_in_executor(None, seg_log.sync)
            self._count_fsync(started)
            if self._unsynced == target:
                self._unsynced = None
            try:
                still_there = seg_log.term(target[0]) == target[1]
            except StorageError:
                still_there = False
            if still_there:  # not replaced since (this node may have lost leadership meanwhile)
                self._synced_through = max(self._synced_through, target[0])
            raft.persisted(*target)
            self._wake.set()

    def _after_advance(self) -> None:
        raft = self.raft
        assert raft is not None
        role, leader = raft.role, raft.leader
        if role != self._role or leader != self._leader:
            self._on_role_change(self._role, role, leader)
            self._role, self._leader = role, leader
        self.metrics.term.set(raft.term)
        if self._rejoining and not raft.withholding_votes:
            self._note_caught_up()
        self._maybe_snapshot()

    def _on_role_change(self, old: Role, new: Role, leader: int) -> None:
        log.info("node %d: %s -> %s (term %d, leader %d)", self.id, old.name, new.name, self.raft.term if self.raft else 0, leader)
        self.metrics.is_leader.set(1 if new == Role.LEADER else 0)
        if new == Role.LEADER:
            self.metrics.elections.inc()
            self.leader_since = time.time()
            ahead_us = self._clock.start_term()
            self._clock_offset_seen_us = self._clock.wall_offset_us()
            if ahead_us > CLOCK_GAP_NOTED_US:
                log.warning("node %d: this node's clock is %.1f s ahead of the previous leader's; ids that "
                            "leader saw may leave the dedup window up to that much early: keep the nodes' "
                            "clocks in step", self.id, ahead_us / 1e6)
            self._maybe_bootstrap_config()
            if self._pool is not None:
                try:
                    self._pipelines = {**self._inprocess_pipelines, **self._pool.start()}
                except OSError as exc:
                    log.warning("replication pool did not start (%s); replicating in-process this term", exc)
        elif old == Role.LEADER:
            self.leader_since = None
            self._clock.end_term()
            if self._pool is not None:
                self._pool.stop()
                self._pipelines = dict(self._inprocess_pipelines)
            # Entries this node proposed may still commit under the next leader; the clients
            # retry with the same event ids and the dedup table answers with the original
            # result, so failing them here loses nothing and applies nothing twice.
            self._fail_all_waiters(Status.NOT_LEADER, "leadership changed; retry at the new leader")

    def _maybe_bootstrap_config(self) -> None:
        """A brand-new cluster takes its first replicated config from its leader's flags."""
        assert self.seg_log is not None and self.state is not None
        if self._bootstrap_config_proposed or self.seg_log.last_index > 1 or self.state.applied_index > 1:
            return
        self._bootstrap_config_proposed = True
        initial = {
            "queue_count": self.config.queue_count,
            "dedup_window_ms": int(self.config.dedup_window * 1000),
            "batch_size": self.config.batch_size,
            "snapshot_threshold": self.config.snapshot_threshold,
        }
        self._propose_command(encode_config_update(initial))

    # ----------------------------------------------------------------- persistence
    def _append_entries(self, entries: list[Entry]) -> None:
        seg_log = self.seg_log
        assert seg_log is not None
        first = entries[0].index
        if first <= seg_log.last_index:
            # A conflicting suffix (5.3): the leader's entries replace it.
            seg_log.truncate_after(first - 1)
            self._synced_through = min(self._synced_through, first - 1)
        seg_log.append([(e.index, e.term, e.data) for e in entries])
        assert self.storage is not None
        self.storage.recent.written(entries)

    def _save_hard_state(self, hs: HardState) -> None:
        storage = self.storage
        assert storage is not None
        # Term and vote must be durable before any vote or ack goes out (Figure 2). The commit
        # index alone is saved at most every second: a stale commit after a crash is safe (the
        # leader re-sends it), and saving it each cycle would add two fsyncs per commit.
        if (hs.term, hs.vote) != self._saved_term_vote or time.monotonic() - self._commit_saved_at > 1.0:
            if self.config.wal_sync and hs.commit > self._synced_through:
                # Commit may run ahead of this leader's own durable log (a majority of
                # followers holds it); the saved commit must never point past what a restart
                # finds in the log.
                hs = HardState(hs.term, hs.vote, self._synced_through)
            storage.save_hard_state(hs)
            self._saved_term_vote = (hs.term, hs.vote)
            self._commit_saved = hs.commit
            self._commit_saved_at = time.monotonic()

    _commit_saved_at = 0.0

    # ----------------------------------------------------------------- snapshots
    def _stage_snapshot_chunks(self, chunks: list[SnapshotChunk]) -> None:
        state = self.state
        assert state is not None
        for chunk in chunks:
            if chunk.offset == 0 or self._receiver is None:
                if self._receiver is not None:
                    self._receiver.abort()
                self._receiver = state.snapshot_receiver()
            self._receiver.feed(chunk.data)

    def _install_snapshot(self, index: int, term: int) -> None:
        state, seg_log, storage = self.state, self.seg_log, self.storage
        assert state is not None and seg_log is not None and storage is not None
        receiver, self._receiver = self._receiver, None
        if receiver is None:
            raise RuntimeError(f"snapshot {index} accepted but no chunks were staged")
        state.restore(receiver)
        if state.applied_index != index:
            raise RuntimeError(f"installed snapshot is at {state.applied_index}, Raft said {index}")
        storage.recent.clear()
        if index <= seg_log.last_index:
            seg_log.truncate_after(index)
        seg_log.compact_through(index, term)
        storage.refresh_snapshot()
        self._last_snapshot_index = index
        self.intake.queue_count = state.config["queue_count"]
        self.metrics.snapshots_installed.inc()
        self.metrics.applied_index.set(index)
        log.info("installed snapshot at index %d (term %d) from the leader", index, term)

    def _maybe_snapshot(self) -> None:
        state = self.state
        assert state is not None
        threshold = state.config.get("snapshot_threshold", self.config.snapshot_threshold)
        if self._snapshot_task is not None or state.applied_index - self._last_snapshot_index < threshold:
            return
        self._snapshot_task = asyncio.get_running_loop().create_task(self._take_snapshot())

    def trigger_snapshot(self) -> bool:
        state = self.state
        assert state is not None
        if self._snapshot_task is not None or state.applied_index <= self._last_snapshot_index:
            return False
        self._snapshot_task = asyncio.get_running_loop().create_task(self._take_snapshot())
        return True

    async def _take_snapshot(self) -> None:
        """Cut between two applies (short: hard links and a copy of the dedup table), write in a
        worker thread while apply goes on, then let the core compact the log through it."""
        state, storage, raft = self.state, self.storage, self.raft
        assert state is not None and storage is not None and raft is not None
        at = state.applied_index
        try:
            cut = state.begin_snapshot()
            index = cut.manifest["last_index"]
            await asyncio.get_running_loop().run_in_executor(None, cut.write)
            state.prune_snapshots()
            storage.refresh_snapshot()
            if index <= self._last_snapshot_index:
                # The leader's snapshot was installed while this one was written: it is newer
                # (the latest by index, kept by the prune), and the log is compacted through it.
                log.info("snapshot at index %d written, but the leader's snapshot at index %d was installed "
                         "meanwhile; nothing more to compact", index, self._last_snapshot_index)
                return
            self._last_snapshot_index = index
            raft.compact(index)
            self.metrics.snapshots_taken.inc()
            log.info("snapshot at index %d written; log compaction through it requested", index)
            self._wake.set()
        except (OSError, StateError) as exc:
            # A full or failing disk: one line naming the file and the error. The log is not
            # compacted meanwhile, so nothing is lost; it grows until a snapshot succeeds.
            log.warning("snapshot at index %d failed: %s; will retry at the next threshold", at, exc)
            self._last_snapshot_index = state.applied_index
        except Exception:
            log.exception("snapshot at index %d failed; will retry at the next threshold", at)
            self._last_snapshot_index = state.applied_index
        finally:
            self._snapshot_task = None

    # ----------------------------------------------------------------- apply
    def _apply(self, entries: list[Entry]) -> None:
        state = self.state
        assert state is not None
        metrics = self.metrics
        in_late_window = time.monotonic() < self._late_until
        for entry in entries:
            if entry.index <= state.applied_index:
                continue  # already in the state machine's snapshot (replay after restart)
            result = state.apply(entry.index, entry.term, entry.data)
            waiting = self._waiting.pop(entry.index, None)
            if result.first_seen_us is not None:
                self._clock.observe(result.first_seen_us, live=entry.index > self._late_through and not in_late_window)
            if result.command in EVENT_COMMANDS:
                assert result.statuses is not None and result.queues is not None and result.offsets is not None
                metrics.events_applied.inc(len(result.statuses))
                if waiting is not None:
                    if waiting.term == entry.term:
                        self._answer_appends(entry.index, waiting.waiters, result.statuses, result.queues, result.offsets)
                    else:
                        self._fail_waiters(waiting.waiters, Status.NOT_LEADER, "entry replaced by a new leader; retry")
            elif waiting is not None:
                self._fail_waiters(waiting.waiters, Status.INTERNAL, f"entry {entry.index} held another command")
            if result.command == CommandType.CONFIG_UPDATE:
                self.intake.queue_count = state.config["queue_count"]
                for session, request_id in self._config_waiters.pop(entry.index, ()):
                    session.reply(encode_response(Status.OK, request_id, encode_json(state.config)))
        metrics.applies.inc(len(entries))
        metrics.dedup_ids.set(len(state.dedup))
        metrics.dedup_generated_ids.set(state.dedup.generated_count)
        metrics.applied_index.set(state.applied_index)
        metrics.commit_index.set(entries[-1].index)

    def _answer_appends(self, index: int, waiters: EntryWaiters, statuses: memoryview,
                        queues: memoryview, offsets: memoryview) -> None:
        clients = self._clients
        refused, duplicates = self.intake.answer(waiters, index, statuses, queues, offsets,
                                                 _REFUSED_FLAGS, STATUS_DUPLICATE, time.monotonic())
        if duplicates:
            self.metrics.duplicates.inc(duplicates)
        for slot, gen, request_id, flag in refused:
            session = clients.session_for(slot, gen) if clients is not None else None
            if session is None:
                continue
            if flag == _REFUSED_DEDUP_FULL:
                self._reply_error(session, request_id, Status.OVERLOADED, self._dedup_full(index))
            else:
                self._reply_error(session, request_id, Status.INVALID_ARGUMENT,
                                  f"entry {index}: events naming a queue outside 0..{self.intake.queue_count - 1} "
                                  "were refused (queue_count changed since they were sent); the request's other "
                                  "events were stored")
        if clients is not None:
            clients.flush_soon()

    def _dedup_full(self, index: int) -> str:
        """The answer to a request with events refused by a full dedup table; also logged, at
        most every DEDUP_FULL_LOG_INTERVAL_S."""
        state = self.state
        assert state is not None
        config = state.config
        message = (f"entry {index}: the dedup table is full ({len(state.dedup):,} ids remembered, "
                   f"{state.dedup.generated_count:,} of them generated by the client library; dedup_ids_max "
                   f"{state.dedup.ids_max:,}): events with new ids were not stored, the request's other events were; "
                   f"retry with the same ids once older ids expire (dedup_window_ms {config['dedup_window_ms']:,}, "
                   f"dedup_generated_window_ms {config['dedup_generated_window_ms']:,}), or raise dedup_ids_max")
        now = time.monotonic()
        if now - self._dedup_full_logged >= DEDUP_FULL_LOG_INTERVAL_S:
            self._dedup_full_logged = now
            log.warning("appends with new ids are answered OVERLOADED: %s", message)
        return message

    # ----------------------------------------------------------------- proposals
    def _flush_proposals(self) -> None:
        raft = self.raft
        assert raft is not None
        intake = self.intake
        if not len(intake):
            return
        if raft.role != Role.LEADER:
            self._fail_waiters(intake.drain(), Status.NOT_LEADER, "leadership changed; retry")
            return
        # The cluster's time of first sight for every id in the entries (SET_EVENT_AT): the
        # dedup window runs from here, not from the events' own timestamps.
        now_us = self._clock.now_us()
        while len(intake):
            taken = intake.take(self.config.batch_size, self.config.batch_bytes_max, now_us)
            assert taken is not None  # requests are waiting
            data, waiters = taken
            try:
                index = raft.propose(data)
            except UncommittedLimitError as exc:
                self._fail_waiters(waiters, Status.OVERLOADED, str(exc))
                continue
            except TransferInProgressError as exc:
                self._fail_waiters(waiters, Status.UNAVAILABLE, str(exc))
                continue
            except NotLeaderError:
                self._fail_waiters(waiters, Status.NOT_LEADER, "leadership changed; retry")
                continue
            self._waiting[index] = _EntryWaiters(raft.term, waiters)
            self.metrics.proposals.inc()
            self.metrics.events_proposed.inc(waiters.event_count)

    def _propose_command(self, data: bytes) -> int | None:
        raft = self.raft
        assert raft is not None
        try:
            index = raft.propose(data)
        except ProposalError as exc:
            log.info("command not proposed: %s", exc)
            return None
        self.metrics.proposals.inc()
        self._wake.set()
        return index

    # ----------------------------------------------------------------- client requests
    def on_request(self, session: ClientSession, request: Request) -> None:
        op = request.op
        # APPENDs come here only past a connection's in-flight limit (answered there): the
        # intake queues all others natively.
        if op == Op.READ:
            self._on_read(session, request)
        elif op == Op.STATUS:
            try:
                options = decode_status_options(request.body)
            except ProtocolError as exc:
                self._reply_error(session, request.request_id, Status.INVALID_ARGUMENT, str(exc))
                return
            if not options.get("digest"):
                session.reply(encode_response(Status.OK, request.request_id, encode_json(self.status())))
                return
            task = asyncio.get_running_loop().create_task(self._reply_status(session, request.request_id))
            self._status_replies.add(task)
            task.add_done_callback(self._status_replies.discard)
        elif op == Op.CONFIG_GET:
            assert self.state is not None
            session.reply(encode_response(Status.OK, request.request_id, encode_json(self.state.config)))
        elif op == Op.CONFIG_UPDATE:
            self._on_config_update(session, request)
        elif op == Op.SNAPSHOT:
            started = self.trigger_snapshot()
            assert self.state is not None
            session.reply(encode_response(Status.OK, request.request_id, encode_json(
                {"started": started, "applied": self.state.applied_index, "last_snapshot": self._last_snapshot_index})))
        else:  # decode_request only yields known ops; a new op must be handled above
            self._reply_error(session, request.request_id, Status.INVALID_ARGUMENT, f"unsupported op {op}")

    def _leader_check(self, session: ClientSession, request_id: int) -> bool:
        raft = self.raft
        assert raft is not None
        if raft.role == Role.LEADER:
            if raft.lead_transferee != NONE:
                self._reply_error(session, request_id, Status.UNAVAILABLE, "leadership is being transferred; retry")
                return False
            return True
        self._reply_not_leader(session, request_id)
        return False

    def accepting_appends(self) -> bool:
        raft = self.raft
        assert raft is not None
        return raft.role == Role.LEADER and raft.lead_transferee == NONE

    def on_appends_queued(self) -> None:
        self._wake.set()

    def on_refused_appends(self, refusals: list[Refusal]) -> None:
        for session, request_id, code, message in refusals:
            if code == REFUSED_INVALID:
                self._reply_error(session, request_id, Status.INVALID_ARGUMENT, message or "bad append")
            elif code == REFUSED_OVERLOADED:
                self._reply_error(session, request_id, Status.OVERLOADED, "leader's proposal queue is full; back off")
            else:
                assert code == REFUSED_NOT_ACCEPTING
                self._leader_check(session, request_id)  # answers the refusal

    def _on_read(self, session: ClientSession, request: Request) -> None:
        req = decode_read(request.body)
        limit = min(req.limit, READ_EVENTS_MAX)
        max_bytes = min(req.max_bytes, READ_BYTES_MAX)
        pending = _PendingRead(session, request.request_id, req.queue, req.offset, limit, max_bytes,
                               time.monotonic() + READ_TIMEOUT_S)
        if req.consistency == Consistency.STALE:
            self._serve_read(pending)
            return
        raft = self.raft
        assert raft is not None
        if len(self._reads_by_context) + len(self._reads_confirmed) >= PENDING_READS_MAX:
            self._reply_error(session, request.request_id, Status.OVERLOADED, "too many reads waiting")
            return
        context = next(self._read_seq).to_bytes(8, "little")
        try:
            raft.read_index(context)
        except NotLeaderError:
            self._reply_not_leader(session, request.request_id)
            return
        self._reads_by_context[context] = pending
        self._wake.set()

    def _serve_confirmed_reads(self) -> None:
        state = self.state
        assert state is not None
        while self._reads_confirmed and self._reads_confirmed[0].index <= state.applied_index:
            self._serve_read(self._reads_confirmed.popleft())

    def _serve_read(self, r: _PendingRead) -> None:
        state = self.state
        assert state is not None
        try:
            events = state.read(r.queue, r.offset, r.limit, r.max_bytes)
        except OffsetRangeError as exc:
            self._reply_error(r.session, r.request_id, Status.OUT_OF_RANGE, str(exc))
            return
        except (ValueError, KeyError) as exc:
            self._reply_error(r.session, r.request_id, Status.INVALID_ARGUMENT, str(exc))
            return
        from eventstream.storage.codec import encode_batch

        rows = [(e.event_id, e.key, None, e.timestamp_us, e.payload, e.id_generated) for e in events]
        batch = encode_batch(rows)
        next_offset = events[-1].offset + 1 if events else r.offset
        r.session.reply(encode_response(Status.OK, r.request_id, encode_read_ok(r.offset if not events else events[0].offset, next_offset, batch)))

    def _on_config_update(self, session: ClientSession, request: Request) -> None:
        if not self._leader_check(session, request.request_id):
            return
        try:
            changes = decode_json_object(request.body)
            checked = validate_config(changes)
            data = encode_config_update(checked)
        except (ProtocolError, ConfigError) as exc:
            self._reply_error(session, request.request_id, Status.INVALID_ARGUMENT, str(exc))
            return
        index = self._propose_command(data)
        if index is None:
            self._reply_error(session, request.request_id, Status.UNAVAILABLE, "config change not proposed; retry")
            return
        # Answered once applied: the reply shows the config in force after the change.
        self._config_waiters.setdefault(index, []).append((session, request.request_id))

    # ----------------------------------------------------------------- replies
    def _reply_error(self, session: object, request_id: int, status: Status, message: str, leader_id: int = 0) -> None:
        assert isinstance(session, ClientSession)
        self.metrics.client_errors.labels(status.name).inc()
        session.reply_error(status, request_id, message, leader_id)

    def _reply_not_leader(self, session: ClientSession, request_id: int) -> None:
        raft = self.raft
        assert raft is not None
        leader = raft.leader
        if leader == NONE or leader == self.id:
            self._reply_error(session, request_id, Status.UNAVAILABLE, "no leader is known (election in progress or no quorum)")
        else:
            # The message is the leader's client address: the client follows it directly.
            self._reply_error(session, request_id, Status.NOT_LEADER, self.config.peers[leader], leader)

    def _fail_waiters(self, waiters: EntryWaiters, status: Status, message: str) -> None:
        count = self.intake.fail(waiters, status, message.encode())
        if count:
            self.metrics.client_errors.labels(status.name).inc(count)
            if self._clients is not None:
                self._clients.flush_soon()

    def _fail_all_waiters(self, status: Status, message: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for entry in waiting.values():
            self._fail_waiters(entry.waiters, status, message)
        self._fail_waiters(self.intake.drain(), status, message)
        config_waiters, self._config_waiters = self._config_waiters, {}
        for waiters in config_waiters.values():
            for session, request_id in waiters:
                self._reply_error(session, request_id, status, message)
        for r in list(self._reads_by_context.values()) + list(self._reads_confirmed):
            self._reply_error(r.session, r.request_id, status, message)
        self._reads_by_context.clear()
        self._reads_confirmed.clear()

    # ----------------------------------------------------------------- peers
    def _send(self, messages: list[Message]) -> None:
        pipelines = self._pipelines
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

    def _on_peer_messages(self, peer_id: int, bodies: list[bytes]) -> None:
        messages = []
        for body in bodies:
            try:
                msg = decode_message(body)
            except PeerCodecError as exc:
                log.warning("dropping a malformed message from peer %d: %s", peer_id, exc)
                continue
            if msg.sender != peer_id or msg.to != self.id:
                log.warning("dropping a message from peer %d that claims sender %d, to %d", peer_id, msg.sender, msg.to)
                continue
            messages.append(msg)
        self._step_peer_messages(peer_id, messages)

    def _step_peer_messages(self, peer_id: int, messages: list[Message]) -> None:
        raft = self.raft
        assert raft is not None
        self.metrics.peer_messages.inc(len(messages))
        now = time.monotonic()
        for msg in messages:
            if msg.type in _LEADER_TYPES:
                if now - self._leader_heard_at > self._silence_s:
                    self._late_until = now + 2 * self._silence_s
                self._leader_heard_at = now
            if msg.type == MessageType.APPEND and msg.entries and msg.commit >= msg.entries[0].index:
                self._late_through = max(self._late_through, min(msg.commit, msg.entries[-1].index))
            try:
                raft.step(msg)
            except MalformedMessageError as exc:
                # The core changed nothing; a peer that sends such messages has a bug or is
                # not ours. Dropping them keeps this node safe.
                log.warning("dropping a malformed message from peer %d: %s", peer_id, exc)
        self._wake.set()

    def _on_peer_connected(self, peer_id: int) -> None:
        raft = self.raft
        assert raft is not None
        raft.report_reconnected(peer_id)
        self._wake.set()

    def _on_worker_reprobe(self, peer_id: int) -> None:
        # A (re)started worker's link, or entries a worker found overwritten in the shared ring:
        # what the follower was sent is unknown, so probe it afresh (§5.3).
        raft = self.raft
        assert raft is not None
        raft.report_reconnected(peer_id)
        self._wake.set()

    def _on_worker_responses(self, peer_id: int, messages: list[Message]) -> None:
        # The follower's answers as the worker relayed them: the same Messages the peer link
        # would have carried in-process.
        self._step_peer_messages(peer_id, messages)

    def _on_worker_dropped(self, peer_id: int, count: int) -> None:
        self.metrics.peer_frames_dropped.inc(count)

    def _on_peer_unreachable(self, peer_id: int) -> None:
        # The core needs no report: a lost append shows as a gap on the follower's next
        # heartbeat response, and the leader falls back to probing (raft/node.py).
        self.metrics.peer_frames_dropped.inc()

    # ----------------------------------------------------------------- status
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

    async def _reply_status(self, session: ClientSession, request_id: int) -> None:
        try:
            out = await self.answer_status(digest=True)
        except Exception as exc:  # the request must get an answer; the log gets the detail
            log.exception("status with digest failed")
            self._reply_error(session, request_id, Status.INTERNAL, f"status failed: {exc}")
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
        assert state is not None
        index, _, at = self._digest_cache
        now = time.monotonic()
        settled = self._digest_asked_at == state.applied_index  # nothing applied since the last ask
        if index != state.applied_index and (now - at >= DIGEST_RECOMPUTE_S or settled):
            if self._digest_task is None:
                self._digest_task = asyncio.get_running_loop().create_task(self._compute_digest())
            await asyncio.shield(self._digest_task)
        self._digest_asked_at = state.applied_index
        return self._digest_cache[0], self._digest_cache[1]

    async def _compute_digest(self) -> None:
        state = self.state
        assert state is not None
        try:
            cut = state.begin_digest()
            started = time.monotonic()
            digest = await asyncio.get_running_loop().run_in_executor(None, cut.compute)
            self._digest_cache = (cut.index, digest, started)
        finally:
            self._digest_task = None

    def status(self) -> dict[str, Any]:
        """This node's view, cheap enough to poll; answer_status adds the state digest."""
        raft, state, seg_log = self.raft, self.state, self.seg_log
        assert raft is not None and state is not None and seg_log is not None
        st = raft.status()
        queues = {str(q): {"first": lo, "next": hi} for q in sorted(state.queues.logs) for lo, hi in [state.queue_range(q)]}
        followers = {str(pid): {"state": s, "match": m, "next": n} for pid, (s, m, n) in st.progress.items() if pid != self.id}
        return {
            "id": self.id,
            "version": __version__,
            "role": st.role.name.lower(),
            "term": st.term,
            "leader": st.leader,
            "leader_address": self.config.peers.get(st.leader),
            "rejoining": self._rejoining,  # lost its data; no vote until caught up (--rejoin)
            "commit": st.commit,
            "applied": state.applied_index,
            "first_index": seg_log.first_index,
            "last_index": seg_log.last_index,
            "queues": queues,
            "dedup": {"ids": len(state.dedup), "generated_ids": state.dedup.generated_count,
                      "ids_max": state.dedup.ids_max},
            "followers": followers,
            "last_snapshot": self._last_snapshot_index,
            "pipelines": {str(pid): dataclasses.asdict(p.stats) for pid, p in self._pipelines.items()},
            "replication": self.config.replication,
            "replication_workers": ({str(peer): dataclasses.asdict(u) for peer, u in self._pool.usage().items()}
                                    if self._pool is not None else {}),
            "wal_sync": self.config.wal_sync,
            "fatal": self.fatal,
            "uptime_s": round(time.time() - self.started_at, 3),
        }


DIGEST_RECOMPUTE_S = 10.0
# Container allocations between two young-generation collections once serving (default 700).
GC_YOUNG_THRESHOLD = 10_000


def _install_signal_handlers(node: Node) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.request_stop)


def _tune_gc_for_serving() -> None:
    """Make the cycle collector cheaper once the node is up.

    Everything alive at this point (modules, classes, the opened storage and state) lives as
    long as the process, yet every full collection would walk it again: freeze() moves it out
    of the collector's sight. Messages, entries and requests are short-lived containers that
    come in thousands a second; with the default first threshold (700) the collector ran every
    few AppendEntries and took about a tenth of a follower's CPU (perf), so it runs less often.
    Cycles among those objects are rare and still collected, only later.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def run_node(config: NodeConfig) -> int:
    """Run one node until SIGTERM/SIGINT (graceful) or a fatal error; returns the exit code."""
    node = Node(config)
    node.open_storage()
    await node.start()
    _tune_gc_for_serving()
    _install_signal_handlers(node)
    await node.wait_stopped()
    await node.shutdown(transfer=node.fatal is None)
    if node.fatal:
        log.critical("node %d stopped on a fatal error: %s", node.id, node.fatal)
        return 3
    return 0
