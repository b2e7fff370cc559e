"""RaftNode: the consensus core as a pure state machine (docs/conventions.md §1).

Inputs: tick(), step(message), propose(data), read_index(context), campaign(),
transfer_leadership(target), compact(index). Output: ready() -> Ready, which the host carries out
and then confirms with advance(ready). The node never touches a socket, file, clock or thread;
its only randomness is the injected random.Random (election jitter, §5.2).

Host loop, in this order (the Ready docstring states why):

    rd = node.ready()
    send(rd.messages)                                   # may overlap with the write below
    stage(rd.snapshot_chunks); install(rd.snapshot)     # snapshot first, then
    log.append(rd.entries); save(rd.hard_state)         # entries, then hard state
    if rd.must_sync: fsync
    send(rd.persisted_messages)
    apply(rd.committed_entries); serve(rd.read_states)
    if rd.compact_index: log.compact_through(rd.compact_index)
    node.advance(rd)

Snapshots taken by the application: after applying through index i, the host writes its state
machine image with metadata (i, term(i), voters) where the Storage's snapshot()/snapshot_chunk()
can read it, then calls node.compact(i); the next Ready's compact_index tells it when the log
prefix may go. A leader whose follower needs compacted entries reads that snapshot back through
Storage and streams it in chunks of snapshot_chunk_bytes.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from eventstream.raft.config import UNCOMMITTED_ROUNDS, RaftConfig
from eventstream.raft.log import RaftLog
from eventstream.raft.membership import (
    MEMBERSHIP_ENTRY_TAG,
    ChangeKind,
    Membership,
    MembershipChange,
    MembershipError,
    MembershipHistory,
    changed,
    decode_membership_entry,
    encode_membership_entry,
    is_membership_entry,
)
from eventstream.raft.messages import (
    NONE,
    Entry,
    HardState,
    Message,
    MessageType,
    ReadState,
    SnapshotChunk,
    SnapshotMeta,
)
from eventstream.raft.progress import Progress, ProgressState
from eventstream.raft.quorum import MajorityConfig, VoteResult
from eventstream.raft.read_only import ReadOnlyQueue
from eventstream.raft.storage import (
    CompactedError,
    SnapshotUnavailableError,
    Storage,
    UnavailableError,
)

MT = MessageType
TRANSFER_CONTEXT = b"transfer"


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class ProposalError(Exception):
    """A proposal or request the node cannot take now. Nothing was appended."""


class NotLeaderError(ProposalError):
    """Only the leader takes proposals; `leader` is the known leader's id, or NONE (0)."""

    def __init__(self, leader: int) -> None:
        hint = f"try node {leader}" if leader != NONE else "no leader is known"
        super().__init__(f"this node is not the leader ({hint})")
        self.leader = leader


class MalformedMessageError(ValueError):
    """A peer message that violates the protocol's shape (wrong recipient, entries that do not
    follow prevLogIndex). The transport should drop the connection that produced it."""


class EntryTooLargeError(ProposalError):
    pass


class MembershipChangeError(ProposalError):
    """A membership change the leader refuses now (one pending, a lagging learner, ...)."""


class UncommittedLimitError(ProposalError):
    """The leader's uncommitted tail is full: retry after commits catch up."""


class TransferInProgressError(ProposalError):
    """Leadership is being handed over; proposals wait for the new leader."""


@dataclass(slots=True)
class Ready:
    """Work for the host, produced by RaftNode.ready() and confirmed with advance().

    The host handles the fields in this order; each rule says why.

    messages: send now, even before the writes below are durable. Only a leader's messages land
        here (AppendEntries, heartbeats, snapshot chunks, TimeoutNow, ReadIndex answers): they
        depend on nothing in this Ready being durable (thesis §10.2.1 — the leader writes its log
        in parallel with replication; it counts itself toward commit only after advance()).
    snapshot_chunks: chunks of a snapshot the leader is streaming; stage them durably, in order
        (a chunk at offset 0 starts a new image). When `snapshot` is set, the last of them is
        its final chunk: no chunk of another snapshot follows it in the same Ready.
    snapshot: when set, the staged snapshot with this metadata is complete and accepted: restore
        the state machine from it and replace the whole log by it (entries up to snapshot.index
        are gone). Do this before appending `entries`, which follow it.
    entries: append to the durable log, first deleting any existing entries at or after
        entries[0].index (a conflicting suffix, §5.3).
    hard_state: when set, persist it (after the entries, so commit never points past the log).
    must_sync: whether the writes above must be synced (fdatasync) before persisted_messages go
        out. False when only the commit index changed: losing that in a crash is harmless.
    persisted_messages: send only after everything above is durable. Votes, vote requests and
        append acknowledgements promise durable state (Figure 2: "respond after updating stable
        storage").
    committed_entries: committed (§5.3), may be applied in order once the writes above are done.
        Entries with empty data are leader no-ops: skip them, but count their index as applied.
    read_states: reads confirmed by a quorum (ReadIndex): serve each once applied >= its index.
    dropped_reads: contexts of this node's pending reads that can no longer be confirmed here
        (leadership was lost); the host fails or retries them.
    compact_index: when non-zero, the host may drop log entries through this index (its snapshot
        covers them; requested with RaftNode.compact).
    """

    messages: list[Message] = field(default_factory=list)
    snapshot_chunks: list[SnapshotChunk] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    entries: list[Entry] = field(default_factory=list)
    hard_state: HardState | None = None
    must_sync: bool = False
    persisted_messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    dropped_reads: list[bytes] = field(default_factory=list)
    compact_index: int = 0


@dataclass(frozen=True, slots=True)
class Status:
    id: int
    role: Role
    term: int
    vote: int
    leader: int
    commit: int
    applied: int
    first_index: int
    last_index: int
    lead_transferee: int
    # For a leader: node id -> (state, match, next_index); empty otherwise.
    progress: dict[int, tuple[str, int, int]]
    # The membership in force, and the index of the entry that set it (0: the configured one).
    membership: Membership
    membership_index: int
    # Whether that entry is still uncommitted (a change is pending).
    membership_pending: bool


