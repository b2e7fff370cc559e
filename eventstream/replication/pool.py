"""The replication process pool (replication = "pool"): one worker process per follower.

The Raft core stays in the node process and decides what each follower gets (Progress,
docs/conventions.md §4). The node and the workers share three kinds of ring (csrc/entry_ring.h,
csrc/spsc_ring.h):

- one entry ring per leadership, which the node fills with each new log entry once, whatever
  the number of followers; every worker reads it at its own positions;
- per worker, a control ring of orders: "send entries lo..hi from entry-ring position pos as
  AppendEntries at term T after (prev index, prev term), commit C", or a message the core
  encoded in full (heartbeats, snapshot chunks, and entries not in the entry ring);
- per worker, a status ring of reports: the follower's answers (acked up to i / rejected with a
  hint / snapshot offset / heartbeat), link up or down, orders it could not carry out.

The follower answers a worker on the worker's own link (transport/peers.py); the worker relays
each answer as a fixed-size record, and the node steps the core with the very Message it would
have read from the peer link in-process. Encoding, CRC-32C and socket work for N followers thus
run on N processes, and the node copies each entry's bytes once instead of once per follower.

Choices, and why:

- Entry bytes come from a ring the node fills, not from the segment files: the node sends
  AppendEntries before its own WAL write (thesis 10.2.1), so the entries may not be in any
  segment file yet.
- The entry ring never waits for a reader: a stopped or slow worker must not stall the leader.
  The node overwrites the oldest entries; a worker that finds an order's entries overwritten
  (a sequence check on the positions, csrc/entry_ring.h) sends nothing and reports STALE, and
  the node re-probes that follower (§5.3), whose missing entries then come from the log as
  full messages. The node itself sends a full message whenever an order's first entry is more
  than half a ring old, so this is the exception.
- Workers exist only while this node leads (start() on becoming leader, stop() on stepping
  down). A message the old term's worker still holds is harmless: a follower that has seen the
  new term rejects it (Figure 2, AppendEntries receiver rule 1).
- A dead worker is restarted with fresh control and status rings (the entry ring stays); the
  CONNECTED of its successor makes the core re-probe the follower, which then gets every missing
  entry from the leader's log (the log on disk is the source of truth).
- A full message larger than half the control ring (only a single entry bigger than that can
  be) goes over the pair's peer link instead, so any message the in-process path can send still
  goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from eventstream.raft.messages import Message, MessageType
from eventstream.replication._spsc_ring import HEADER_BYTES, SpscRing
from eventstream.replication.pipeline import InProcessPipeline, PipelineStats
from eventstream.replication.shared_entries import (
    ENTRY_RING_BYTES_DEFAULT,
    SharedEntries,
    shared_file,
)
from eventstream.replication.worker import (
    APPEND_ORDER,
    COUNT_LAYOUT,
    ORDER_APPEND,
    ORDER_MESSAGE,
    RESPONSE_LAYOUT,
    STATS_LAYOUT,
    STATUS_CONNECTED,
    STATUS_RESPONSE,
    STATUS_STALE,
    STATUS_STATS,
    STATUS_UNREACHABLE,
    WakeCounters,
    response_message,
)
from eventstream.transport.peer_codec import encode_message_parts
from eventstream.transport.peers import PeerNetwork

log = logging.getLogger(__name__)

# Control-ring space per follower. Orders take 88 bytes with their record header; the space is
# for full messages (snapshot chunks, entries no longer in the entry ring), half of it bounds
# one. Pages of shared memory are only committed when first written.
RING_BYTES_DEFAULT = 16 * 1024 * 1024
STATUS_RING_BYTES = 1024 * 1024
# The most bytes of entries one AppendEntries carries when a worker merges orders; the node
# passes its core's max_append_bytes.
APPEND_BYTES_MAX_DEFAULT = 4 * 1024 * 1024
SUPERVISE_INTERVAL_S = 0.05
# A worker that dies again soon after a restart is restarted after a growing delay.
RESTART_BACKOFF_INITIAL_S = 0.05
RESTART_BACKOFF_MAX_S = 2.0
RESTART_STABLE_S = 10.0
# A worker that holds unsent records and has taken none for this long is stuck (frozen, or
# wedged): it is killed and restarted like a dead one. Longer than the worker's own send timeout
# plus a dial, so a slow or paused follower is handled by the worker (drop the link, redial).
STALL_S = 10.0


@dataclass(slots=True)
class WorkerUsage:
    pid: int
    cpu_seconds: float
    rss_bytes: int
    restarts: int
    # As the worker last reported (STATS records, every 0.2 s): messages written to the socket.
    messages_sent: int
    # AppendEntries the node ordered by entry-ring position (the rest of what it submitted went
    # as full messages), follower answers the worker relayed, orders it found overwritten.
    orders: int
    answers_relayed: int
    stale_orders: int
    # As last reported: times the worker slept on an empty control ring, was woken by its
    # doorbell, and slept to its timeout while orders waited (a missed wake-up: must stay 0);
    # APPEND orders timed from the node writing them to the worker taking them, and the upper
    # bounds (ms) of the histogram buckets holding their median and 99th percentile.
    sleeps: int
    doorbell_wakes: int
    missed_wakeups: int
    orders_timed: int
    order_wait_ms_p50: float
    order_wait_ms_p99: float


class _Worker:
    """One worker process and the node's ends of its rings and doorbell."""

    def __init__(self, node_id: int, peer_id: int, address: tuple[str, int], local_host: str | None,
                 ring_bytes: int, entries: SharedEntries, node_bell_fd: int, append_bytes_max: int,
                 tls_dir: str | None = None) -> None:
        self.peer_id = peer_id
        control_size = HEADER_BYTES + ring_bytes
        status_size = HEADER_BYTES + STATUS_RING_BYTES
        control_fd = shared_file(control_size)
        status_fd = shared_file(status_size)
        bell_r, bell_w = os.pipe()
        try:
            self._control_map = mmap.mmap(control_fd, control_size)
            self._status_map = mmap.mmap(status_fd, status_size)
            self.control = SpscRing.create(self._control_map)
            self.status = SpscRing.create(self._status_map)
            # The node sleeps on its doorbell from the start: the first report wakes it.
            self.status.prepare_wait()
            os.set_blocking(bell_r, False)
            os.set_blocking(bell_w, False)
            args = [
                sys.executable, "-m", "eventstream.replication.worker",
                "--node-id", str(node_id), "--peer-id", str(peer_id),
                "--host", address[0], "--port", str(address[1]),
                "--entries-fd", str(entries.fd), "--entries-bytes", str(entries.size),
                "--control-fd", str(control_fd), "--control-bytes", str(control_size),
                "--status-fd", str(status_fd), "--status-bytes", str(status_size),
                "--doorbell-fd", str(bell_r), "--node-bell-fd", str(node_bell_fd),
                "--append-bytes-max", str(append_bytes_max),
                "--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
                "--parent-pid", str(os.getpid()),
            ]
            if local_host:
                args += ["--local-host", local_host]
            if tls_dir:
                args += ["--tls-dir", tls_dir]
            self.proc = subprocess.Popen(args, pass_fds=(entries.fd, control_fd, status_fd, bell_r, node_bell_fd))
        except BaseException:
            os.close(bell_w)
            raise
        finally:
            os.close(control_fd)
            os.close(status_fd)
            os.close(bell_r)
        self._doorbell = bell_w
        self.started_at = time.monotonic()
        self.last_consumed = 0
        self.last_progress = self.started_at
        self.worker_stats = PipelineStats()
        self.wake = WakeCounters()
        self.doorbell_failures = 0
        self._usage: psutil.Process | None = None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def ring_doorbell(self) -> None:
        try:
            os.write(self._doorbell, b"\x01")
        except BlockingIOError:
            pass  # the pipe already holds unread rings: the worker will wake
        except OSError:
            self.doorbell_failures += 1  # worker gone; the supervisor restarts it

    def usage(self) -> tuple[float, int] | None:
        try:
            if self._usage is None:
                self._usage = psutil.Process(self.proc.pid)
            times = self._usage.cpu_times()
            return times.user + times.system, self._usage.memory_info().rss
        except (psutil.Error, OSError):
            return None

    def terminate(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Release the node's ends; the process must be gone or going."""
        self.control.close()
        self.status.close()
        self._control_map.close()
        self._status_map.close()
        with contextlib.suppress(OSError):
            os.close(self._doorbell)


class PoolPipeline:
    """FollowerPipeline over a worker's control ring. The worker behind it may be replaced
    (restart); the node keeps this object."""

    __slots__ = ("peer_id", "stats", "worker", "orders", "_entries", "_fallback", "_unflushed")

    def __init__(self, peer_id: int, worker: _Worker, entries: SharedEntries, fallback: InProcessPipeline) -> None:
        self.peer_id = peer_id
        self.stats = PipelineStats()
        self.worker = worker
        # APPEND messages sent as orders over the entry ring (the rest of stats.messages went in full).
        self.orders = 0
        self._entries = entries
        self._fallback = fallback
        self._unflushed = False

    def submit(self, message: Message) -> None:
        if message.type == MessageType.APPEND and message.entries:
            placed = self._entries.place(message.entries)
            if placed is not None:
                order = APPEND_ORDER.pack(message.term, message.index, message.log_term, message.commit,
                                          message.entries[0].index, message.entries[-1].index, placed.pos,
                                          placed.end, placed.data_bytes, time.monotonic_ns())
                self._write(ORDER_APPEND, (order,), placed.data_bytes, message)
                self.orders += 1
                return
        parts = encode_message_parts(message)
        size = sum(len(p) for p in parts)
        if size > self.worker.control.max_payload:
            self._fallback.submit(message)
            return
        self._write(ORDER_MESSAGE, parts, size, message)

    def _write(self, kind: int, parts: tuple[bytes, ...] | list[bytes | bytearray | memoryview], size: int,
               message: Message) -> None:
        if not self.worker.control.write_parts(kind, parts):
            # The worker is behind by a whole ring: Raft resends what the follower misses.
            self.stats.dropped_window += 1
            return
        self.stats.messages += 1
        self.stats.bytes += size
        self._unflushed = True

    def flush(self) -> None:
        self._fallback.flush()
        if not self._unflushed:
            return
        self._unflushed = False
        self.stats.writes += 1
        if self.worker.control.wake_needed():
            self.worker.ring_doorbell()

    def close(self) -> None:
        self._fallback.close()
        self._unflushed = False


class ReplicationPool:
    """Starts, supervises and stops the workers of one leader.

    Callbacks, all on the node's loop:
      on_reprobe(peer_id): a worker (re)established its link, or could not send entries it was
        ordered to (overwritten in the entry ring): the core must re-probe that follower.
      on_responses(peer_id, messages): the follower's answers the worker relayed, in order, as
        the Messages the core would have read from the peer link.
      on_dropped(peer_id, count): orders a worker discarded while its link was down.
    """

    def __init__(self, node_id: int, peers: dict[int, tuple[str, int]], network: PeerNetwork,
                 on_reprobe: Callable[[int], None],
                 on_responses: Callable[[int, list[Message]], None] | None = None,
                 on_dropped: Callable[[int, int], None] | None = None,
                 local_host: str | None = None, ring_bytes: int = RING_BYTES_DEFAULT,
                 entry_ring_bytes: int = ENTRY_RING_BYTES_DEFAULT,
                 append_bytes_max: int = APPEND_BYTES_MAX_DEFAULT, tls_dir: str | None = None) -> None:
        self.node_id = node_id
        # With TLS the workers encrypt their links themselves (csrc/tls_link.h).
        self._tls_dir = tls_dir
        self.peers = dict(peers)
        self._network = network
        self._on_reprobe = on_reprobe
        self._on_responses = on_responses
        self._on_dropped = on_dropped
        self._local_host = local_host
        self._ring_bytes = ring_bytes
        self._entry_ring_bytes = entry_ring_bytes
        self._append_bytes_max = append_bytes_max
        self._pipelines: dict[int, PoolPipeline] = {}
        self._entries: SharedEntries | None = None
        self._bell: tuple[int, int] | None = None
        self._retired: list[_Worker] = []
        self._restart_at: dict[int, float] = {}
        self._restart_delay: dict[int, float] = {}
        self.restarts: dict[int, int] = {pid: 0 for pid in peers}
        # Answers relayed with no on_responses to take them (tests that only watch delivery).
        self.responses_unclaimed = 0
        self.answers_relayed: dict[int, int] = {pid: 0 for pid in peers}
        self.stale_orders: dict[int, int] = {pid: 0 for pid in peers}
        self._task: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return bool(self._pipelines)

    def start(self) -> dict[int, PoolPipeline]:
        """Spawn one worker per follower (on becoming leader); returns the pipelines to use.
        OSError when a worker cannot be started; then none is left running."""
        if self._entries is not None:
            return dict(self._pipelines)
        loop = asyncio.get_running_loop()
        try:
            self._entries = SharedEntries(self._entry_ring_bytes)
            bell_r, bell_w = os.pipe()
            self._bell = (bell_r, bell_w)
            os.set_blocking(bell_r, False)
            os.set_blocking(bell_w, False)
            loop.add_reader(bell_r, self._on_bell)
            for pid, address in self.peers.items():
                worker = self._spawn(pid, address)
                self._pipelines[pid] = PoolPipeline(pid, worker, self._entries,
                                                    InProcessPipeline(pid, self._network))
        except BaseException:
            self.stop()
            raise
        self._task = loop.create_task(self._supervise_loop(), name="replication-pool")
        log.info("replication pool: started workers %s",
                 {pid: p.worker.proc.pid for pid, p in self._pipelines.items()})
        return dict(self._pipelines)

    def set_peers(self, peers: dict[int, tuple[str, int]]) -> dict[int, PoolPipeline]:
        """Follow a membership change: while started, a worker for each new follower, and none
        for a removed one (or one whose address changed: its successor dials the new address).
        Returns the pipelines to use. OSError when a new worker cannot be started."""
        for pid in [p for p, address in self.peers.items() if peers.get(p) != address]:
            del self.peers[pid]
            self._restart_at.pop(pid, None)
            self._restart_delay.pop(pid, None)
            pipeline = self._pipelines.pop(pid, None)
            if pipeline is not None:
                pipeline.close()
                pipeline.worker.terminate()
                self._retired.append(pipeline.worker)
        for pid, address in peers.items():
            if pid in self.peers:
                continue
            self.peers[pid] = address
            self.restarts.setdefault(pid, 0)
            self.answers_relayed.setdefault(pid, 0)
            self.stale_orders.setdefault(pid, 0)
            if self._entries is not None:
                worker = self._spawn(pid, address)
                self._pipelines[pid] = PoolPipeline(pid, worker, self._entries, InProcessPipeline(pid, self._network))
                log.info("replication pool: started a worker for new member %d (pid %d)", pid, worker.proc.pid)
        self._reap()
        return dict(self._pipelines)

    def stop(self) -> None:
        """Stop every worker (on stepping down); what their rings still hold is dropped."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for pipeline in self._pipelines.values():
            pipeline.close()
            pipeline.worker.terminate()
            self._retired.append(pipeline.worker)
        self._pipelines.clear()
        if self._bell is not None:
            asyncio.get_running_loop().remove_reader(self._bell[0])
            for fd in self._bell:
                os.close(fd)
            self._bell = None
        if self._entries is not None:
            self._entries.close()
            self._entries = None
        self._reap()
        if self._retired and self._reaper is None:
            # Collect the exit status soon, so no zombie waits for this node's next election.
            self._reaper = asyncio.get_running_loop().create_task(self._reap_retired(), name="replication-pool-reaper")

    async def close(self, timeout_s: float = 2.0) -> None:
        """stop(), then wait for the processes (SIGKILL after timeout_s)."""
        self.stop()
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        await self._reap_retired(timeout_s)

    async def _reap_retired(self, timeout_s: float = 5.0) -> None:
        """Wait for stopped workers to exit; SIGKILL what is left after timeout_s."""
        try:
            deadline = time.monotonic() + timeout_s
            while self._retired and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                self._reap()
            for worker in self._retired:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                worker.proc.wait()
                worker.close()
            self._retired.clear()
        finally:
            if self._reaper is asyncio.current_task():
                self._reaper = None

    def backlog_bytes(self, peer_id: int) -> int:
        """Bytes of orders the follower's worker has not taken from its control ring yet."""
        return self._pipelines[peer_id].worker.control.used

    @property
    def ring_bytes(self) -> int:
        return self._ring_bytes

    def entry_ring_stats(self) -> tuple[int, int]:
        """(entries, bytes) written into this leadership's entry ring: once each, for all workers."""
        if self._entries is None:
            return 0, 0
        return self._entries.entries_written, self._entries.bytes_written

    def worker_pids(self) -> dict[int, int]:
        return {pid: p.worker.proc.pid for pid, p in self._pipelines.items()}

    def usage(self) -> dict[int, WorkerUsage]:
        """CPU seconds and RSS of each live worker, for /metrics and the benchmarks."""
        out: dict[int, WorkerUsage] = {}
        for pid, pipeline in self._pipelines.items():
            sample = pipeline.worker.usage()
            if sample is not None:
                wake = pipeline.worker.wake
                out[pid] = WorkerUsage(pipeline.worker.proc.pid, sample[0], sample[1], self.restarts[pid],
                                       pipeline.worker.worker_stats.messages, pipeline.orders,
                                       self.answers_relayed[pid], self.stale_orders[pid], wake.sleeps,
                                       wake.doorbell_wakes, wake.missed_wakeups, wake.orders_timed,
                                       wake.order_wait_quantile_s(0.5) * 1000, wake.order_wait_quantile_s(0.99) * 1000)
        return out

    def worker_stats(self) -> dict[int, PipelineStats]:
        """What each worker reports it sent (its latest STATS record)."""
        return {pid: p.worker.worker_stats for pid, p in self._pipelines.items()}

    def wake_counters(self) -> dict[int, WakeCounters]:
        """How each worker slept and woke, and how long its orders waited (latest STATS record)."""
        return {pid: p.worker.wake for pid, p in self._pipelines.items()}

    # -- supervision ----------------------------------------------------------------------------
    def _spawn(self, peer_id: int, address: tuple[str, int]) -> _Worker:
        assert self._entries is not None and self._bell is not None
        return _Worker(self.node_id, peer_id, address, self._local_host, self._ring_bytes, self._entries,
                       self._bell[1], self._append_bytes_max, self._tls_dir)

    async def _supervise_loop(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_INTERVAL_S)
            try:
                self.supervise()
            except Exception:
                log.exception("replication pool supervision failed; retrying")

    def _on_bell(self) -> None:
        """A worker wrote reports and found the node asleep on them: read every status ring,
        then announce sleep again (an eventcount, csrc/spsc_ring.h) and read once more if a
        report slipped in meanwhile."""
        if self._bell is not None:
            with contextlib.suppress(BlockingIOError):
                os.read(self._bell[0], 4096)
        again = True
        while again:
            again = False
            for pid, pipeline in list(self._pipelines.items()):
                self._read_status(pid, pipeline.worker)
                if not pipeline.worker.status.prepare_wait():
                    again = True

    def supervise(self) -> None:
        """Read every worker's reports, restart dead workers, reap stopped ones."""
        now = time.monotonic()
        for pid, pipeline in self._pipelines.items():
            worker = pipeline.worker
            self._read_status(pid, worker)
            if worker.alive:
                if now - worker.started_at > RESTART_STABLE_S:
                    self._restart_delay.pop(pid, None)
                self._check_progress(pid, worker, now)
                continue
            due = self._restart_at.get(pid)
            if due is None:
                delay = self._restart_delay.get(pid, RESTART_BACKOFF_INITIAL_S)
                self._restart_delay[pid] = min(delay * 2, RESTART_BACKOFF_MAX_S)
                self._restart_at[pid] = now + delay
                log.warning("replication worker for node %d (pid %d) exited with %s; restarting in %.2f s",
                            pid, worker.proc.pid, worker.proc.returncode, delay)
                continue
            if now < due:
                continue
            try:
                replacement = self._spawn(pid, self.peers[pid])
            except OSError as exc:
                # Out of processes or descriptors: keep the dead worker's ring (writes to it are
                # dropped once it fills, and Raft resends) and try again later.
                log.warning("replication worker for node %d could not be restarted (%s); retrying in %.0f s",
                            pid, exc, RESTART_BACKOFF_MAX_S)
                self._restart_at[pid] = now + RESTART_BACKOFF_MAX_S
                continue
            del self._restart_at[pid]
            worker.close()
            pipeline.worker = replacement
            self.restarts[pid] += 1
            log.info("replication worker for node %d restarted as pid %d", pid, pipeline.worker.proc.pid)
        self._reap()

    def _check_progress(self, peer_id: int, worker: _Worker, now: float) -> None:
        consumed = worker.control.consumed
        if worker.control.used == 0 or consumed != worker.last_consumed:
            worker.last_consumed = consumed
            worker.last_progress = now
        elif now - worker.last_progress > STALL_S:
            log.warning("replication worker for node %d (pid %d) took nothing from its ring for %.1f s; killing it",
                        peer_id, worker.proc.pid, now - worker.last_progress)
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()  # the next supervision round restarts it

    def _read_status(self, peer_id: int, worker: _Worker) -> None:
        responses: list[Message] = []
        while True:
            record = worker.status.read()
            if record is None:
                break
            kind, payload = record
            if kind == STATUS_RESPONSE and len(payload) == RESPONSE_LAYOUT.size:
                try:
                    responses.append(response_message(payload, self.node_id, peer_id))
                except ValueError:
                    log.warning("replication worker for node %d relayed an answer of unknown type", peer_id)
                continue
            # Answers before a link or stale report are delivered first: the core sees them in order.
            self._deliver(peer_id, responses)
            responses = []
            if kind == STATUS_CONNECTED:
                self._on_reprobe(peer_id)
            elif kind == STATUS_STALE and len(payload) == COUNT_LAYOUT.size:
                self.stale_orders[peer_id] += 1
                log.info("replication worker for node %d found entries from %d overwritten; re-probing",
                         peer_id, COUNT_LAYOUT.unpack(payload)[0])
                self._on_reprobe(peer_id)
            elif kind == STATUS_UNREACHABLE and len(payload) == COUNT_LAYOUT.size:
                if self._on_dropped is not None:
                    self._on_dropped(peer_id, COUNT_LAYOUT.unpack(payload)[0])
            elif kind == STATUS_STATS and len(payload) == STATS_LAYOUT.size:
                messages, nbytes, sends, dropped, *wake = STATS_LAYOUT.unpack(payload)
                worker.worker_stats = PipelineStats(messages, nbytes, sends, dropped)
                worker.wake = WakeCounters.from_fields(tuple(wake))
            else:
                log.warning("replication worker for node %d sent an unknown status record %d", peer_id, kind)
        self._deliver(peer_id, responses)

    def _deliver(self, peer_id: int, responses: list[Message]) -> None:
        if not responses:
            return
        self.answers_relayed[peer_id] += len(responses)
        if self._on_responses is None:
            self.responses_unclaimed += len(responses)
            return
        self._on_responses(peer_id, responses)

    def _reap(self) -> None:
        still: list[_Worker] = []
        for worker in self._retired:
            if worker.alive:
                still.append(worker)
            else:
                worker.close()
        self._retired = still
