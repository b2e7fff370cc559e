"""A randomized fault schedule against a real cluster under load, and the checks that must hold
whatever it did: the test-side counterpart of the simulation tests, with real processes, real
fsyncs and real sockets.

While writer threads append with their own ids (retrying failed calls with the same ids) and a
reader checks linearizable reads against what was acknowledged, the nemesis takes turns of
faults drawn from a seeded generator: SIGKILL (and restart), SIGSTOP (and SIGCONT), SIGTERM
(graceful stop, and restart), a node cut off from every peer, the leader cut from one follower
only, a pool worker killed, a node's data dir deleted (restarted empty with --rejoin), a node's
files damaged (a flipped byte or a cut in its log, hard state or snapshot; restarted with
--repair), a node replaced by a new one at a new address (joined, added as a learner,
promoted, the old one removed and stopped), on five
nodes two of those faults at once (kill, pause, cut off), and now and then every node killed
at once. Afterwards every node is brought back and healed, and the
history is checked:

- every acknowledged event is stored exactly once, at the queue and offset its answer named;
- no event id is stored twice, acknowledged or not (a failed call is retried with its ids);
- each writer's acknowledged calls sit at increasing Raft indexes (a later call never lands
  before an earlier acknowledged one);
- every linearizable read returned the event acknowledged at that position before it began;
- each queue's offsets run from 0 without a gap, and every node ends on the same digest;
- every line of every node's log is in the log format (no traceback, no stray print), and
  none reports a clock gap (every node here reads one clock);
- the cluster takes writes again within a bound once everything is healed;
- no pool worker outlives its node (a worker orphaned by a SIGKILL must exit on its own).

Timing is real, so a seed replays the schedule of faults, not the interleaving; the seed and
the schedule are printed with any failure.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import psutil

from eventstream.client import Client
from eventstream.errors import EscError, Refused
from tests.cluster.harness import LocalCluster, NetNamespace
from tests.faults.file_damage import damage, damageable

SEED_ENV = "ESC_NEMESIS_SEED"
# eventstream/node_log.py's format.
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} node\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")


def nemesis_seed() -> int:
    text = os.environ.get(SEED_ENV)
    return int(text) if text else random.SystemRandom().randrange(2**32)


@dataclass(frozen=True, slots=True)
class Ack:
    writer: int
    event_id: bytes
    queue: int
    offset: int
    index: int
    call: int  # the writer's call number: acks of one call share it
    acked_at: float


@dataclass(slots=True)
class History:
    acks: list[Ack] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    reads_checked: int = 0
    read_errors: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acks_between(self, start: float, end: float) -> int:
        with self.lock:
            return sum(1 for a in self.acks if start <= a.acked_at < end)


class Writer(threading.Thread):
    """Appends batches of 1 to `batch_max` events with ids of its own; a failed call is sent
    again with the same ids and payloads until it is answered (the dedup table answers what
    an earlier try already stored). With own_ids False the client library makes the ids up and
    retries within the call only."""

    def __init__(self, number: int, addresses: list[str], history: History, stop: threading.Event,
                 seed: int, batch_max: int, timeout_s: float, own_ids: bool = True,
                 tls_ca: str | None = None) -> None:
        super().__init__(name=f"nemesis-writer-{number}", daemon=True)
        self._tls_ca = tls_ca
        self.number = number
        self._addresses = addresses
        self._history = history
        self._halt = stop
        self._rng = random.Random(seed)
        self._batch_max = batch_max
        self._timeout_s = timeout_s
        self._own_ids = own_ids

    def run(self) -> None:
        with Client(self._addresses, timeout_s=self._timeout_s, attempt_timeout_s=1.0, tls_ca=self._tls_ca) as client:
            k = 0
            call = 0
            while not self._halt.is_set():
                n = self._rng.randint(1, self._batch_max)
                ids = [f"w{self.number}-{k + i}".encode() for i in range(n)]
                events = [{"payload": b"p-" + i, "key": f"key-{(k + j) % 13}", "event_id": i if self._own_ids else None}
                          for j, i in enumerate(ids)]
                while not self._halt.is_set():
                    try:
                        results = client.append_batch(events)
                    except EscError as exc:
                        with self._history.lock:
                            self._history.errors[type(exc).__name__] += 1
                        if not self._own_ids:
                            break  # the library's ids for it are gone: it may be stored once, or not at all
                        continue
                    now = time.monotonic()
                    with self._history.lock:
                        for r in results:
                            self._history.acks.append(Ack(self.number, r.event_id, r.queue, r.offset, r.index, call, now))
                    break
                k += n
                call += 1


class Reader(threading.Thread):
    """Reads, linearizably, the position of an event acknowledged before the read began; the
    answer must be that event."""

    def __init__(self, addresses: list[str], history: History, stop: threading.Event, seed: int,
                 tls_ca: str | None = None) -> None:
        super().__init__(name="nemesis-reader", daemon=True)
        self._tls_ca = tls_ca
        self._addresses = addresses
        self._history = history
        self._halt = stop
        self._rng = random.Random(seed)

    def run(self) -> None:
        with Client(self._addresses, timeout_s=4.0, attempt_timeout_s=1.0, tls_ca=self._tls_ca) as client:
            while not self._halt.wait(0.05):
                with self._history.lock:
                    if not self._history.acks:
                        continue
                    # The newest acknowledgement is the one a stale read would most likely miss.
                    ack = self._history.acks[-1] if self._rng.random() < 0.5 else self._rng.choice(self._history.acks)
                try:
                    events = client.read(ack.queue, ack.offset, 1)
                except EscError as exc:
                    with self._history.lock:
                        self._history.read_errors[type(exc).__name__] += 1
                    continue
                with self._history.lock:
                    self._history.reads_checked += 1
                    if not events or events[0].event_id != ack.event_id:
                        got = events[0].event_id if events else None
                        self._history.violations.append(
                            f"linearizable read of queue {ack.queue} offset {ack.offset} returned {got!r}; "
                            f"{ack.event_id!r} was acknowledged there before the read began")


@dataclass(slots=True)
class Turn:
    kind: str
    nodes: tuple[int, ...]
    started: float
    ended: float = 0.0
    minority: bool = True  # a majority stayed up and connected throughout


class Nemesis:
    """Draws and applies faults; keeps at most a minority faulty except in whole-cluster turns."""

    KINDS = ("kill", "pause", "terminate", "isolate", "bridge", "kill_worker", "kill_all", "lose_disk", "damage",
             "two_at_once", "replace")
    WEIGHTS = (4, 3, 1, 3, 2, 1, 1, 1, 1, 3, 1)

    def __init__(self, cluster: LocalCluster, netns: NetNamespace, seed: int, pool: bool) -> None:
        self.cluster = cluster
        self.netns = netns
        self.rng = random.Random(seed)
        self.pool = pool
        self.turns: list[Turn] = []
        self.workers: set[int] = set()
        self.log: list[str] = []
        self._t0 = time.monotonic()

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self._t0:7.2f} s  {text}")

    def leader(self) -> int | None:
        """The node that says it leads at the highest term, among running ones; None if none does."""
        best: tuple[int, int] | None = None
        for k, node in self.cluster.nodes.items():
            if not node.alive or self._stopped(k):
                continue
            status = node.status(0.3)
            if status is not None and status["role"] == "leader" and (best is None or status["term"] > best[0]):
                best = (status["term"], k)
        return None if best is None else best[1]

    def _stopped(self, k: int) -> bool:
        proc = self.cluster.nodes[k].proc
        try:
            return proc is not None and psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED
        except psutil.Error:
            return False

    def _target(self) -> int:
        leader = self.leader()
        if leader is not None and self.rng.random() < 0.6:
            return leader
        return self.rng.choice(sorted(self.cluster.nodes))

    def note_workers(self) -> None:
        """Remember every pool worker running now, so the end of the run can check none outlived
        its node."""
        for node in self.cluster.nodes.values():
            proc = node.proc
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(psutil.Error):
                self.workers.update(w.pid for w in psutil.Process(proc.pid).children())

    def surviving_workers(self, wait_s: float) -> list[int]:
        """Pool workers seen during the run that still live wait_s after every node stopped."""
        def alive(pid: int) -> bool:
            try:
                p = psutil.Process(pid)
                return p.status() != psutil.STATUS_ZOMBIE and "eventstream.replication.worker" in " ".join(p.cmdline())
            except psutil.Error:
                return False

        deadline = time.monotonic() + wait_s
        while True:
            left = [pid for pid in sorted(self.workers) if alive(pid)]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def run_turn(self, hold_s: float) -> None:
        self.note_workers()
        # Two faulty nodes of three would leave no majority: that turn is for five or more.
        choices = [(k, w) for k, w in zip(self.KINDS, self.WEIGHTS) if k != "two_at_once" or len(self.cluster.nodes) >= 5]
        kind = self.rng.choices([k for k, _ in choices], [w for _, w in choices])[0]
        if kind == "kill_worker" and not self.pool:
            kind = "kill"
        nodes = self.cluster.nodes
        turn: Turn
        if kind == "kill_all":
            turn = Turn(kind, tuple(nodes), time.monotonic(), minority=False)
            for node in nodes.values():
                node.kill()
            self.note("SIGKILL every node")
            time.sleep(min(hold_s, 1.0))
            for node in nodes.values():
                node.start()
            self.note("every node restarted")
        elif kind == "bridge":
            leader = self.leader()
            if leader is None:
                self.note("bridge skipped: no leader")
                return
            follower = self.rng.choice([k for k in nodes if k != leader])
            turn = Turn(kind, (leader, follower), time.monotonic())
            self.netns.cut(self.cluster.host_of(leader), self.cluster.host_of(follower))
            self.note(f"cut leader {leader} from follower {follower} only")
            time.sleep(hold_s)
            self.netns.heal()
            self.note("healed")
        elif kind == "kill_worker":
            leader = self.leader()
            proc = nodes[leader].proc if leader is not None else None
            try:
                workers = psutil.Process(proc.pid).children() if proc is not None else []
            except psutil.Error:
                workers = []
            if leader is None or not workers:
                self.note("kill_worker skipped: no leader with workers")
                return
            worker = self.rng.choice(workers)
            turn = Turn(kind, (leader,), time.monotonic())
            try:
                worker.send_signal(signal.SIGKILL)
                self.note(f"SIGKILL pool worker {worker.pid} of leader {leader}")
            except psutil.Error as exc:
                self.note(f"pool worker {worker.pid} already gone: {exc}")
            time.sleep(hold_s)
        elif kind == "replace":
            old = self._target()
            turn = Turn(kind, (old,), time.monotonic())
            if not self._replace(old):
                return
        elif kind == "two_at_once":
            # Two nodes of five or more faulty together: the majority left must still serve.
            first = self._target()
            second = self.rng.choice([j for j in sorted(nodes) if j != first])
            kinds = [self.rng.choice(("kill", "pause", "isolate")) for _ in range(2)]
            turn = Turn(kind, (first, second), time.monotonic())
            for k, single in zip((first, second), kinds):
                self._begin(single, k)
            time.sleep(hold_s)
            for k, single in zip((first, second), kinds):
                self._end(single, k)
        else:
            k = self._target()
            turn = Turn(kind, (k,), time.monotonic())
            if kind in ("lose_disk", "damage"):
                # A second node losing its data while one still catches up would be a second
                # failure, past what the cluster tolerates: it would rightly stop electing.
                # A node that does not answer may be one still opening or repairing its data
                # (seed 3613388233: node 3 restarted with --repair, silent for 0.5 s, and node
                # 1 then lost its disk): it counts as catching up.
                rejoining = [j for j, n in nodes.items() if n.alive and ((st := n.status(2.0)) is None or st["rejoining"])]
                if rejoining:
                    self.note(f"{kind} skipped: node {rejoining[0]} is still catching up")
                    return
            self._begin(kind, k)
            time.sleep(hold_s)
            self._end(kind, k)
        turn.ended = time.monotonic()
        self.turns.append(turn)

    def _replace(self, old: int) -> bool:
        """Replace node `old` by a new node at a new address, as an operator would
        (docs/operations.md, "Runbooks"); False when the cluster refused a step (noted)."""
        cluster = self.cluster
        new = max(cluster.nodes) + 1
        if new > cluster.size + cluster.spare:
            self.note("replace skipped: no spare id left")
            return False
        node = cluster.add_node(new)
        self.note(f"node {new} started with --join to replace node {old}")
        try:
            with Client(cluster.addresses, timeout_s=10.0, tls_ca=cluster.tls_ca) as admin:
                admin.add_member(new, node.address)
                self.note(f"node {new} added as a learner")
                deadline = time.monotonic() + 20
                while True:
                    try:
                        admin.promote_member(new)
                        break
                    except Refused:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)
                self.note(f"node {new} promoted")
                admin.remove_member(old)
        except EscError as exc:
            # The new node stays a member (a learner, or a voter beside the old one): a cluster
            # one node larger is as valid an end as the one planned.
            self.note(f"replace of node {old} stopped: {type(exc).__name__}: {exc}")
            return True
        cluster.retire(old)
        self.note(f"node {old} removed and stopped")
        return True

    def _begin(self, kind: str, k: int) -> None:
        """Start a fault of one node: kill, terminate, pause, isolate or lose_disk."""
        node = self.cluster.nodes[k]
        if kind == "kill":
            node.kill()
            self.note(f"SIGKILL node {k}")
        elif kind == "terminate":
            self.note(f"SIGTERM node {k}: exit code {node.stop()}")
        elif kind == "pause":
            assert node.proc is not None
            node.proc.send_signal(signal.SIGSTOP)
            self.note(f"SIGSTOP node {k}")
        elif kind == "isolate":
            for other in self.cluster.nodes:
                if other != k:
                    self.netns.cut(self.cluster.host_of(k), self.cluster.host_of(other))
            self.note(f"node {k} cut off from every peer")
        elif kind == "lose_disk":
            node.kill()
            shutil.rmtree(node.data_dir)
            self.note(f"SIGKILL node {k} and delete its data dir")
        elif kind == "damage":
            node.kill()
            targets = damageable(node.data_dir)
            if targets:
                _, done = damage(node.data_dir, self.rng.choice(targets), self.rng)
                self.note(f"SIGKILL node {k} and {done}")
            else:
                self.note(f"SIGKILL node {k} (no file to damage yet)")
        else:
            raise ValueError(f"unknown single-node fault {kind!r}")

    def _end(self, kind: str, k: int) -> None:
        node = self.cluster.nodes[k]
        if kind in ("kill", "terminate"):
            node.start()
            self.note(f"node {k} restarted")
        elif kind == "pause":
            assert node.proc is not None
            node.proc.send_signal(signal.SIGCONT)
            self.note(f"SIGCONT node {k}")
        elif kind == "isolate":
            for other in self.cluster.nodes:
                if other != k:
                    self.netns.uncut(self.cluster.host_of(k), self.cluster.host_of(other))
            self.note(f"node {k} healed")
        elif kind == "lose_disk":
            node.extra_args = ["--rejoin"]
            node.start()
            self.note(f"node {k} restarted empty with --rejoin")
        elif kind == "damage":
            node.extra_args = ["--repair"]
            node.start()
            self.note(f"node {k} restarted with --repair")

    def continue_all(self) -> None:
        for node in self.cluster.nodes.values():
            if node.alive:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGCONT)

    def restore(self) -> None:
        """Every node running, continued and reachable."""
        self.netns.heal()
        self.continue_all()
        for node in self.cluster.nodes.values():
            if not node.alive:
                node.start()
        self.note("restored: every node running and healed")


def check_history(cluster: LocalCluster, history: History, queue_count: int) -> list[str]:
    """The safety checks over the whole run; returns the violations found (empty when sound)."""
    problems = list(history.violations)
    statuses = cluster.wait_converged(90)
    digests = {k: s["digest"] for k, s in statuses.items()}
    if len(set(digests.values())) != 1:
        problems.append(f"nodes ended on different digests: {digests}")
    stored: Counter[bytes | None] = Counter()
    positions: dict[bytes | None, tuple[int, int]] = {}
    with Client(cluster.addresses, timeout_s=30.0, tls_ca=cluster.tls_ca) as client:
        for q in range(queue_count):
            events = client.read_to_end(q)
            if [e.offset for e in events] != list(range(len(events))):
                problems.append(f"queue {q}: offsets are not 0..{len(events) - 1} without gaps")
            for e in events:
                stored[e.event_id] += 1
                positions[e.event_id] = (q, e.offset)
    for k, node in {**cluster.retired, **cluster.nodes}.items():
        text = node.log_text()
        stray = [line for line in text.splitlines() if not LOG_LINE.match(line)]
        if stray:
            # A traceback, or a print that bypassed the log format (no time, node or level).
            problems.append(f"node {k} wrote {len(stray)} lines outside the log format, e.g. {stray[0]!r} "
                            f"(see {node.log_path})")
        if "ahead of the previous leader's" in text:
            # Every node reads the same clock here: a reported gap would be a false alarm.
            problems.append(f"node {k} reported a clock gap between nodes that share one clock (see {node.log_path})")
    twice = [i for i, n in stored.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} event ids stored more than once, e.g. {twice[:5]}")
    missing = [a for a in history.acks if a.event_id not in stored]
    if missing:
        problems.append(f"{len(missing)} acknowledged events lost, e.g. {[a.event_id for a in missing[:5]]}")
    misplaced = [a for a in history.acks if a.event_id in positions and positions[a.event_id] != (a.queue, a.offset)]
    if misplaced:
        a = misplaced[0]
        problems.append(f"{len(misplaced)} acknowledged events are not where their answer put them, e.g. "
                        f"{a.event_id!r} answered at {(a.queue, a.offset)}, stored at {positions[a.event_id]}")
    last: dict[int, Ack] = {}
    for a in history.acks:  # each writer's acks are in the order it received them
        previous = last.get(a.writer)
        if previous is not None and previous.call != a.call and a.index <= previous.index:
            problems.append(f"writer {a.writer}: call {a.call} acknowledged at index {a.index}, not after "
                            f"call {previous.call} at index {previous.index}")
        last[a.writer] = a
    return problems


# Small snapshots and segments, so compaction, snapshot installs and segment roll-over all
# happen within a run of seconds.
NODE_OPTIONS: dict[str, int] = {"snapshot_threshold": 300, "segment_bytes": 256 * 1024}
