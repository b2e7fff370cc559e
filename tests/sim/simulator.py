"""Seeded deterministic simulation of whole Raft clusters (docs/conventions.md §18).

One seed fixes everything: cluster size, fault rates, the workload and every scheduling choice,
so a failing seed replays exactly (`python -m tests.sim.run --seeds 1 --start SEED`).

Fault model, during the fault phase:
  network   each message is dropped, duplicated, and delayed by 1..max_delay ticks (so messages
            are reordered); symmetric partitions (two sides) and asymmetric ones (a random set of
            one-way links down) come and go.
  crashes   a node stops: every volatile thing is lost (its RaftNode, state machine, staged
            snapshot chunks, messages addressed to it) and its storage keeps only what was
            persisted; a commit index written without sync (Ready.must_sync False) is lost too.
            Crashes also strike in the middle of a Ready, after its `messages` went out but before
            anything was persisted. A crashed node restarts later from its storage.
  lazy commit on half of the seeds (drawn apart from the late syncs), leaders send a new commit
            index only with the next entries or at the next tick (RaftConfig.lazy_commit).
  late sync on half of the seeds, leaders sync their own writes late, as the node does
            (advance(durable=False), then RaftNode.persisted after a random delay): a crash
            before the sync loses those entries even though they may already be committed
            (a majority of followers holds them) and applied on the leader.
  pauses    a node stalls (GC, VM migration) with all its state, then resumes: a deposed leader
            comes back believing it still leads; messages sent to it arrive late.
  disk loss only with Simulation(disk_loss=True) (python -m tests.sim.run --disk-loss), on seeds with
            pre-vote (as the node runs): a node's disk is replaced and it restarts with nothing,
            rejoining (RaftConfig.rejoining); no more such nodes at once than the cluster can
            lose. Kept apart from the default seeds so
            that their recorded schedules (the mutation checks' seeds) stay as they were.
  skew      nodes' clocks drift: a node misses ticks at random.
  batching  on half of the seeds (drawn apart), a node steps every message due in a tick before
            it handles a Ready, as the node process does with a burst from its sockets: one
            Ready then carries the effects of several messages.
  workload  proposals to whichever node the client believes leads, ReadIndex requests on leaders
            and followers, leadership transfers, and snapshots + log compaction on every node.
Then the faults stop (network healed, every node restarted) and liveness is measured: a leader
must be elected and a fresh proposal committed and applied on every member within
LIVENESS_BUDGET_TICKS; past that budget, a member still catching up gets more time only while
its applied index keeps rising (a stall of CATCH_UP_STALL_ELECTIONS election timeouts, or
LIVENESS_CAP_TICKS in all, is a violation): a schedule that drew one entry per append and one append in flight, then added a
voter hundreds of entries behind, recovers at one entry a round trip, which is that
configuration's rate, not a stall. Then every proposal the workload ever got accepted is resolved: committed, or replaced by the
entries of a leader of a later term (never one accepted by the current leader in its term).

Checked at every step (after each message delivery, tick and Ready):
  election safety      at most one leader per term (§5.2)
  leader append-only   a leader never overwrites or deletes entries of its own log (§5.3)
  log matching         equal (index, term) means equal data and equal term at index - 1, which by
                       induction makes the logs identical up to there (§5.3)
  leader completeness  a new leader of term T holds the highest entry committed by the leader
                       of any term below T (§5.4)
  state machine safety no two nodes apply different entries, or reach different digests, at one
                       index; a restored snapshot has the digest the others had at its index
  committed stays      follows from the two above: an applied (acknowledged) entry is in every
                       later leader and is never applied differently
  linearizable reads   a ReadState's index is at least the highest index applied anywhere when
                       the read was requested (no completed write is missed)
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import Counter
from dataclasses import dataclass, field

from eventstream.node.ready import ReadyExecutor
from eventstream.raft import (
    Entry,
    Message,
    ProposalError,
    RaftConfig,
    RaftNode,
    Ready,
    Role,
    SnapshotMeta,
)
from eventstream.raft.membership import ChangeKind, MembershipChange
from eventstream.raft.storage import MemoryStorage, StorageError
from tests.sim.host import MemoryHost

LIVENESS_BUDGET_TICKS = 400
# After the fresh proposal commits, a member still behind must show progress this often (in
# election timeouts), and be done within the cap.
CATCH_UP_STALL_ELECTIONS = 5
LIVENESS_CAP_TICKS = 4000
DEFAULT_FAULT_TICKS = 400
ELECTION_TICKS = 10


class CrashedInReady(Exception):
    """A node crashed at the executor's fault point: the rest of its Ready is never done."""