class RaftNode:
    """One member of a Raft group. See the module docstring for the host loop."""

    __slots__ = (
        "id",
        "config",
        "log",
        "rng",
        "term",
        "vote",
        "leader",
        "role",
        "voters",
        "memberships",
        "_removed_replicas",
        "progress",
        "votes",
        "election_elapsed",
        "heartbeat_elapsed",
        "randomized_election_timeout",
        "lead_transferee",
        "read_only",
        "pending_leader_reads",
        "uncommitted_bytes",
        "_uncommitted",
        "incoming_snapshot",
        "incoming_offset",
        "_messages",
        "_persisted_messages",
        "_chunks",
        "_read_states",
        "_dropped_reads",
        "_compact_index",
        "_prev_hard_state",
        "_ready_out",
        "_append_pending",
        "withholding_votes",
        "_catch_up_target",
        "_term_reports",
        "_early_appends",
        "_early_bytes",
    )

    def __init__(self, config: RaftConfig, storage: Storage, rng: random.Random) -> None:
        self.id = config.id
        self.config = config
        self.rng = rng
        hard_state, stored_membership = storage.initial_state()
        self.log = RaftLog(storage, hard_state.commit, config.applied)
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.leader = NONE
        self.role = Role.FOLLOWER
        self.memberships = self._stored_memberships(storage, stored_membership or Membership.of(config.voters))
        self.log.on_append = self._on_log_append
        self.voters = MajorityConfig(self.memberships.current.voters)
        self._removed_replicas = False
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_ticks
        self.lead_transferee = NONE
        self.read_only = ReadOnlyQueue()
        # ReadIndex requests that wait for the first commit of this leader's term (§8: until
        # then the leader does not know the latest commit index).
        self.pending_leader_reads: list[tuple[bytes, int]] = []
        self.uncommitted_bytes = 0
        self._uncommitted: deque[tuple[int, int]] = deque()
        # Follower side of a chunked InstallSnapshot in progress.
        self.incoming_snapshot: SnapshotMeta | None = None
        self.incoming_offset = 0
        self._messages: list[Message] = []
        self._persisted_messages: list[Message] = []
        self._chunks: list[SnapshotChunk] = []
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[bytes] = []
        self._compact_index = 0
        self._prev_hard_state = hard_state
        self._ready_out = False
        self._append_pending = False
        # RaftConfig.rejoining: no vote and no election until this node durably holds every
        # entry through _catch_up_target, a commit index a leader sent it and it reached.
        # A lone voter has no one to ask nor anything to learn: what it lost is gone.
        rejoining = config.rejoining and len(self.voters.voters) > 1
        self.withholding_votes = rejoining
        self._catch_up_target: int | None = None
        # Peers' answers to TERM_QUERY while a rejoining node learns the cluster's term; None
        # once it has (or when it is not rejoining).
        self._term_reports: dict[int, int] | None = {} if rejoining else None
        # Follower side: appends of the current leader that arrived before the entries they
        # follow (the network reordered the pipeline), by their prevLogIndex, with their bytes.
        self._early_appends: dict[int, tuple[Message, int]] = {}
        self._early_bytes = 0
        self._reset_election_timeout()

    # ------------------------------------------------------------------ public API

    def tick(self) -> None:
        """Advance the node's logical clock by one tick."""
        if self.role == Role.LEADER:
            self._tick_leader()
        elif self._term_reports is not None:
            self._tick_term_query()
        else:
            self.election_elapsed += 1
            if self.election_elapsed >= self.randomized_election_timeout and self._may_campaign():
                self.election_elapsed = 0
                self.campaign()  # refused while withholding votes

    def campaign(self) -> None:
        """Start an election now (with a pre-vote round first when pre_vote is on)."""
        if self.role == Role.LEADER or not self._may_campaign() or self.withholding_votes:
            return
        if self.log.pending_snapshot is not None:
            # Its log is being replaced; vote requests would describe a log it may not keep.
            return
        self._campaign(pre=self.config.pre_vote, transfer=False)

    def propose(self, data: bytes) -> int:
        """Append one entry with opaque `data` (leader only). Returns its index; the entry is
        the one proposed if the committed entry at that index has the term this node had when
        proposing (a leader change may replace it before it commits). Never blocks; raises a
        ProposalError subclass when the entry cannot be taken."""
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader)
        if self.lead_transferee != NONE:
            raise TransferInProgressError(
                f"leadership is moving to node {self.lead_transferee}; retry there"
            )
        size = len(data)
        if size and data[0] == MEMBERSHIP_ENTRY_TAG:
            raise ProposalError("membership entries are proposed with propose_membership")
        if size > self.config.max_entry_bytes:
            raise EntryTooLargeError(
                f"entry of {size} bytes exceeds max_entry_bytes={self.config.max_entry_bytes}"
            )
        limit = self.config.uncommitted_limit
        if self.uncommitted_bytes and self.uncommitted_bytes + size > limit:
            raise UncommittedLimitError(
                f"{self.uncommitted_bytes} uncommitted bytes; limit is {limit} (the lesser of "
                f"max_uncommitted_bytes and {UNCOMMITTED_ROUNDS} round trips of the pipeline)"
            )
        index = self._append_entry(data)
        # Replication of proposals waits for the next ready(), so that many proposals made
        # between two Readies travel in one AppendEntries per follower (batching, not
        # reacting per entry).
        self._append_pending = True
        return index

    def propose_membership(
        self, change: MembershipChange, context: bytes | None = None, force: bool = False
    ) -> int:
        """Append a membership entry making `change` (leader only): one node added as learner or
        voter, promoted, or removed. `context` replaces the host's attachment to the membership
        (None keeps it). Returns the entry's index; raises MembershipChangeError, appending
        nothing, for a change the cluster cannot take now (see eventstream/raft/membership.py).
        Without `force`, a change after which fewer than a majority of the voters are live (this
        leader, and nodes it heard from within the last election timeout) is refused too: the
        cluster would stop committing, this change included."""
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader)
        if self.lead_transferee != NONE:
            raise TransferInProgressError(
                f"leadership is moving to node {self.lead_transferee}; retry there"
            )
        self._check_membership_change_allowed()
        current = self.memberships.current
        try:
            after = changed(current, change, context)
        except MembershipError as e:
            raise MembershipChangeError(str(e)) from e
        if change.kind == ChangeKind.PROMOTE:
            lag = self.log.last_index() - self.progress[change.node].match
            if lag > self.config.max_promotion_lag:
                raise MembershipChangeError(
                    f"learner {change.node} is {lag} entries behind the leader; it is promoted "
                    f"once within max_promotion_lag={self.config.max_promotion_lag}"
                )
        if not force:
            live = [n for n in after.voters if n == self.id or (n in self.progress and self.progress[n].recent_active)]
            needed = len(after.voters) // 2 + 1
            if len(live) < needed:
                raise MembershipChangeError(
                    f"after this change {len(live)} of its {len(after.voters)} voters would be live "
                    f"({', '.join(map(str, live)) or 'none'}), short of a majority of {needed}; "
                    "force it to proceed"
                )
        data = encode_membership_entry(after)
        index = self._append_entry(data)
        self._append_pending = True
        return index

    def membership_at(self, index: int) -> Membership:
        """The membership in force at log index `index` (the host writes it with a snapshot it
        takes there). Raises MembershipError below the start of the log."""
        return self.memberships.at(index)

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read tagged `context` (thesis §6.4). The answer arrives as a
        ReadState in a later Ready; raises NotLeaderError when no leader is known."""
        if self.role == Role.LEADER:
            self._leader_read(context, self.id)
        elif self.leader != NONE:
            self._send(Message(MT.READ_INDEX, self.leader, self.id, self.term, context=context))
        else:
            raise NotLeaderError(NONE)

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to `target` (thesis §3.10): catch it up, then send TimeoutNow."""
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader)
        if target == self.id or target not in self.voters:
            raise ValueError(f"cannot transfer leadership to {target}: not another voter")
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        # The transfer must finish within one election timeout, or it is abandoned.
        self.election_elapsed = 0
        progress = self.progress[target]
        if progress.match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, target, self.id, self.term))
        else:
            self._send_append(target)

    def compact(self, index: int) -> None:
        """The host has durably saved a snapshot of its state machine through `index` (visible
        through Storage.snapshot()); the log through index may be discarded."""
        if index > self.log.applied:
            raise ValueError(f"cannot compact through {index}: only {self.log.applied} applied")
        if index < self.log.first_index() - 1:
            raise ValueError(f"index {index} is already compacted")
        self._compact_index = max(self._compact_index, index)
        self.memberships.compacted(index)

    def step(self, m: Message) -> None:
        """Handle a message from a peer. Raises MalformedMessageError, changing nothing, for a
        message that cannot have come from a correct peer."""
        if m.to != self.id:
            raise MalformedMessageError(f"message for node {m.to} delivered to node {self.id}")
        if m.entries:
            first, last = m.entries[0].index, m.entries[-1].index
            if first != m.index + 1 or last != m.index + len(m.entries):
                raise MalformedMessageError(
                    f"{m.type.name} from {m.sender}: entries {first}..{last} do not follow "
                    f"prevLogIndex {m.index} contiguously"
                )
            for entry in m.entries:
                if is_membership_entry(entry.data):
                    try:
                        decode_membership_entry(entry.data)
                    except MembershipError as e:
                        raise MalformedMessageError(
                            f"{m.type.name} from {m.sender}: entry {entry.index}: {e}"
                        ) from e
        if m.type == MT.TERM_QUERY:
            # A node still learning the cluster's term has nothing to report (reject set).
            asking = self._term_reports is not None
            self._send(Message(MT.TERM_QUERY_RESPONSE, m.sender, self.id, self.term, reject=asking))
            return
        if self._term_reports is not None:
            self._step_term_query(m)
            return
        if m.type == MT.TERM_QUERY_RESPONSE:
            return  # a late answer: the query is over
        if m.term > self.term:
            if m.type == MT.VOTE or m.type == MT.PRE_VOTE:
                in_lease = (
                    self.config.check_quorum
                    and self.leader != NONE
                    and self.election_elapsed < self.config.election_ticks
                )
                if in_lease and m.context != TRANSFER_CONTEXT:
                    # Thesis §4.2.3: a server that heard from a live leader within the minimum
                    # election timeout ignores vote requests, so a rejoining node cannot
                    # disrupt it.
                    return
            if m.type == MT.PRE_VOTE or (m.type == MT.PRE_VOTE_RESPONSE and not m.reject):
                # A pre-vote changes no term: it asks about term + 1 without claiming it.
                pass
            elif m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                self._become_follower(m.term, m.sender)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.config.check_quorum or self.config.pre_vote) and m.type in (
                MT.APPEND,
                MT.HEARTBEAT,
            ):
                # A stale leader (or a node that bumped its term while partitioned) must learn
                # the current term, or it would keep disrupting the cluster.
                self._reply(m, MT.APPEND_RESPONSE)
            elif m.type == MT.PRE_VOTE:
                self._reply(m, MT.PRE_VOTE_RESPONSE, reject=True)
            return

        if m.type == MT.VOTE or m.type == MT.PRE_VOTE:
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role == Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def has_ready(self) -> bool:
        return bool(
            self._append_pending
            or self._messages
            or self._persisted_messages
            or self._chunks
            or self._read_states
            or self._dropped_reads
            or self._compact_index
            or self.log.unstable
            or self.log.pending_snapshot is not None
            or self.log.has_committed_entries()
            or self._hard_state() != self._prev_hard_state
        )

    def ready(self) -> Ready:
        """Collect pending work. Call advance() with it before the next ready()."""
        if self._ready_out:
            raise RuntimeError("ready() called again before advance() of the previous Ready")
        self._ready_out = True
        if self._append_pending:
            self._append_pending = False
            if self.role == Role.LEADER:
                for peer in self.progress:
                    if peer != self.id:
                        self._send_append(peer, send_empty=False)
        log = self.log
        rd = Ready(
            messages=self._messages,
            persisted_messages=self._persisted_messages,
            snapshot_chunks=self._chunks,
            read_states=self._read_states,
            dropped_reads=self._dropped_reads,
            compact_index=self._compact_index,
        )
        self._messages = []
        self._persisted_messages = []
        self._chunks = []
        self._read_states = []
        self._dropped_reads = []
        self._compact_index = 0
        rd.snapshot = log.pending_snapshot
        rd.entries = list(log.unstable)
        if log.has_committed_entries():
            committed = log.next_committed_entries(self.config.max_apply_bytes)
            rd.committed_entries = list(committed)
            log.applying = committed[-1].index
        hard_state = self._hard_state()
        if hard_state != self._prev_hard_state:
            rd.hard_state = hard_state
        prev = self._prev_hard_state
        rd.must_sync = bool(
            rd.entries
            or rd.snapshot is not None
            or rd.snapshot_chunks
            or hard_state.term != prev.term
            or hard_state.vote != prev.vote
        )
        return rd

    def advance(self, rd: Ready, *, durable: bool = True) -> None:
        """The host has carried out `rd` (persisted, sent, applied).

        durable=False: the host wrote rd.entries but has not synced them yet, so that a leader's
        fdatasync overlaps the next cycles instead of holding them up (thesis §10.2.1 lets the
        leader write in parallel with replication). The leader then does not count itself
        toward commit for them until the host calls persisted(). Allowed only while leading,
        for a Ready with no snapshot and no persisted_messages (nothing in it promises durable
        state to anyone); the host must sync before it sends any later persisted_messages.
        """
        if not self._ready_out:
            raise RuntimeError("advance() without an outstanding ready()")
        if not durable and (self.role != Role.LEADER or rd.snapshot is not None or rd.persisted_messages):
            raise ValueError("advance(durable=False) is only for a leader's Ready without snapshot or persisted messages")
        self._ready_out = False
        log = self.log
        if rd.hard_state is not None:
            self._prev_hard_state = rd.hard_state
        if rd.snapshot is not None:
            log.stable_snapshot(rd.snapshot.index)
            log.applied_to(rd.snapshot.index)
        if rd.committed_entries:
            log.applied_to(rd.committed_entries[-1].index)
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
            # The leader's own write is now durable: only now does it count toward commit
            # (thesis §10.2.1).
            if (
                durable
                and self.role == Role.LEADER
                and self.progress[self.id].maybe_update(log.offset - 1)
                and self._maybe_commit()
            ):
                self._bcast_commit()
        if self._catch_up_target is not None and log.offset - 1 >= self._catch_up_target:
            self.withholding_votes = False
            self._catch_up_target = None

    def followers_form_quorum(self) -> bool:
        """Whether, on a leader, enough followers are replicating normally and were heard from
        within the last election timeout to commit new entries without the leader's own copy
        (a majority of the voters other than the leader; §5.3 counts any majority). The host
        may then let its own fdatasync lag (thesis 10.2.1): commit does not wait for it."""
        if self.role != Role.LEADER:
            return False
        healthy = 0
        for peer in self.voters.voters:
            if peer == self.id:
                continue
            pr = self.progress.get(peer)
            if pr is not None and pr.state == ProgressState.REPLICATE and pr.recent_active:
                healthy += 1
        return healthy >= self.voters.quorum

    def streaming_snapshot(self) -> bool:
        """Whether, on a leader, a snapshot is being streamed to some follower. A new snapshot
        of its own would make the stream start over with it (the follower must get the latest),
        so a host that snapshots often may hold its next one back meanwhile."""
        if self.role != Role.LEADER:
            return False
        return any(pr.state == ProgressState.SNAPSHOT for pr in self.progress.values())

    def commit_waits_on_leader(self) -> bool:
        """Whether, on a leader, its own copy of its written entries would move the commit
        index now: the followers' acknowledgements leave it one vote short. A host that lets
        its own fdatasync lag (followers_form_quorum) syncs at once when this holds."""
        if self.role != Role.LEADER:
            return False
        return self._commit_candidate(own_match=self.log.offset - 1) > 0  # every entry written

    def persisted(self, index: int, term: int) -> None:
        """The host's log is durable through entry (index, term), written under an earlier
        advance(durable=False). A leader now counts itself toward commit up to there. The report
        counts only if that entry is still in the log with that term: then, by the Log Matching
        property (§5.3), no entry up to it was replaced since the sync covered it."""
        if self.role != Role.LEADER or index <= self.progress[self.id].match:
            return
        if index >= self.log.offset or not self.log.match_term(index, term):
            return  # not written under advance() (still unstable), or replaced since
        if self.progress[self.id].maybe_update(index) and self._maybe_commit():
            self._bcast_commit()

    def status(self) -> Status:
        progress: dict[int, tuple[str, int, int]] = {}
        if self.role == Role.LEADER:
            progress = {
                node: (pr.state.name, pr.match, pr.next_index) for node, pr in self.progress.items()
            }
        return Status(
            id=self.id,
            role=self.role,
            term=self.term,
            vote=self.vote,
            leader=self.leader,
            commit=self.log.committed,
            applied=self.log.applied,
            first_index=self.log.first_index(),
            last_index=self.log.last_index(),
            lead_transferee=self.lead_transferee,
            progress=progress,
            membership=self.memberships.current,
            membership_index=self.memberships.latest_index,
            membership_pending=self.memberships.latest_index > self.log.committed,
        )

    def report_reconnected(self, peer: int) -> None:
        """The host re-established its link to `peer`, which may have restarted and lost the
        unsynced tail of its log (or, after disk damage, more). A leader forgets what it knew of
        that follower and probes it afresh from its own last index, exactly as a new leader
        does (§5.3): `match` is soft state, so lowering it can delay commit but never undo one.
        Without this, a follower whose log shrank below `match` would reject every probe at
        `match` forever."""
        if self.role != Role.LEADER or peer == self.id or peer not in self.progress:
            return
        pr = self.progress[peer]
        pr.match = 0
        pr.become_probe()
        pr.next_index = self.log.last_index() + 1
        self._send_append(peer)

    # ------------------------------------------------------------------ membership

    def _check_membership_change_allowed(self) -> None:
        log = self.log
        if log.term(log.committed) != self.term:
            # Thesis §4.1 (with its 2015 fix): a leader first commits an entry of its own term,
            # so that no change of a deposed leader can still be in flight beside its own.
            raise MembershipChangeError(
                "this leader has not yet committed an entry of its term; retry shortly"
            )
        pending = self.memberships.latest_index
        if pending > log.committed:
            raise MembershipChangeError(
                f"the membership change at index {pending} is not yet committed; one change at a time"
            )

    def _may_campaign(self) -> bool:
        """A voter may stand for election; so may a node whose removal is still uncommitted.
        Counting votes of the new voters is safe whoever the candidate is (any two majorities
        of memberships one voter apart overlap), and it may be needed: a leader that removed
        itself and went down holds the entry the remaining voters lack, so only it can win
        (they grant it their votes; it refuses theirs, its log being longer) and commit it."""
        if self.id in self.voters:
            return True
        history = self.memberships
        latest = history.latest_index
        return latest > self.log.committed and latest > history.base_index and self.id in history.at(latest - 1).voters

    @staticmethod
    def _stored_memberships(storage: Storage, initial: Membership) -> MembershipHistory:
        """The memberships along the durable log (after a restart): the latest snapshot's, then
        the membership entries after it. The snapshot's is the one known at its index even
        when the log keeps entries before it (only memberships from the snapshot on are ever
        asked for: nothing at or below a commit index is cut off)."""
        try:
            meta = storage.snapshot()
        except SnapshotUnavailableError:
            meta = None
        if meta is not None and meta.index >= storage.first_index() - 1:
            history = MembershipHistory(meta.index, Membership(meta.voters, meta.learners, meta.context))
        else:
            history = MembershipHistory(storage.first_index() - 1, initial)
        index, last = history.base_index + 1, storage.last_index()
        while index <= last:
            batch = storage.entries(index, last + 1, 64 << 20)
            history.appended(batch, batch[0].index)
            index = batch[-1].index + 1
        return history

    def _on_log_append(self, entries: Any, first: int) -> None:
        if self.memberships.appended(entries, first):
            self._membership_changed()

    def _membership_changed(self) -> None:
        """The membership in force changed (an entry appended, cut off, or a snapshot): quorums
        count the new voters at once, and a leader replicates to exactly the new members."""
        membership = self.memberships.current
        self.voters = MajorityConfig(membership.voters)
        if self.role != Role.LEADER:
            return
        if self.lead_transferee != NONE and self.lead_transferee not in membership.voters:
            self.lead_transferee = NONE
        self._track_replicas()

    def _replicas(self) -> set[int]:
        """Whom a leader replicates to: the members, and until a change commits, those it
        removes too, so a removed node learns of its removal (in force once appended) and does
        not go on campaigning, unaware."""
        history = self.memberships
        nodes = set(history.current.members)
        if history.latest_index > self.log.committed and history.latest_index > history.base_index:
            nodes.update(history.at(history.latest_index - 1).members)
        return nodes

    def _track_replicas(self) -> None:
        replicas = self._replicas()
        self._removed_replicas = not replicas.issubset(self.memberships.current.members)
        for node in list(self.progress):
            if node not in replicas and node != self.id:
                # A last append, so that a removed node learns its removal committed; until
                # then it may stand for election (_may_campaign).
                self._send_append(node)
                del self.progress[node]
        config = self.config
        for node in sorted(replicas):
            if node not in self.progress:
                # Probe from the leader's end, as a new leader does (§5.3).
                pr = Progress(self.log.last_index() + 1, config.max_inflight, config.max_inflight_bytes)
                pr.recent_active = True
                self.progress[node] = pr
                self._append_pending = True

    def _leave_if_removed(self) -> None:
        """A leader the committed membership no longer lists as a voter hands over to the most
        caught-up voter and then steps down (thesis §4.2.2): it must not lead a cluster whose
        majorities do not count it."""
        if self.role != Role.LEADER or self.id in self.voters:
            return
        if self.memberships.latest_index > self.log.committed:
            return  # it manages the cluster until its removal commits
        if self.lead_transferee == NONE:
            best = max(
                (node for node in self.voters.voters if node in self.progress),
                key=lambda node: (self.progress[node].match, -node),
                default=NONE,
            )
            if best != NONE:
                self.lead_transferee = best
                self.election_elapsed = 0
                if self.progress[best].match == self.log.last_index():
                    self._send(Message(MT.TIMEOUT_NOW, best, self.id, self.term))
                else:
                    self._send_append(best)

    def _maybe_auto_promote(self, node: int, pr: Progress) -> None:
        if (
            not self.config.auto_promote
            or node not in self.memberships.current.learners
            or self.log.last_index() - pr.match > self.config.max_promotion_lag
            or self.lead_transferee != NONE
        ):
            return
        try:
            self.propose_membership(MembershipChange(ChangeKind.PROMOTE, node))
        except ProposalError:
            pass  # another change is pending, or this term has not committed yet: next answer

    # ------------------------------------------------------------------ roles

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.leader = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_election_timeout()
        self.votes = {}
        self.lead_transferee = NONE
        self.uncommitted_bytes = 0
        self._uncommitted.clear()
        self._forget_early_appends()
        dropped = self.read_only.drain()
        self._dropped_reads.extend(r.context for r in dropped if r.requester == self.id)
        self._dropped_reads.extend(
            ctx for ctx, requester in self.pending_leader_reads if requester == self.id
        )
        self.pending_leader_reads = []

    def _reset_election_timeout(self) -> None:
        # §5.2: randomized in [election_ticks, 2 * election_ticks) so split votes are rare.
        ticks = self.config.election_ticks
        self.randomized_election_timeout = ticks + self.rng.randrange(ticks)

    def _become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._reset(self.term)
            self.role = Role.PRE_CANDIDATE
            vote_type = MT.PRE_VOTE
            term = self.term + 1
        else:
            self._reset(self.term + 1)
            self.role = Role.CANDIDATE
            self.vote = self.id
            vote_type = MT.VOTE
            term = self.term
        self.votes[self.id] = True
        if self.voters.vote_result(self.votes) == VoteResult.WON:
            # A single-voter group wins at once.
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self._become_leader()
            return
        last_index = self.log.last_index()
        last_term = self.log.term(last_index)
        context = TRANSFER_CONTEXT if transfer else b""
        for peer in self.voters.voters:
            if peer != self.id:
                self._send(
                    Message(
                        vote_type,
                        peer,
                        self.id,
                        term,
                        index=last_index,
                        log_term=last_term,
                        context=context,
                    )
                )

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        last_index = self.log.last_index()
        config = self.config
        self.progress = {}
        replicas = self._replicas()
        # An uncommitted removal it inherits: drop the removed node's progress once it commits.
        self._removed_replicas = not replicas.issubset(self.memberships.current.members)
        for peer in replicas:
            pr = Progress(last_index + 1, config.max_inflight, config.max_inflight_bytes)
            self.progress[peer] = pr
        # Only durable entries count toward commit for the leader itself.
        own = self.progress.setdefault(
            self.id, Progress(last_index + 1, config.max_inflight, config.max_inflight_bytes)
        )
        own.match = self.log.offset - 1 if self.log.pending_snapshot is None else 0
        own.become_replicate()
        own.next_index = last_index + 1
        # The uncommitted tail it inherits must commit through the same pipeline as new
        # proposals, so it counts against the same limit.
        for entry in self.log.entries(self.log.committed + 1, last_index + 1):
            if entry.data:
                self.uncommitted_bytes += len(entry.data)
                self._uncommitted.append((entry.index, len(entry.data)))
        # §8: a new leader commits a blank entry of its own term, which also commits every
        # earlier entry (Figure 8 forbids counting replicas of older terms directly).
        self._append_entry(b"")
        self._bcast_append()

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum:
                active = {node for node, pr in self.progress.items() if pr.recent_active}
                active.add(self.id)
                for node, pr in self.progress.items():
                    if node != self.id:
                        pr.recent_active = False
                if not self.voters.has_quorum(active):
                    # Thesis §6.2: a leader cut off from a majority steps down, so clients
                    # go looking for the real one.
                    self._become_follower(self.term, NONE)
                    return
            # An unfinished transfer is abandoned after an election timeout (thesis §3.10).
            self.lead_transferee = NONE
            if self.id not in self.voters and self.memberships.latest_index <= self.log.committed:
                # Removed, and the hand-over did not happen within a timeout: stop leading, so
                # that the voters elect one of their own.
                self._become_follower(self.term, NONE)
                return
        if self.role == Role.LEADER and self.config.lazy_commit:
            self._send_commit_updates()
        if self.role == Role.LEADER and self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    # ------------------------------------------------------------------ votes

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type == MT.PRE_VOTE
        response_type = MT.PRE_VOTE_RESPONSE if pre else MT.VOTE_RESPONSE
        # §5.2: at most one vote per term, first-come-first-served; a pre-vote for a future
        # term promises nothing.
        can_vote = not self.withholding_votes and (
            self.vote == m.sender
            or (self.vote == NONE and self.leader == NONE)
            or (pre and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # A granted pre-vote answers with the term asked about, so the pre-candidate
            # counts it; a real vote is for the current term.
            self._send(Message(response_type, m.sender, self.id, m.term))
            if not pre:
                self.election_elapsed = 0
                self.vote = m.sender
        else:
            self._send(Message(response_type, m.sender, self.id, self.term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t == MT.APPEND or t == MT.HEARTBEAT or t == MT.SNAPSHOT:
            # §5.2: a candidate that hears from a leader of its term returns to follower.
            self._become_follower(m.term, m.sender)
            self._step_follower(m)
            return
        expected = MT.PRE_VOTE_RESPONSE if self.role == Role.PRE_CANDIDATE else MT.VOTE_RESPONSE
        if t != expected:
            return
        self.votes.setdefault(m.sender, not m.reject)
        result = self.voters.vote_result(self.votes)
        if result == VoteResult.WON:
            if self.role == Role.PRE_CANDIDATE:
                self._campaign(pre=False, transfer=False)
            else:
                self._become_leader()
        elif result == VoteResult.LOST:
            self._become_follower(self.term, NONE)

    # ------------------------------------------------------------------ follower

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.APPEND:
            self.election_elapsed = 0
            self.leader = m.sender
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.leader = m.sender
            self.log.commit_to(min(m.commit, self.log.last_index()))
            self._reply(m, MT.HEARTBEAT_RESPONSE, read_seq=m.read_seq)
        elif t == MT.SNAPSHOT:
            self.election_elapsed = 0
            self.leader = m.sender
            self._handle_snapshot_chunk(m)
        elif t == MT.TIMEOUT_NOW:
            # Thesis §3.10: the leader handed over; skip pre-vote, the old leader agrees.
            if self.id in self.voters and self.log.pending_snapshot is None and not self.withholding_votes:
                self._campaign(pre=False, transfer=True)
        elif t == MT.READ_INDEX_RESPONSE:
            self._read_states.append(ReadState(m.index, m.context))
        elif t == MT.READ_INDEX and self.leader != NONE:
            # Forwarded to us while we thought we led; pass it on to the leader we know now.
            self._send(Message(MT.READ_INDEX, self.leader, m.sender, self.term, context=m.context))

    def _handle_append(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            # Everything through our commit index matches any leader's log (§5.4).
            self._note_catch_up(m)
            self._reply(m, MT.APPEND_RESPONSE, index=log.committed)
            return
        last_new = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._note_catch_up(m)
            self._reply(m, MT.APPEND_RESPONSE, index=last_new)
            if self._early_appends:
                held_last = self._take_early_appends(last_new)
                if held_last > last_new:
                    # One answer for the whole run the held appends completed.
                    self._reply(m, MT.APPEND_RESPONSE, index=held_last)
            return
        if m.index > log.last_index() and m.entries:
            self._hold_early_append(m)
        # Fast backtracking hint: the largest index at or below the leader's prevLogIndex whose
        # term is <= the leader's prevLogTerm; no entry after it can match.
        hint_index, hint_term = log.find_conflict_by_term(
            min(m.index, log.last_index()), m.log_term
        )
        self._reply(
            m,
            MT.APPEND_RESPONSE,
            index=m.index,
            reject=True,
            hint_index=hint_index,
            log_term=hint_term,
        )

    # A leader pipelines up to max_inflight appends to a follower; a network that reorders
    # them delivers some before the ones they follow. Each such append is rejected (so a leader
    # whose append was really lost learns of it), but the follower also keeps it: when the gap
    # fills, it takes the held appends that now follow on and acknowledges the whole run at once,
    # instead of the leader resending them one probe per round trip (docs/raft.md).

    def _hold_early_append(self, m: Message) -> None:
        size = sum(len(e.data) for e in m.entries)
        held = self._early_appends
        if m.term != self.term or m.index in held or size > self.config.max_inflight_bytes:
            return
        # When the room is taken, the appends nearest the log's end are worth most: the gap
        # before them fills first. Give up the farthest ones for a nearer one (the leader
        # resends whatever is dropped); else a far one held long ago would take the room of
        # every append after it, and a follower far behind would be rejected on each reorder.
        while held and (
            len(held) >= self.config.max_inflight
            or self._early_bytes + size > self.config.max_inflight_bytes
        ):
            farthest = max(held)
            if farthest < m.index:
                return
            self._early_bytes -= held.pop(farthest)[1]
        held[m.index] = (m, size)
        self._early_bytes += size

    def _take_early_appends(self, last: int) -> int:
        """Append the held appends that follow on from index `last`; returns the highest index
        now known to match the leader's log."""
        held = self._early_appends
        log = self.log
        while True:
            # Held appends whose prevLogIndex the log now reaches; one that does not match (or
            # that the log already covers) is dropped, as the leader will resend if need be.
            reached = sorted(index for index in held if index <= last)
            if not reached:
                return last
            for index in reached:
                m, size = held.pop(index)
                self._early_bytes -= size
                if index < log.committed:
                    continue
                new_last = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
                if new_last is not None and new_last > last:
                    last = new_last

    def _forget_early_appends(self) -> None:
        self._early_appends.clear()
        self._early_bytes = 0

    # ------------------------------------------------------------------ rejoining
    #
    # A node that lost its disk (RaftConfig.rejoining) forgot its term, its vote and the
    # entries it acknowledged. It rejoins in two steps:
    #
    # 1. It asks every peer for its term (TERM_QUERY) and waits until every peer answered,
    #    ignoring everything else but a higher term meanwhile, and takes the highest term
    #    answered. Any term this node voted or acknowledged in is at most the term of the node
    #    it voted for or acknowledged (terms never fall), so at most that highest answer: it
    #    will not acknowledge a deposed leader of an older term, and in that term itself it
    #    marks its vote as given (to itself, so to no candidate). A peer that is itself still
    #    asking answers with reject set: it forgot its term too (and can no longer win the
    #    election it may have stood in, so its term does not matter). Only a peer that is down
    #    holds the question up; the cluster keeps serving meanwhile if a majority is up.
    # 2. It grants no vote and starts no election until its commit index has reached that of a
    #    leader (of a term at least that high) at an entry of the leader's own term, and those
    #    entries are durable. A leader that committed an entry of its term holds and has
    #    committed every entry committed before its term (§5.4, §8), including any this node
    #    acknowledged before losing them; from then on its log is as good as any voter's.

    def _tick_term_query(self) -> None:
        """Ask again each election timeout until enough peers answered (the first tick asks)."""
        self.election_elapsed += 1
        if self.election_elapsed % self.config.election_ticks != 1:
            return
        assert self._term_reports is not None
        for peer in self.voters.voters:
            if peer != self.id and peer not in self._term_reports:
                self._send(Message(MT.TERM_QUERY, peer, self.id, self.term))

    def _step_term_query(self, m: Message) -> None:
        reports = self._term_reports
        assert reports is not None
        if m.term > self.term and m.type not in (MT.PRE_VOTE, MT.PRE_VOTE_RESPONSE):
            # Terms only grow (a pre-vote's names a term nobody holds yet); the message waits.
            self._become_follower(m.term, NONE)
        if m.type != MT.TERM_QUERY_RESPONSE or m.sender not in self.voters.voters or m.sender == self.id:
            return
        reports[m.sender] = -1 if m.reject else m.term
        if len(reports) < len(self.voters.voters) - 1:
            return
        self._term_reports = None
        self.election_elapsed = 0
        top = max(reports.values())
        if top > self.term:
            self._become_follower(top, NONE)
        if self.term == top and self.vote == NONE:
            self.vote = self.id  # it may have voted in this term before; now for no one

    def _note_catch_up(self, m: Message) -> None:
        """A leader's AppendEntries matched this log (step 2 above): this node's commit index
        reached the leader's, at an entry of the leader's term."""
        log = self.log
        if not self.withholding_votes or m.commit < 1 or log.committed < m.commit:
            return
        try:
            own_term = log.term(m.commit) == m.term
        except (CompactedError, UnavailableError):
            own_term = False
        if own_term:
            self._catch_up_target = max(self._catch_up_target or 0, m.commit)

    def _handle_snapshot_chunk(self, m: Message) -> None:
        log = self.log
        meta = SnapshotMeta(m.index, m.log_term, m.voters, m.learners, m.context)
        if m.index <= log.committed:
            # We already have everything it covers; tell the leader where we are.
            self.incoming_snapshot = None
            self._reply(m, MT.APPEND_RESPONSE, index=log.committed)
            return
        if log.pending_snapshot is not None:
            # A snapshot accepted since the last Ready still awaits its install. A chunk of
            # another one in the same Ready would reach the host after it, and a host staging by
            # offset would install the wrong image; the leader resends once this one is in.
            self._reply(m, MT.SNAPSHOT_RESPONSE, index=m.index, offset=0, reject=True)
            return
        if m.offset == 0:
            self.incoming_snapshot = meta
            self.incoming_offset = 0
        if self.incoming_snapshot != meta or m.offset != self.incoming_offset:
            expected = self.incoming_offset if self.incoming_snapshot == meta else 0
            self._reply(m, MT.SNAPSHOT_RESPONSE, index=m.index, offset=expected, reject=True)
            return
        self._chunks.append(SnapshotChunk(meta, m.offset, m.data, m.done))
        self.incoming_offset += len(m.data)
        if not m.done:
            self._reply(m, MT.SNAPSHOT_RESPONSE, index=m.index, offset=self.incoming_offset)
            return
        self.incoming_snapshot = None
        if log.match_term(meta.index, meta.term):
            # §7: "If existing log entry has same index and term as snapshot's last included
            # entry, retain log entries following it" — only the commit index moves.
            log.commit_to(meta.index)
        else:
            log.restore(meta)
            self.memberships.reset(meta.index, Membership(meta.voters, meta.learners, meta.context))
            self._membership_changed()
            self._forget_early_appends()
        self._reply(m, MT.APPEND_RESPONSE, index=log.last_index())

    # ------------------------------------------------------------------ leader

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.READ_INDEX:
            self._leader_read(m.context, m.sender)
            return
        pr = self.progress.get(m.sender)
        if pr is None:
            return
        pr.recent_active = True
        if t == MT.APPEND_RESPONSE:
            self._handle_append_response(m, pr)
        elif t == MT.HEARTBEAT_RESPONSE:
            if pr.state == ProgressState.SNAPSHOT:
                # The chunk in flight may have been lost: resend from the acknowledged offset.
                self._send_snapshot_chunk(m.sender, pr)
            else:
                pr.probe_sent = False
                if pr.inflights.full():
                    # Appends may have been lost; make room for one that exposes the gap.
                    pr.inflights.free_first()
                if pr.match < self.log.last_index():
                    self._send_append(m.sender)
            if m.read_seq:
                for read in self.read_only.ack(self.id, m.sender, m.read_seq, self.voters):
                    self._release_read(read.index, read.context, read.requester)
        elif t == MT.SNAPSHOT_RESPONSE:
            if pr.state != ProgressState.SNAPSHOT or m.index != pr.snapshot_index:
                return
            if m.reject or m.offset > pr.snapshot_offset:
                pr.snapshot_offset = m.offset
                self._send_snapshot_chunk(m.sender, pr)

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        to = m.sender
        if m.reject:
            next_probe = m.hint_index
            if m.log_term > 0:
                # Skip every entry of ours whose term is above the follower's term at the hint.
                next_probe, _ = self.log.find_conflict_by_term(m.hint_index, m.log_term)
            if pr.maybe_decrease_to(m.index, next_probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(to)
            return
        if m.index > self.log.last_index():
            # An answer about entries this leader does not hold: never one it sent in this term
            # (that needs a node whose unsynced tail was lost, wal_sync off, answering about a
            # log it wrote before). Taking it would set a match past the log and fail the
            # commit check; dropping it leaves the follower to the next probe.
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT:
            if pr.match + 1 >= self.log.first_index():
                pr.become_probe()
                pr.become_replicate()
        else:
            pr.inflights.free_through(m.index)
        if self._maybe_commit():
            self._bcast_commit()
        elif was_paused:
            self._send_append(to)
        # Pipelining: keep the window full while there is something to send.
        while self._send_append(to, send_empty=False):
            pass
        if to == self.lead_transferee and pr.match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, to, self.id, self.term))
        self._maybe_auto_promote(to, pr)

    def _commit_candidate(self, own_match: int | None = None) -> int:
        """The index the voters' matches commit past the current commit index, or 0. With
        own_match, the leader counts at that index instead of at its durable match."""
        matches = {n: pr.match for n, pr in self.progress.items()}
        if own_match is not None:
            matches[self.id] = own_match
        index = self.voters.committed_index(matches)
        return index if index > self.log.committed and self._may_commit_at(index) else 0

    def _maybe_commit(self) -> bool:
        index = self._commit_candidate()
        if index:
            self.log.commit_to(index)
            self._on_commit()
            return True
        return False

    def _may_commit_at(self, index: int) -> bool:
        # Figure 8 / §5.4.2: only an entry of the current term is committed by counting
        # replicas; earlier entries are committed indirectly with it.
        return self.log.term(index) == self.term

    def _on_commit(self) -> None:
        committed = self.log.committed
        pending = self._uncommitted
        while pending and pending[0][0] <= committed:
            self.uncommitted_bytes -= pending.popleft()[1]
        if self.pending_leader_reads:
            reads = self.pending_leader_reads
            self.pending_leader_reads = []
            for context, requester in reads:
                self._leader_read(context, requester)
        if self._removed_replicas and self.memberships.latest_index <= committed:
            self._track_replicas()  # the removal committed
        self._leave_if_removed()

    def _append_entry(self, data: bytes) -> int:
        index = self.log.last_index() + 1
        self.log.append([Entry(index, self.term, data)])
        own = self.progress[self.id]
        own.next_index = index + 1
        if data:
            self.uncommitted_bytes += len(data)
            self._uncommitted.append((index, len(data)))
        return index

    def _leader_read(self, context: bytes, requester: int) -> None:
        log = self.log
        if log.term(log.committed) != self.term:
            # §8: a fresh leader learns the commit index only once its no-op commits.
            self.pending_leader_reads.append((context, requester))
            return
        if self.voters.voters == (self.id,):
            # Alone, it is the quorum. (A leader outside the voters confirms with them.)
            self._release_read(log.committed, context, requester)
            return
        seq = self.read_only.add(log.committed, context, requester)
        self._bcast_heartbeat(seq)

    def _release_read(self, index: int, context: bytes, requester: int) -> None:
        if requester == self.id:
            self._read_states.append(ReadState(index, context))
        else:
            self._send(
                Message(
                    MT.READ_INDEX_RESPONSE,
                    requester,
                    self.id,
                    self.term,
                    index=index,
                    context=context,
                )
            )

    def _bcast_append(self) -> None:
        for peer in self.progress:
            if peer != self.id:
                self._send_append(peer)

    def _bcast_commit(self) -> None:
        """The commit index moved: tell the followers (RaftConfig.lazy_commit says when)."""
        if not self.config.lazy_commit:
            self._bcast_append()
            return
        for peer in self.progress:
            if peer != self.id:
                self._send_append(peer, send_empty=False)

    def _send_commit_updates(self) -> None:
        """lazy_commit: an AppendEntries, empty if need be, to each follower whose last one
        carried an older commit index."""
        committed = self.log.committed
        for peer, pr in self.progress.items():
            if peer != self.id and pr.commit_sent < committed:
                self._send_append(peer)

    def _bcast_heartbeat(self, read_seq: int = 0) -> None:
        if not read_seq:
            read_seq = self.read_only.last_seq if len(self.read_only) else 0
        committed = self.log.committed
        for peer, pr in self.progress.items():
            if peer != self.id:
                # A heartbeat skips the log-matching check, so it may only carry a commit
                # index the follower is known to match.
                self._send(
                    Message(
                        MT.HEARTBEAT,
                        peer,
                        self.id,
                        self.term,
                        commit=min(pr.match, committed),
                        read_seq=read_seq,
                    )
                )

    def _send_append(self, to: int, send_empty: bool = True) -> bool:
        """Send the follower what it needs next; returns whether a message went out."""
        pr = self.progress[to]
        if pr.is_paused():
            return False
        log = self.log
        prev_index = pr.next_index - 1
        entries: list[Entry] = []
        try:
            prev_term = log.term(prev_index)
            last = log.last_index()
            if pr.next_index <= last:
                entries = list(log.entries(pr.next_index, last + 1, self.config.max_append_bytes))
        except CompactedError:
            return self._start_snapshot(to, pr)
        if not entries and not send_empty:
            return False
        if entries:
            last_sent = entries[-1].index
            size = sum(len(e.data) for e in entries)
        else:
            last_sent = 0
            size = 0
        self._send(
            Message(
                MT.APPEND,
                to,
                self.id,
                self.term,
                index=prev_index,
                log_term=prev_term,
                entries=entries,
                commit=log.committed,
            )
        )
        pr.commit_sent = log.committed
        pr.sent_entries(last_sent, size)
        return True

    def _start_snapshot(self, to: int, pr: Progress) -> bool:
        # §7: the follower needs entries we discarded; send it our latest snapshot instead.
        if not pr.recent_active:
            return False
        try:
            meta = self.log.storage.snapshot()
        except SnapshotUnavailableError:
            return False
        pr.become_snapshot(meta)
        self._send_snapshot_chunk(to, pr)
        return True

    def _send_snapshot_chunk(self, to: int, pr: Progress) -> None:
        size = self.config.snapshot_chunk_bytes
        meta = pr.snapshot_meta
        assert meta is not None
        try:
            data = self.log.storage.snapshot_chunk(pr.snapshot_index, pr.snapshot_offset, size)
        except SnapshotUnavailableError:
            # Replaced by a newer snapshot: start over with that one on the next response.
            pr.become_probe()
            return
        self._send(
            Message(
                MT.SNAPSHOT,
                to,
                self.id,
                self.term,
                index=pr.snapshot_index,
                log_term=pr.snapshot_term,
                voters=meta.voters,
                learners=meta.learners,
                context=meta.context,
                offset=pr.snapshot_offset,
                data=data,
                done=len(data) < size,
            )
        )

    # ------------------------------------------------------------------ output

    def _reply(self, m: Message, type_: MessageType, **fields: Any) -> None:
        self._send(Message(type_, m.sender, self.id, self.term, **fields))

    def _send(self, m: Message) -> None:
        # A leader's messages never depend on its own unsynced writes (see Ready.messages);
        # everything else waits for this Ready's writes to be durable.
        if self.role == Role.LEADER:
            self._messages.append(m)
        else:
            self._persisted_messages.append(m)


__all__ = [
    "EntryTooLargeError",
    "MalformedMessageError",
    "MembershipChangeError",
    "NotLeaderError",
    "ProposalError",
    "RaftNode",
    "Ready",
    "Role",
    "Status",
    "TransferInProgressError",
    "UncommittedLimitError",
]
