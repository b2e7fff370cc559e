"""The replication process pool (replication = "pool"): one worker process per follower.

The Raft core stays in the node process and decides what each follower gets (Progress,
CONVENTIONS 4). A PoolPipeline writes each message the core produced, encoded, straight into a
shared-memory SPSC ring (csrc/spsc_ring.h); the follower's worker process
(eventstream/replication/worker.py) frames the records in native code, CRC included, and writes
them to the follower's socket. Socket writes and checksums for N followers thus run on N
processes instead of on the node's one thread.

Choices, and why:

- Entry bytes travel in the ring, not as index ranges the worker reads from the segment files.
  The node sends AppendEntries before its own WAL write (thesis 10.2.1), so the entries a message
  carries may not be in any segment file yet; the ring also holds InstallSnapshot chunks and
  every other message with no second code path. The cost is one copy of the bytes into the ring
  (the in-process path also copies them once, into its joined message).
- The worker owns a second, one-way link to its follower (hello role ROLE_REPLICATION); the
  pair's own peer link (one per pair, eventstream/transport/peers.py) stays where it is and
  carries everything else: votes, and the follower's responses, which reach the core directly.
  So acks do not travel through the status ring; it carries what only the worker knows: link up
  (CONNECTED: the core re-probes the follower), records dropped while the link was down, totals.
- Workers exist only while this node leads (start() on becoming leader, stop() on stepping
  down). A message the old term's worker still holds is harmless: a follower that has seen the
  new term rejects it (Figure 2, AppendEntries receiver rule 1).
- A dead worker is restarted with fresh rings; what its ring held is lost, and the CONNECTED of
  its successor makes the core re-probe the follower, which then gets every missing entry from
  the leader's log (the log on disk is the source of truth; §5.3 consistency check).
- A message larger than half the ring (only a single entry bigger than that can be) goes over
  the pair's peer link instead, so any message the in-process path can send still goes.
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
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from eventstream._spsc_ring import HEADER_BYTES, SpscRing
from eventstream.raft.messages import Message
from eventstream.replication.pipeline import InProcessPipeline, PipelineStats
from eventstream.replication.worker import (
    DROPPED_LAYOUT,
    STATS_LAYOUT,
    STATUS_CONNECTED,
    STATUS_STATS,
    STATUS_UNREACHABLE,
)
from eventstream.transport.peer_codec import encode_message_parts
from eventstream.transport.peers import PeerNetwork

log = logging.getLogger(__name__)

# Record space per follower. Half of it bounds one message; the core's window (max_inflight
# appends of at most 4 MiB) rarely needs more than a few MiB here because the worker drains
# continuously. Pages of shared memory are only committed when first written.
RING_BYTES_DEFAULT = 16 * 1024 * 1024
STATUS_RING_BYTES = 64 * 1024
SUPERVISE_INTERVAL_S = 0.05
# A worker that dies again soon after a restart is restarted after a growing delay.
RESTART_BACKOFF_INITIAL_S = 0.05
RESTART_BACKOFF_MAX_S = 2.0
RESTART_STABLE_S = 10.0
# A worker that holds unsent records and has taken none for this long is stuck (frozen, or
# wedged): it is killed and restarted like a dead one. Longer than the worker's own send timeout
# plus a dial, so a slow or paused follower is handled by the worker (drop the link, redial).
STALL_S = 10.0
RECORD_MESSAGE = 1


@dataclass(slots=True)
class WorkerUsage:
    pid: int
    cpu_seconds: float
    rss_bytes: int
    restarts: int
    # As the worker last reported (STATS records, every 0.2 s): messages written to the socket.
    messages_sent: int


def _shared_file(size: int) -> int:
    """An anonymous shared-memory file: nothing to unlink, gone when the last process closes it."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("esc-replication-ring")
    else:  # pragma: no cover - non-Linux
        with tempfile.NamedTemporaryFile(delete=False) as fh:
            fd = os.dup(fh.fileno())
            os.unlink(fh.name)
    os.ftruncate(fd, size)
    return fd