class Violation(AssertionError):
    """A safety or liveness property failed."""


@dataclass(slots=True)
class FaultRates:
    """Per-seed fault and workload parameters, drawn from the seed."""

    nodes: int
    fault_ticks: int
    drop: float
    duplicate: float
    max_delay: int
    partition: float
    crash: float
    crash_in_ready: float
    pause: float
    skew: float
    propose: float
    read: float
    transfer: float
    snapshot_every: int
    keep_entries: int
    pre_vote: bool
    check_quorum: bool
    heartbeat_ticks: int
    max_inflight: int
    max_append_bytes: int
    max_uncommitted_bytes: int

    @classmethod
    def draw(cls, rng: random.Random, nodes: int | None, fault_ticks: int) -> FaultRates:
        return cls(
            nodes=nodes or rng.choice((3, 5)),
            fault_ticks=fault_ticks,
            drop=rng.choice((0.0, 0.02, 0.1, 0.3)),
            duplicate=rng.choice((0.0, 0.02, 0.1)),
            max_delay=rng.choice((1, 2, 4)),
            partition=rng.choice((0.0, 0.01, 0.03)),
            crash=rng.choice((0.0, 0.005, 0.02)),
            crash_in_ready=rng.choice((0.0, 0.002, 0.01)),
            pause=rng.choice((0.0, 0.005, 0.02)),
            skew=rng.choice((0.0, 0.1, 0.3)),
            propose=rng.choice((0.1, 0.3, 0.8)),
            read=rng.choice((0.0, 0.05)),
            transfer=rng.choice((0.0, 0.01)),
            snapshot_every=rng.choice((0, 4, 16)),
            keep_entries=rng.choice((0, 3)),
            pre_vote=rng.random() < 0.8,
            check_quorum=rng.random() < 0.8,
            heartbeat_ticks=rng.choice((1, 2, 3)),
            max_inflight=rng.choice((1, 3, 64)),
            max_append_bytes=rng.choice((24, 1 << 20)),
            max_uncommitted_bytes=rng.choice((200, 1 << 20)),
        )


@dataclass(slots=True)
class SimResult:
    seed: int
    nodes: int
    steps: int
    ticks: int
    # Ticks after the faults stopped until a fresh proposal was applied on every node
    # (recovery_ticks) and until it was first applied anywhere, i.e. committed (commit_ticks).
    recovery_ticks: int
    commit_ticks: int
    committed: int
    elections: int
    violations: list[str] = field(default_factory=list)
    # How often each fault and feature was exercised (crash, drop, snapshot_install, ...).
    events: Counter[str] = field(default_factory=Counter)


