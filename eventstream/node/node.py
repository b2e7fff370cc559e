"""The Node: one `esc` process. It drives the pure Raft core with time and I/O.

It owns the data dir (files.py), the state machine, the peer links and the client server, all
on one asyncio loop, and wires the parts that carry out the core's decisions: ReadyExecutor
(ready.py) runs each Ready against NodeLog (durability.py), PeerRouting (routing.py) and
NodeApplier (apply.py); ClientRequests (requests.py) turns client requests into proposals.

Group commit falls out of the Ready loop: everything clients send while one fdatasync runs is
proposed as one entry in the next cycle and shares the next fdatasync.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from eventstream import __version__
from eventstream.config import NodeConfig, parse_address, replication_in_effect
from eventstream.metrics import LATENCY_BUCKETS_S, NodeMetrics
from eventstream.node.answers import AppendAnswers, Replies
from eventstream.node.apply import NodeApplier
from eventstream.node.clock import SYSTEM_CLOCK, Clock
from eventstream.node.durability import NodeLog
from eventstream.node.files import note_caught_up, open_files
from eventstream.node.join import JoinedCluster, JoinError, join_cluster
from eventstream.node.member_requests import MemberRequests
from eventstream.node.members import MemberDirectory
from eventstream.node.proposal_clock import CLOCK_GAP_NOTED_US, ProposalClock
from eventstream.node.reads import Reads
from eventstream.node.ready import ReadyExecutor
from eventstream.node.requests import ClientRequests
from eventstream.node.routing import LateEntries, PeerRouting
from eventstream.node.snapshots import Snapshots
from eventstream.node.status import Health, StatusReporter
from eventstream.raft.messages import NONE
from eventstream.raft.node import ProposalError, Role
from eventstream.replication._spsc_ring import TLS_AVAILABLE as NATIVE_TLS
from eventstream.state import (
    ApplyStoppedError,
    dedup_cutoffs_us,
    encode_config_update,
    encode_dedup_expire,
)
from eventstream.storage import crc32c
from eventstream.storage.errors import StorageError
from eventstream.tls import CA_FILE, node_files, peer_context, server_context
from eventstream.transport._append_intake import AppendIntake, TlsServer
from eventstream.transport.client_protocol import Request, Status
from eventstream.transport.client_server import (
    IN_FLIGHT_PER_CONNECTION_MAX,
    ClientServer,
    ClientSession,
    Refusal,
)
from eventstream.transport.hello import ROLE_CLIENT, ROLE_PEER, ROLE_REPLICATION
from eventstream.transport.http_status import HttpStatusServer
from eventstream.transport.listener import Listener

log = logging.getLogger(__name__)

# Timers outside the core (dedup expiry, request deadlines) are looked at this often.
HOUSEKEEPING_INTERVAL_S = 0.1


class Node:
    """A node with its data dir open and every part built; serve() starts its links and loops.
    `await Node.open(config)` does both."""

    def __init__(self, config: NodeConfig, clock: Clock = SYSTEM_CLOCK, joined: JoinedCluster | None = None) -> None:
        if config.join is not None and joined is None:
            raise JoinError("join: a joining node learns the membership first (Node.open does)")
        self.config = config
        self.id = config.id
        self.clock = clock
        self.metrics = metrics = NodeMetrics(config.id)
        self._wake_event = asyncio.Event()
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        wake = self._wake_event.set
        files = self.files = open_files(config, joined.membership if joined is not None else None)
        self.raft, self.state, self.seg_log, self.storage = files.raft, files.state, files.seg_log, files.storage
        self.health = Health(started_at=clock.wall(), rejoining=files.rejoining)
        applied_membership = self.raft.membership_at(max(self.state.applied_index, self.raft.memberships.base_index))
        metrics.voters.set(len(applied_membership.voters))
        metrics.learners.set(len(applied_membership.learners))
        # Client APPENDs, from the bytes read to the entry proposed and the answers written.
        self.intake = AppendIntake(config.frame_bytes_max, IN_FLIGHT_PER_CONNECTION_MAX,
                                   config.max_uncommitted_bytes, LATENCY_BUCKETS_S)
        self.intake.queue_count = self.state.config["queue_count"]
        metrics.append_seconds.native = self.intake
        # The leader's clock for times written into the log (proposal_clock.py); the wall
        # clock's offset from it when last looked at, to log a step once.
        self.proposal_clock = ProposalClock(clock.wall_ns, clock.monotonic_ns)
        self._clock_offset_seen_us = 0
        self.node_log = NodeLog(self.seg_log, self.storage, self.raft, files.hard_state, metrics, clock,
                                config.wal_sync, wake)
        self.late = LateEntries(self.seg_log.last_index, config.election_ticks * config.tick_ms / 1000)
        host, _ = parse_address("listen", config.listen)
        self.tls = server_context(config.tls_dir, config.id) if config.tls_dir else None
        # Whom to link with follows the membership in force (members.py); --peers, or what a
        # join learned, until a change names the members' addresses.
        known = {**(joined.addresses if joined is not None else config.peers), self.id: config.listen}
        self.directory = MemberDirectory(self.id, self.raft, known,
                                         grace_s=2 * config.election_ticks * config.tick_ms / 1000)
        self.directory.refresh(clock.monotonic())
        # Pool workers write their sockets from native code, and encrypt there too with TLS on
        # (csrc/tls_link.h); a build without OpenSSL's headers has no native TLS, and the leader
        # then replicates in-process (docs/operations.md, "TLS").
        self.replication = replication_in_effect(config.replication)
        use_pool = self.replication == "pool" and (self.tls is None or NATIVE_TLS)
        self.routing = PeerRouting(self.id, self.raft, dict(self.directory.links), host, config.frame_bytes_max,
                                   use_pool, self.late, metrics, clock, wake,
                                   peer_context(config.tls_dir, config.id) if config.tls_dir else None,
                                   config.tls_dir)
        self.clients = ClientServer(self, self.intake)
        self.replies = Replies(self.id, self.directory.addresses, self.raft, metrics)
        self.members = MemberRequests(self.id, self.raft, self.directory, self.replies, self._follow_membership)
        self.answers = AppendAnswers(self.intake, self.clients, self.replies, self.state, metrics, clock)
        self.reads = Reads(self.raft, self.state, self.replies, clock)
        self.snapshots = Snapshots(self.state, self.node_log, self.raft, self.intake, metrics,
                                   config.snapshot_threshold, wake)
        self.status_reporter = StatusReporter(config, self.raft, self.state, self.seg_log, self.snapshots,
                                              self.routing, self.health, self.replies, clock)
        self.requests = ClientRequests(config, self.raft, self.state, self.intake, self.answers, self.replies,
                                       self.reads, self.snapshots, self.status_reporter, self.members,
                                       self.proposal_clock, metrics, wake)
        self.applier = NodeApplier(self.state, self.answers, self.reads, self.snapshots, self.late,
                                   self.proposal_clock, metrics, clock, self._after_advance,
                                   self.members.on_applied)
        self.executor = ReadyExecutor(self.raft, self.node_log, self.routing, self.applier,
                                      sync_writes=config.wal_sync)
        self.listener = Listener(crc32c, config.frame_bytes_max)
        self.http = (HttpStatusServer(self.answer_status, metrics.render, self.requests.may_see_digest,
                                      config.http_allow_networks, self.requests.is_admin_token)
                     if config.http else None)
        self._role = Role.FOLLOWER
        self._leader = NONE
        self._bootstrap_config_proposed = False
        self.listen_address: tuple[str, int] = (host, 0)  # the bound address, once serving
        self.http_address: tuple[str, int] | None = None  # with config.http, once serving
        self.leader_since: float | None = None  # wall time this node became leader, while it leads

    @classmethod
    async def open(cls, config: NodeConfig, clock: Clock = SYSTEM_CLOCK) -> Node:
        joined = await join_cluster(config) if config.join is not None else None
        node = cls(config, clock, joined)
        await node.serve()
        return node

    @property
    def fatal(self) -> str | None:
        return self.health.fatal

    def _wake(self) -> None:
        self._wake_event.set()

    # ----------------------------------------------------------------- lifecycle
    async def serve(self) -> None:
        cfg = self.config
        host, port = parse_address("listen", cfg.listen)
        native_tls = None
        if self.tls is not None and NATIVE_TLS and cfg.tls_dir is not None:
            # The port's TLS in C: client answers are encrypted by the intake, not the loop.
            cert, key = node_files(cfg.tls_dir, cfg.id)
            native_tls = TlsServer(str(Path(cfg.tls_dir) / CA_FILE), str(cert), str(key))
        self.listen_address = await self.listener.start(host, port, self.tls, native_tls)
        peers = self.routing.peers
        self.listener.set_owner(ROLE_PEER, peers)
        # Any node may follow a pool-mode leader, whatever its own mode.
        self.listener.set_owner(ROLE_REPLICATION, peers)
        self.listener.set_owner(ROLE_CLIENT, self.clients)
        peers.start()
        if self.http is not None and cfg.http:
            h, p = parse_address("http", cfg.http)
            self.http_address = await self.http.start(h, p, self.tls)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._ready_loop(), name="ready-loop"),
            loop.create_task(self._tick_loop(), name="tick-loop"),
            loop.create_task(self._housekeeping_loop(), name="housekeeping"),
            loop.create_task(self.node_log.sync_loop(), name="leader-sync"),
        ]
        log.info(
            "node %d (esc %s) listening on %s:%d, peers %s, data %s, wal_sync=%s",
            self.id, __version__, *self.listen_address, cfg.peers, cfg.data_dir, cfg.wal_sync,
        )
        if self.tls is not None and self.replication == "pool" and not NATIVE_TLS:
            log.warning("node %d: TLS is on, and this build's replication workers have no native TLS (OpenSSL's "
                        "headers were missing when it was built): this node replicates in-process", self.id)
        if cfg.insecure and self.tls is None:
            log.warning("node %d: --insecure: peer and client links are not encrypted and peers are not "
                        "authenticated; anyone who reaches %s:%d can speak to this node", self.id,
                        *self.listen_address)
        self._wake()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def request_stop(self) -> None:
        self._stopped.set()

    async def shutdown(self, transfer: bool = True) -> None:
        """Stop serving. A leader first hands leadership to the most caught-up follower
        (thesis 3.10) so clients see a new leader within a round trip, not an election timeout."""
        if transfer and self.raft.role == Role.LEADER and len(self.raft.memberships.current.voters) > 1:
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
        await self.snapshots.wait()
        self._fail_all(Status.UNAVAILABLE, "node is shutting down")
        if self.http is not None:
            await self.http.stop()
        await self.routing.close()
        await self.listener.stop()
        self.files.close()
        log.info("node %d stopped", self.id)

    async def _transfer_leadership(self) -> None:
        raft, peers = self.raft, self.routing.peers
        progress = raft.status().progress
        candidates = sorted(
            ((match, pid) for pid, (_, match, _) in progress.items() if pid != self.id and peers.is_connected(pid)),
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
        self._wake()
        clock = self.clock
        deadline = clock.monotonic() + self.config.election_ticks * self.config.tick_ms / 1000
        while clock.monotonic() < deadline and raft.role == Role.LEADER:
            await clock.sleep(self.config.tick_ms / 1000)

    # ----------------------------------------------------------------- time
    async def _tick_loop(self) -> None:
        clock, raft = self.clock, self.raft
        interval = self.config.tick_ms / 1000
        next_at = clock.monotonic()
        while True:
            next_at += interval
            delay = next_at - clock.monotonic()
            if delay > 0:
                await clock.sleep(delay)
            else:
                next_at = clock.monotonic()  # fell behind (paused process): do not burst ticks
            raft.tick()
            self._wake()

    async def _housekeeping_loop(self) -> None:
        """Timers that live outside the core: dedup expiry, request deadlines."""
        clock = self.clock
        last_expire = clock.monotonic()
        while True:
            await clock.sleep(HOUSEKEEPING_INTERVAL_S)
            now = clock.monotonic()
            self._follow_membership()  # a removed node's link goes after a grace period
            self.answers.expire(now)
            self.reads.expire(now)
            interval = self.config.dedup_expire_interval
            if self.raft.role == Role.LEADER and interval > 0 and now - last_expire >= interval:
                last_expire = now
                cutoffs = dedup_cutoffs_us(self.proposal_clock.now_us(), self.state.config)
                self.requests.propose_command(encode_dedup_expire(*cutoffs))
                self._note_clock_step()

    def _note_clock_step(self) -> None:
        """Log a wall-clock step during this term once: the log keeps the term's monotonic time."""
        offset = self.proposal_clock.wall_offset_us()
        self.metrics.log_clock_offset.set(offset / 1e6)
        if abs(offset - self._clock_offset_seen_us) > CLOCK_GAP_NOTED_US:
            log.warning("node %d: the wall clock moved %+.1f s against the monotonic clock during this term; "
                        "times written into the log keep following the monotonic clock, so no dedup window "
                        "is cut short", self.id, (offset - self._clock_offset_seen_us) / 1e6)
            self._clock_offset_seen_us = offset

    # ----------------------------------------------------------------- the Ready loop
    async def _ready_loop(self) -> None:
        raft, executor, requests, metrics, wake = self.raft, self.executor, self.requests, self.metrics, self._wake_event
        while True:
            await wake.wait()
            wake.clear()
            try:
                requests.flush_proposals()
                while raft.has_ready():
                    metrics.ready_cycles.inc()
                    executor.run_one()
                    requests.flush_proposals()
            except ApplyStoppedError as exc:
                self._stop_fatally(str(exc))
                return
            except StorageError as exc:
                # The log's disk refused a write or a sync (full, failing): the message names
                # the file and the error, and a traceback would only hide it.
                self._stop_fatally(f"log storage failed: {exc}")
                return
            except Exception as exc:
                log.critical("ready loop failed", exc_info=True)
                self._stop_fatally(f"ready loop failed: {exc!r}")
                return

    def _stop_fatally(self, why: str) -> None:
        self.health.fatal = why
        log.critical("stopping: %s", why)
        self.request_stop()

    def _after_advance(self) -> None:
        raft = self.raft
        role, leader = raft.role, raft.leader
        if role != self._role or leader != self._leader:
            self._on_role_change(self._role, role, leader)
            self._role, self._leader = role, leader
        self.metrics.term.set(raft.term)
        self._follow_membership()
        if self.health.rejoining and not raft.withholding_votes:
            note_caught_up(self.config, raft.log.committed)
            self.health.rejoining = False
        self.snapshots.maybe_take()

    def _on_role_change(self, old: Role, new: Role, leader: int) -> None:
        log.info("node %d: %s -> %s (term %d, leader %d)", self.id, old.name, new.name, self.raft.term, leader)
        self.metrics.is_leader.set(1 if new == Role.LEADER else 0)
        if new == Role.LEADER:
            self.metrics.elections.inc()
            self.leader_since = self.clock.wall()
            ahead_us = self.proposal_clock.start_term()
            self._clock_offset_seen_us = self.proposal_clock.wall_offset_us()
            if ahead_us > CLOCK_GAP_NOTED_US:
                log.warning("node %d: this node's clock is %.1f s ahead of the previous leader's; ids that "
                            "leader saw may leave the dedup window up to that much early: keep the nodes' "
                            "clocks in step", self.id, ahead_us / 1e6)
            self._maybe_bootstrap_config()
            self.routing.start_leading()
        elif old == Role.LEADER:
            self.leader_since = None
            self.proposal_clock.end_term()
            self.routing.stop_leading()
            # Entries this node proposed may still commit under the next leader; the clients
            # retry with the same event ids and the dedup table answers with the original
            # result, so failing them here loses nothing and applies nothing twice.
            self._fail_all(Status.NOT_LEADER, "leadership changed; retry at the new leader")

    def _maybe_bootstrap_config(self) -> None:
        """A brand-new cluster takes its first replicated config from its leader's flags."""
        if self._bootstrap_config_proposed or self.seg_log.last_index > 1 or self.state.applied_index > 1:
            return
        self._bootstrap_config_proposed = True
        initial = {
            "queue_count": self.config.queue_count,
            "dedup_window_ms": int(self.config.dedup_window * 1000),
            "batch_size": self.config.batch_size,
            "snapshot_threshold": self.config.snapshot_threshold,
        }
        self.requests.propose_command(encode_config_update(initial))

    def _fail_all(self, status: Status, message: str) -> None:
        self.answers.fail_all(status, message)
        self.reads.fail_all(status, message)
        self.members.fail_all(status, f"{message} (a membership change proposed here may still take effect: "
                                      "`esc member list` shows)")

    def _follow_membership(self) -> None:
        """Link with the members in force (called after every Ready, and at once after a change
        is proposed, so the core's next messages to a new member have a link)."""
        if self.directory.refresh(self.clock.monotonic()):
            self.routing.set_peers(self.directory.links)

    # ----------------------------------------------------------------- the client server's service
    def on_request(self, session: ClientSession, request: Request) -> None:
        self.requests.on_request(session, request)

    def accepting_appends(self, session: ClientSession) -> bool:
        return self.requests.accepting_appends(session)

    def on_appends_queued(self) -> None:
        self._wake()

    def on_refused_appends(self, refusals: list[Refusal]) -> None:
        self.requests.on_refused_appends(refusals)

    # ----------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        return self.status_reporter.status()

    async def answer_status(self, digest: bool = False) -> dict[str, Any]:
        return await self.status_reporter.answer_status(digest)