class _Worker:
    """One worker process and the node's ends of its rings and doorbell."""

    def __init__(self, node_id: int, peer_id: int, address: tuple[str, int], local_host: str | None,
                 ring_bytes: int) -> None:
        self.peer_id = peer_id
        data_size = HEADER_BYTES + ring_bytes
        status_size = HEADER_BYTES + STATUS_RING_BYTES
        data_fd = _shared_file(data_size)
        status_fd = _shared_file(status_size)
        bell_r, bell_w = os.pipe()
        try:
            self._data_map = mmap.mmap(data_fd, data_size)
            self._status_map = mmap.mmap(status_fd, status_size)
            self.data = SpscRing.create(self._data_map)
            self.status = SpscRing.create(self._status_map)
            os.set_blocking(bell_r, False)
            os.set_blocking(bell_w, False)
            args = [
                sys.executable, "-m", "eventstream.replication.worker",
                "--node-id", str(node_id), "--peer-id", str(peer_id),
                "--host", address[0], "--port", str(address[1]),
                "--data-fd", str(data_fd), "--data-bytes", str(data_size),
                "--status-fd", str(status_fd), "--status-bytes", str(status_size),
                "--doorbell-fd", str(bell_r),
            ]
            if local_host:
                args += ["--local-host", local_host]
            self.proc = subprocess.Popen(args, pass_fds=(data_fd, status_fd, bell_r))
        except BaseException:
            os.close(bell_w)
            raise
        finally:
            os.close(data_fd)
            os.close(status_fd)
            os.close(bell_r)
        self._doorbell = bell_w
        self.started_at = time.monotonic()
        self.last_consumed = 0
        self.last_progress = self.started_at
        self.worker_stats = PipelineStats()
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
        self.data.close()
        self.status.close()
        self._data_map.close()
        self._status_map.close()
        with contextlib.suppress(OSError):
            os.close(self._doorbell)


class PoolPipeline:
    """FollowerPipeline over a worker's ring. The worker behind it may be replaced (restart);
    the node keeps this object."""

    __slots__ = ("peer_id", "stats", "worker", "_fallback", "_unflushed")

    def __init__(self, peer_id: int, worker: _Worker, fallback: InProcessPipeline) -> None:
        self.peer_id = peer_id
        self.stats = PipelineStats()
        self.worker = worker
        self._fallback = fallback
        self._unflushed = False

    def submit(self, message: Message) -> None:
        parts = encode_message_parts(message)
        ring = self.worker.data
        size = sum(len(p) for p in parts)
        if size > ring.max_payload:
            self._fallback.submit(message)
            return
        if not ring.write_parts(RECORD_MESSAGE, parts):
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
        if self.worker.data.wake_needed():
            self.worker.ring_doorbell()

    def close(self) -> None:
        self._fallback.close()
        self._unflushed = False