class Simulation:
    """One seeded run of a cluster; `run()` returns a SimResult (violations listed, not raised)."""

    def __init__(
        self,
        seed: int,
        nodes: int | None = None,
        fault_ticks: int = DEFAULT_FAULT_TICKS,
        node_class: type[RaftNode] = RaftNode,
        disk_loss: bool = False,
        executor_class: type[ReadyExecutor] = ReadyExecutor,
        membership: bool = False,
    ) -> None:
        """membership: the leader also changes who takes part (adds learners and voters,
        promotes, removes, itself included), with spare nodes running outside the cluster
        that it may add. A family of its own: the schedules without it stay as they were."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.rates = FaultRates.draw(self.rng, nodes, fault_ticks)
        # A real node steps every message that arrived before it handles the next Ready, so one
        # Ready can hold the effects of several (two snapshots' chunks, entries between them).
        # Drawn apart from the main generator so the other draws of a seed stay as they were.
        self.batch_ready = random.Random(f"{seed}-batch-ready").random() < 0.5
        rates = self.rates
        self.voters = tuple(range(1, rates.nodes + 1))
        self.member_rng = random.Random(f"{seed}-membership")
        self.membership_rate = self.member_rng.choice((0.01, 0.03, 0.08)) if membership else 0.0
        spares = self.member_rng.choice((1, 2)) if membership else 0
        if membership and not self.rates.pre_vote:
            # The node always runs pre-vote. Without it a removed node that never heard of its
            # removal deposes each leader with a higher term (thesis §4.2.3); seen on seeds
            # 1234 and 2318 of these schedules.
            self.rates = dataclasses.replace(self.rates, pre_vote=True)
        rates = self.rates
        # Every node that runs: the first voters, then the spares.
        self.ids = tuple(range(1, rates.nodes + spares + 1))
        # Leaders sync their writes late (advance(durable=False)) on half of the seeds. Its own
        # generator keeps every other draw of a seed as it was before this feature existed.
        self.sync_rng = random.Random(seed * 7919 + 17)
        # A node's disk replaced (it restarts empty, rejoining): drawn apart likewise.
        self.disk_rng = random.Random(f"{seed}-disk-loss")
        self.lose_disk_rate = self.disk_rng.choice((0.002, 0.005)) if disk_loss else 0.0
        if membership:
            # A node that lost its disk starts from the first voters, which a changed
            # membership may no longer hold; the node's --rejoin learns the membership first.
            self.lose_disk_rate = 0.0
        if not rates.pre_vote:
            # The node always runs pre-vote. Without it, two of five nodes rejoining leave three
            # that must all vote alike while each timeout bumps the term: elections can churn
            # past the liveness budget (seen on seeds 7270, 9359, 20145).
            self.lose_disk_rate = 0.0
        # Paused node -> nodes whose links to it came back meanwhile (reported on resume).
        self.reconnects_pending: dict[int, set[int]] = {}
        self.deferred_sync = self.sync_rng.random() < 0.5
        lazy_commit = self.sync_rng.random() < 0.5
        self.hosts: dict[int, MemoryHost] = {}
        for node_id in self.ids:
            config = RaftConfig(
                id=node_id,
                voters=self.voters,
                election_ticks=ELECTION_TICKS,
                heartbeat_ticks=rates.heartbeat_ticks,
                max_inflight=rates.max_inflight,
                max_append_bytes=rates.max_append_bytes,
                max_entry_bytes=64,
                max_uncommitted_bytes=rates.max_uncommitted_bytes,
                snapshot_chunk_bytes=64,
                lazy_commit=lazy_commit,
                pre_vote=rates.pre_vote,
                check_quorum=rates.check_quorum,
            )
            host = MemoryHost(config, MemoryStorage(), self._node_seed(), node_class, executor_class)
            host.deferred_sync = self.deferred_sync
            host.snapshot_every = rates.snapshot_every
            host.keep_entries = rates.keep_entries
            host.on_apply = self._on_apply
            host.on_restore = self._on_restore
            self.hosts[node_id] = host
        self.down: dict[int, int] = {}  # crashed node -> tick at which it restarts
        # Paused node (a long GC or VM stall) -> tick at which it resumes. It keeps all its
        # volatile state; messages to it wait and arrive after it resumes.
        self.paused: dict[int, int] = {}
        self.held: list[Message] = []
        self.blocked: set[tuple[int, int]] = set()  # (sender, receiver) links that drop all
        self.network: list[tuple[int, float, int, Message]] = []
        self.now = 0
        self.steps = 0
        self.sent = 0
        self.faults_on = True
        self.proposal_seq = 0
        self.leader_guess = self.ids[0]
        # Checker state.
        self.leader_of_term: dict[int, int] = {}
        # Term -> (highest index its leader committed, that entry's term).
        self.commit_by_term: dict[int, tuple[int, int]] = {}
        self.leader_term_seen: dict[int, int] = {}  # node -> term it was last seen leading
        self.entry_ids: dict[tuple[int, int], tuple[bytes, int]] = {}
        self.applied_at: dict[int, tuple[int, bytes, int]] = {}
        self.max_applied = 0
        self.reads_required: dict[bytes, int] = {}
        # Index -> (leader term, data) of the latest proposal accepted at that index.
        self.accepted: dict[int, tuple[int, bytes]] = {}
        self.violations: list[str] = []
        self.events: Counter[str] = Counter()

    def _node_seed(self) -> int:
        return self.rng.getrandbits(32)

    # ------------------------------------------------------------------ checks

    def _violate(self, what: str) -> None:
        self.violations.append(f"tick {self.now}: {what}")
        raise Violation(what)

    def _on_apply(self, host: MemoryHost, entry: Entry, digest: int) -> None:
        seen = self.applied_at.get(entry.index)
        if seen is None:
            self.applied_at[entry.index] = (entry.term, bytes(entry.data), digest)
            if entry.index > self.max_applied:
                self.max_applied = entry.index
        elif seen[0] != entry.term or seen[1] != entry.data or seen[2] != digest:
            self._violate(
                f"state machine safety: node {host.node_id} applied {entry.index}/{entry.term} "
                f"{entry.data!r} digest {digest}, another node applied {seen[0]} {seen[1]!r} "
                f"digest {seen[2]}"
            )

    def _on_restore(self, host: MemoryHost, meta: SnapshotMeta, digest: int) -> None:
        self.events["snapshot_install"] += 1
        seen = self.applied_at.get(meta.index)
        if seen is not None and (seen[0] != meta.term or seen[2] != digest):
            self._violate(
                f"state machine safety: node {host.node_id} restored a snapshot at "
                f"{meta.index}/{meta.term} with digest {digest}, others applied {seen[0]} "
                f"digest {seen[2]}"
            )

    def _check_leader(self, host: MemoryHost) -> None:
        node = host.node
        if node.role != Role.LEADER:
            return
        term = node.term
        holder = self.leader_of_term.get(term)
        if holder is None:
            self.leader_of_term[term] = node.id
            self._check_completeness(node)
            if self.membership_rate and self.faults_on and self.member_rng.random() < 0.3:
                # A change asked of a leader at the very start of its term, when the core must
                # refuse it (it has committed nothing of its term yet).
                self._change_membership(leader=node, process=False)
        elif holder != node.id:
            self._violate(f"election safety: nodes {holder} and {node.id} both lead term {term}")
        committed = node.log.committed
        best = self.commit_by_term.get(term)
        if committed and (best is None or committed > best[0]):
            self.commit_by_term[term] = (committed, node.log.term(committed))

    def _check_completeness(self, node: RaftNode) -> None:
        """§5.4: an entry committed in term T is in the log of every leader of a term > T.
        (A leader of a lower term may still be elected later, by votes granted before the
        higher term began; it need not hold entries committed after its term.)"""
        index = 0
        term = 0
        for commit_term, (committed, entry_term) in self.commit_by_term.items():
            if commit_term < node.term and committed > index:
                index, term = committed, entry_term
        if index == 0 or index < node.log.first_index():
            return
        if not node.log.match_term(index, term):
            self._violate(
                f"leader completeness: node {node.id} leads term {node.term} without the "
                f"entry {index}/{term} committed in an earlier term "
                f"(last index {node.log.last_index()})"
            )

    def _check_persist(
        self, host: MemoryHost, entries: list[Entry], snapshot: SnapshotMeta | None
    ) -> None:
        node = host.node
        storage = host.storage
        if node.role == Role.LEADER and self.leader_term_seen.get(node.id) == node.term:
            if snapshot is not None:
                self._violate(f"leader append-only: leader {node.id} installs a snapshot")
            if entries and entries[0].index <= storage.last_index():
                self._violate(
                    f"leader append-only: leader {node.id} of term {node.term} rewrites its log "
                    f"from {entries[0].index} (last {storage.last_index()})"
                )
        if node.role == Role.LEADER:
            self.leader_term_seen[node.id] = node.term
        if not entries:
            return
        first = entries[0].index
        if snapshot is not None and first - 1 == snapshot.index:
            prev_term = snapshot.term
        else:
            try:
                prev_term = storage.term(first - 1)
            except StorageError:
                prev_term = -1  # below the snapshot: the snapshot digest check covers it
        ids = self.entry_ids
        for entry in entries:
            key = (entry.index, entry.term)
            seen = ids.get(key)
            if seen is None:
                ids[key] = (bytes(entry.data), prev_term)
            elif seen[0] != entry.data or (
                prev_term >= 0 and seen[1] >= 0 and seen[1] != prev_term
            ):
                self._violate(
                    f"log matching: node {node.id} holds {entry.index}/{entry.term} "
                    f"{entry.data!r} after term {prev_term}; elsewhere it is {seen[0]!r} after "
                    f"term {seen[1]}"
                )
            prev_term = entry.term

    # ------------------------------------------------------------------ network

    def _send(self, m: Message) -> None:
        self.sent += 1
        rng = self.rng
        rates = self.rates
        if self.faults_on:
            if rates.drop and rng.random() < rates.drop:
                self.events["drop"] += 1
                return
            copies = 2 if rates.duplicate and rng.random() < rates.duplicate else 1
            if copies == 2:
                self.events["duplicate"] += 1
            max_delay = rates.max_delay
        else:
            copies = 1
            max_delay = 2
        for _ in range(copies):
            at = self.now + rng.randint(1, max_delay)
            heapq.heappush(self.network, (at, rng.random(), self.sent, m))

    def _deliver_due(self) -> None:
        network = self.network
        hosts = self.hosts
        stepped: dict[int, MemoryHost] = {}
        while network and network[0][0] <= self.now:
            m = heapq.heappop(network)[3]
            if m.to in self.down:
                continue
            if m.to in self.paused:
                self.held.append(m)
                continue
            if (m.sender, m.to) in self.blocked:
                self.events["partitioned"] += 1
                continue
            host = hosts[m.to]
            self.steps += 1
            host.node.step(m)
            if self.batch_ready:
                if host.node_id in stepped:
                    self.events["batched_ready"] += 1  # a second message before this host's Ready
                stepped[host.node_id] = host
            else:
                self._process_ready(host)
        for host in stepped.values():
            if host.node_id not in self.down:
                self._process_ready(host)

    # ------------------------------------------------------------------ nodes

    def _process_ready(self, host: MemoryHost) -> None:
        self._check_leader(host)
        if not host.node.has_ready():
            return
        host.sender.send_one = self._send
        host.executor.before_writes = lambda rd: self._before_writes(host, rd)
        try:
            rd = host.executor.run_one()
        except CrashedInReady:
            return
        assert rd is not None
        if not host.executor.last_durable:
            self.events["deferred_sync"] += 1
        if rd.read_states:
            self._check_reads(host)
        if rd.compact_index:
            self.events["compact"] += 1
        self._check_leader(host)

    def _before_writes(self, host: MemoryHost, rd: Ready) -> None:
        """The executor's fault point: the Ready's messages are out, nothing is written yet."""
        if (
            self.faults_on
            and self.rates.crash_in_ready
            and self.rng.random() < self.rates.crash_in_ready
        ):
            # Crash with this Ready's writes not yet durable: they are lost.
            self.events["crash_in_ready"] += 1
            self._crash(host.node_id)
            raise CrashedInReady
        self._check_persist(host, rd.entries, rd.snapshot)

    def _check_reads(self, host: MemoryHost) -> None:
        for state in host.read_states:
            self.events["read_served"] += 1
            required = self.reads_required.pop(state.context, None)
            if required is not None and state.index < required:
                self._violate(
                    f"linearizable read: node {host.node_id} served read {state.context!r} at "
                    f"{state.index}, but {required} was applied before it was requested"
                )
        host.read_states.clear()

    def _crash(self, node_id: int) -> None:
        host = self.hosts[node_id]
        host.crash()
        self.down[node_id] = self.now + self.rng.randint(5, 60)

    def _restart(self, node_id: int) -> None:
        del self.down[node_id]
        host = self.hosts[node_id]
        host.start(self._node_seed())
        if host.rejoining:
            # What the node sent before it lost its disk is read (or lost with its connection)
            # before a peer sees its new connection: a peer takes up a new connection to a
            # node only after the old one ended, and a pool worker reports in order.
            self.network = [item for item in self.network if item[3].sender != node_id]
            heapq.heapify(self.network)
            self.held = [m for m in self.held if m.sender != node_id]
            # Its peers see its links come back, as the node's transport reports every
            # reconnect (RaftNode.report_reconnected): a leader forgets what the lost disk held.
            # (Only here: ordinary restarts keep the schedules of earlier seeds as they were.)
            for peer in self.ids:
                if peer == node_id or peer in self.down:
                    continue
                if peer in self.paused:
                    self.reconnects_pending.setdefault(peer, set()).add(node_id)
                    continue
                self.hosts[peer].node.report_reconnected(node_id)
                self._process_ready(self.hosts[peer])

    # ------------------------------------------------------------------ schedule

    def _inject_faults(self) -> None:
        rng = self.rng
        rates = self.rates
        if rates.crash and rng.random() < rates.crash:
            live = self._running()
            if live:
                self.events["crash"] += 1
                self._crash(rng.choice(live))
        if rates.pause and rng.random() < rates.pause:
            live = self._running()
            if live:
                self.events["pause"] += 1
                self.paused[rng.choice(live)] = self.now + rng.randint(5, 60)
        if rates.partition and rng.random() < rates.partition:
            self.events["partition_change"] += 1
            shape = rng.random()
            if shape < 0.4:
                self.blocked = set()
            elif shape < 0.8:
                side = set(rng.sample(self.ids, rng.randint(1, len(self.ids) // 2)))
                self.blocked = {
                    (a, b) for a in self.ids for b in self.ids if (a in side) != (b in side)
                }
            else:
                pairs = [(a, b) for a in self.ids for b in self.ids if a != b]
                self.blocked = set(rng.sample(pairs, rng.randint(1, len(pairs) // 2)))
        if self.lose_disk_rate and self.disk_rng.random() < self.lose_disk_rate:
            self._lose_disk()

    def _lose_disk(self) -> None:
        """Replace the disk of a node (down or up; it restarts later with nothing). At most as
        many nodes catch up at once as the cluster can lose: more could never elect again,
        which is the safe outcome of losing more disks than the cluster tolerates."""
        ids = self.ids
        if sum(1 for h in self.hosts.values() if h.rejoining) >= len(ids) - (len(ids) // 2 + 1):
            return
        choices = [i for i in ids if i not in self.paused and not self.hosts[i].rejoining]
        if not choices:
            return
        node_id = self.disk_rng.choice(choices)
        host = self.hosts[node_id]
        if node_id not in self.down:
            host.crash()
            self.down[node_id] = self.now + self.disk_rng.randint(5, 60)
        host.lose_disk()
        self.events["lose_disk"] += 1

    def _workload(self) -> None:
        rng = self.rng
        rates = self.rates
        if rng.random() < rates.propose:
            self._propose()
        if rates.read and rng.random() < rates.read:
            target = rng.choice(self.ids)
            if target not in self.down and target not in self.paused:
                context = b"r%d" % self.steps
                try:
                    self.hosts[target].node.read_index(context)
                    self.reads_required[context] = self.max_applied
                except ProposalError:
                    pass
        if rates.transfer and rng.random() < rates.transfer:
            leader = self._live_leader()
            if leader is not None:
                targets = [i for i in leader.voters.voters if i != leader.id]
                if targets:
                    leader.transfer_leadership(rng.choice(targets))
                    self.events["transfer"] += 1
        if self.membership_rate and self.member_rng.random() < self.membership_rate:
            self._change_membership()

    def _change_membership(self, leader: RaftNode | None = None, process: bool = True) -> None:
        """One membership change through the live leader, drawn from those that apply now
        (the core refuses the ones it must: pending change, lagging learner, fresh term)."""
        leader = leader or self._live_leader()
        if leader is None:
            return
        rng = self.member_rng
        current = leader.memberships.current
        grow = len(current.voters) < 5
        choices: list[MembershipChange] = []
        for node in self.ids:
            if node not in current.members:
                choices += [MembershipChange(ChangeKind.ADD_LEARNER, node)] * 2
                if grow:
                    choices.append(MembershipChange(ChangeKind.ADD_VOTER, node))
        for node in current.learners:
            if grow:
                choices += [MembershipChange(ChangeKind.PROMOTE, node)] * 2
            choices.append(MembershipChange(ChangeKind.REMOVE, node))
        if len(current.voters) > 1:
            choices += [MembershipChange(ChangeKind.REMOVE, node) for node in current.voters]
        if not choices:
            return
        change = rng.choice(choices)
        try:
            # Forced: the live-majority check is an operator's guard, not a safety rule, and
            # changes that leave the cluster short of live voters are the harder test.
            leader.propose_membership(change, force=True)
        except ProposalError:
            self.events["membership_refused"] += 1
            return
        self.events[f"membership_{change.kind.value}"] += 1
        if change.node == leader.id:
            self.events["membership_remove_leader"] += 1
        if process:
            self._process_ready(self.hosts[leader.id])

    def _live_leader(self) -> RaftNode | None:
        best = None
        for node_id, host in self.hosts.items():
            node = host.node
            if (
                node_id not in self.down
                and node_id not in self.paused
                and node.role == Role.LEADER
                and (best is None or node.term > best.term)
            ):
                best = node
        return best

    def _propose(self, data: bytes | None = None) -> int:
        """Propose through the node the client believes leads; follow NotLeader hints."""
        guess = self.leader_guess
        if guess in self.down or guess in self.paused:
            live = self._running()
            if not live:
                return 0
            guess = self.rng.choice(live)
        self.proposal_seq += 1
        if data is None:
            data = b"s%d-%d" % (self.seed, self.proposal_seq)
        host = self.hosts[guess]
        try:
            index = host.node.propose(data)
            self.events["proposal_accepted"] += 1
            self.accepted[index] = (host.node.term, data)
        except ProposalError as error:
            self.events["proposal_refused"] += 1
            hint = getattr(error, "leader", 0)
            self.leader_guess = hint if hint else self.rng.choice(self.ids)
            return 0
        self._process_ready(host)
        return index

    def _running(self) -> list[int]:
        return [i for i in self.ids if i not in self.down and i not in self.paused]

    def _resume(self, node_id: int) -> None:
        del self.paused[node_id]
        for peer in sorted(self.reconnects_pending.pop(node_id, ())):
            self.hosts[node_id].node.report_reconnected(peer)
        held, self.held = self.held, []
        for m in held:
            if m.to == node_id:
                heapq.heappush(self.network, (self.now + 1, self.rng.random(), self.sent, m))
            else:
                self.held.append(m)

    def _sync_deferred(self) -> None:
        """Deferred leader writes become durable after a random number of ticks."""
        for node_id in self.ids:
            host = self.hosts[node_id]
            if host.unsynced_from and node_id not in self.down and self.sync_rng.random() < 0.4:
                self.events["deferred_synced"] += 1
                host.sync_deferred()
                self._process_ready(host)

    def _tick_all(self) -> None:
        skew = self.rates.skew if self.faults_on else 0.0
        for node_id in self.ids:
            if node_id in self.down or node_id in self.paused:
                continue
            if skew and self.rng.random() < skew:
                # Clock skew: this node's tick comes late this time.
                self.events["skipped_tick"] += 1
                continue
            host = self.hosts[node_id]
            host.node.tick()
            self.steps += 1
            self._process_ready(host)

    def _one_tick(self) -> None:
        self.now += 1
        if self.faults_on:
            for node_id, at in list(self.down.items()):
                if at <= self.now:
                    self._restart(node_id)
            for node_id, at in list(self.paused.items()):
                if at <= self.now:
                    self._resume(node_id)
            self._inject_faults()
            self._workload()
        self._tick_all()
        if self.deferred_sync:
            self._sync_deferred()
        self._deliver_due()

    def _heal(self) -> None:
        self.faults_on = False
        self.blocked = set()
        for node_id in list(self.down):
            self._restart(node_id)
        for node_id in list(self.paused):
            self._resume(node_id)

    def _recover(self) -> tuple[int, int]:
        """Run fault-free until a fresh proposal is applied everywhere; returns the ticks until
        it was first applied anywhere and until it was applied everywhere."""
        start = self.now
        committed_after = 0
        marker = b"marker-%d" % self.seed
        marker_index = 0
        marker_term = 0
        progress_at, behind_applied = self.now, -1  # the last tick a member behind advanced
        while self.now - start < (LIVENESS_CAP_TICKS if committed_after else LIVENESS_BUDGET_TICKS):
            self._one_tick()
            leader = self._live_leader()
            if leader is None:
                continue
            if marker_index:
                seen = self.applied_at.get(marker_index)
                if seen is not None and seen[1] != marker:
                    marker_index = 0  # overwritten before commit: propose again
                elif leader.term != marker_term and seen is None:
                    marker_index = 0
            if not marker_index:
                try:
                    marker_index = leader.propose(marker)
                    marker_term = leader.term
                    self._process_ready(self.hosts[leader.id])
                except ProposalError:
                    continue
            seen = self.applied_at.get(marker_index)
            if seen is None or seen[1] != marker:
                continue
            if not committed_after:
                committed_after = self.now - start
            members = leader.memberships.current.members
            behind = [i for i in members if self.hosts[i].applied < marker_index]
            if not behind:
                if self.now - start > LIVENESS_BUDGET_TICKS:
                    self.events["slow_catch_up"] += 1
                self._check_proposals_resolved(leader)
                return committed_after, self.now - start
            applied = sum(self.hosts[i].applied for i in behind)
            if applied != behind_applied:
                progress_at, behind_applied = self.now, applied
            elif (self.now - start > LIVENESS_BUDGET_TICKS
                  and self.now - progress_at > CATCH_UP_STALL_ELECTIONS * leader.config.election_ticks):
                break  # past the budget, a catch-up gets more time only while it advances
        waited = self.now - start
        how = (f"committed after {committed_after} ticks, then the members behind stopped advancing for "
               f"{self.now - progress_at}" if committed_after else "not committed")
        self._violate(
            f"liveness: no fresh proposal applied on all nodes within {waited} ticks after faults "
            f"stopped ({how}) (applied "
            f"{ {i: h.applied for i, h in self.hosts.items()} }, roles "
            f"{ {i: h.node.role.name for i, h in self.hosts.items()} }, memberships "
            f"{ {i: h.node.memberships.current[:2] for i, h in self.hosts.items()} })"
        )
        return committed_after or LIVENESS_BUDGET_TICKS, LIVENESS_BUDGET_TICKS

    def _check_proposals_resolved(self, leader: RaftNode) -> None:
        """Every accepted proposal is now either committed or was replaced by a later leader's
        entries (Raft drops uncommitted entries of a deposed leader; the client was never
        acknowledged). One the current leader accepted in its own term cannot be lost."""
        for index, (term, data) in self.accepted.items():
            seen = self.applied_at.get(index)
            if seen is not None and seen[0] == term and seen[1] == data:
                self.events["proposal_committed"] += 1
            elif term < leader.term:
                self.events["proposal_superseded"] += 1
            else:
                self._violate(
                    f"liveness: proposal {index}/{term} accepted by the current leader "
                    f"{leader.id} is not committed although a later entry is"
                )

    def run(self) -> SimResult:
        recovery = commit = 0
        try:
            while self.now < self.rates.fault_ticks:
                self._one_tick()
            self._heal()
            commit, recovery = self._recover()
        except Violation:
            pass
        except AssertionError as error:
            # The core's own assertions (e.g. overwriting a committed entry) are violations too.
            self.violations.append(f"tick {self.now}: core assertion: {error}")
        return SimResult(
            seed=self.seed,
            nodes=self.rates.nodes,
            steps=self.steps,
            ticks=self.now,
            recovery_ticks=recovery,
            commit_ticks=commit,
            committed=self.max_applied,
            elections=len(self.leader_of_term),
            violations=self.violations,
            events=self.events,
        )