class ReplicationPool:
    """Starts, supervises and stops the workers of one leader.

    on_connected(peer_id) runs on the node's loop each time a worker (re)establishes its link,
    so the core re-probes that follower; on_dropped(peer_id, count) reports records a worker
    discarded while its link was down.
    """

    def __init__(self, node_id: int, peers: dict[int, tuple[str, int]], network: PeerNetwork,
                 on_connected: Callable[[int], None], on_dropped: Callable[[int, int], None] | None = None,
                 local_host: str | None = None, ring_bytes: int = RING_BYTES_DEFAULT) -> None:
        self.node_id = node_id
        self.peers = dict(peers)
        self._network = network
        self._on_connected = on_connected
        self._on_dropped = on_dropped
        self._local_host = local_host
        self._ring_bytes = ring_bytes
        self._pipelines: dict[int, PoolPipeline] = {}
        self._retired: list[_Worker] = []
        self._restart_at: dict[int, float] = {}
        self._restart_delay: dict[int, float] = {}
        self.restarts: dict[int, int] = {pid: 0 for pid in peers}
        self._task: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return bool(self._pipelines)

    def start(self) -> dict[int, PoolPipeline]:
        """Spawn one worker per follower (on becoming leader); returns the pipelines to use.
        OSError when a worker cannot be started; then none is left running."""
        if self._pipelines:
            return dict(self._pipelines)
        try:
            for pid, address in self.peers.items():
                worker = self._spawn(pid, address)
                self._pipelines[pid] = PoolPipeline(pid, worker, InProcessPipeline(pid, self._network))
        except BaseException:
            self.stop()
            raise
        self._task = asyncio.get_running_loop().create_task(self._supervise_loop(), name="replication-pool")
        log.info("replication pool: started workers %s",
                 {pid: p.worker.proc.pid for pid, p in self._pipelines.items()})
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
        """Bytes the follower's worker has not taken from its ring yet."""
        return self._pipelines[peer_id].worker.data.used

    @property
    def ring_bytes(self) -> int:
        return self._ring_bytes

    def worker_pids(self) -> dict[int, int]:
        return {pid: p.worker.proc.pid for pid, p in self._pipelines.items()}

    def usage(self) -> dict[int, WorkerUsage]:
        """CPU seconds and RSS of each live worker, for /metrics and the benchmarks."""
        out: dict[int, WorkerUsage] = {}
        for pid, pipeline in self._pipelines.items():
            sample = pipeline.worker.usage()
            if sample is not None:
                out[pid] = WorkerUsage(pipeline.worker.proc.pid, sample[0], sample[1], self.restarts[pid],
                                       pipeline.worker.worker_stats.messages)
        return out

    def worker_stats(self) -> dict[int, PipelineStats]:
        """What each worker reports it sent (its latest STATS record)."""
        return {pid: p.worker.worker_stats for pid, p in self._pipelines.items()}

    # -- supervision ----------------------------------------------------------------------------
    def _spawn(self, peer_id: int, address: tuple[str, int]) -> _Worker:
        return _Worker(self.node_id, peer_id, address, self._local_host, self._ring_bytes)

    async def _supervise_loop(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_INTERVAL_S)
            try:
                self.supervise()
            except Exception:
                log.exception("replication pool supervision failed; retrying")

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
            except OSError:
                # Out of processes or descriptors: keep the dead worker's ring (writes to it are
                # dropped once it fills, and Raft resends) and try again later.
                log.exception("replication worker for node %d could not be restarted", pid)
                self._restart_at[pid] = now + RESTART_BACKOFF_MAX_S
                continue
            del self._restart_at[pid]
            worker.close()
            pipeline.worker = replacement
            self.restarts[pid] += 1
            log.info("replication worker for node %d restarted as pid %d", pid, pipeline.worker.proc.pid)
        self._reap()

    def _check_progress(self, peer_id: int, worker: _Worker, now: float) -> None:
        consumed = worker.data.consumed
        if worker.data.used == 0 or consumed != worker.last_consumed:
            worker.last_consumed = consumed
            worker.last_progress = now
        elif now - worker.last_progress > STALL_S:
            log.warning("replication worker for node %d (pid %d) took nothing from its ring for %.1f s; killing it",
                        peer_id, worker.proc.pid, now - worker.last_progress)
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()  # the next supervision round restarts it

    def _read_status(self, peer_id: int, worker: _Worker) -> None:
        while True:
            record = worker.status.read()
            if record is None:
                return
            kind, payload = record
            if kind == STATUS_CONNECTED:
                self._on_connected(peer_id)
            elif kind == STATUS_UNREACHABLE and len(payload) == DROPPED_LAYOUT.size:
                if self._on_dropped is not None:
                    self._on_dropped(peer_id, DROPPED_LAYOUT.unpack(payload)[0])
            elif kind == STATUS_STATS and len(payload) == STATS_LAYOUT.size:
                messages, nbytes, sends, dropped = STATS_LAYOUT.unpack(payload)
                worker.worker_stats = PipelineStats(messages, nbytes, sends, dropped)
            else:
                log.warning("replication worker for node %d sent an unknown status record %d", peer_id, kind)

    def _reap(self) -> None:
        still: list[_Worker] = []
        for worker in self._retired:
            if worker.alive:
                still.append(worker)
            else:
                worker.close()
        self._retired = still
