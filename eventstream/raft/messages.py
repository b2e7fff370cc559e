"""Records the consensus core exchanges with its host: log entries, hard state, snapshot metadata
and the one Message type that travels between peers.

Every field is a plain int, bool or bytes (or a list of entries / tuple of ids) so the transport can
encode a message compactly without knowing the core.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

# Node ids are positive; NONE means "no node" (no vote cast, no known leader).
NONE = 0


class Entry(NamedTuple):
    """One log entry. `data` is opaque (a codec batch) and may be a memoryview over storage:
    the core never copies or inspects it. Empty data is a leader's no-op (§8: a new leader
    commits an entry of its own term at the start of its term); the state machine skips it.

    A NamedTuple so that storage can hand back its own (index, term, payload) tuples unchanged.
    """

    # The name shadows tuple.index(); the field is what every Raft text calls it.
    index: int  # type: ignore[assignment]
    term: int
    data: bytes


class HardState(NamedTuple):
    """The state that must survive a crash (Raft paper Figure 2, "persistent state on all
    servers"), plus the commit index, which lets a restarted node apply without waiting."""

    term: int
    vote: int
    commit: int


EMPTY_HARD_STATE = HardState(0, NONE, 0)


class SnapshotMeta(NamedTuple):
    """What a snapshot covers: every entry up to and including `index`, which had `term`;
    voters, learners and context are the membership in force at that point (§7,
    eventstream/raft/membership.py)."""

    index: int  # type: ignore[assignment]
    term: int
    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()
    context: bytes = b""


class SnapshotChunk(NamedTuple):
    """One piece of a snapshot received from the leader (§7, Figure 13 InstallSnapshot).
    The host appends chunks to a staging area in `offset` order; `done` marks the last one."""

    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


class ReadState(NamedTuple):
    """A linearizable read confirmed by a quorum (Raft thesis §6.4): the host may serve the read
    tagged `context` once it has applied at least `index`."""

    index: int  # type: ignore[assignment]
    context: bytes


class MessageType(enum.IntEnum):
    APPEND = 1  # AppendEntries request (also carries commit index)
    APPEND_RESPONSE = 2
    VOTE = 3  # RequestVote
    VOTE_RESPONSE = 4
    PRE_VOTE = 5  # Raft thesis §9.6: ask before disrupting the cluster with a term bump
    PRE_VOTE_RESPONSE = 6
    HEARTBEAT = 7
    HEARTBEAT_RESPONSE = 8
    SNAPSHOT = 9  # one InstallSnapshot chunk
    SNAPSHOT_RESPONSE = 10
    READ_INDEX = 11  # a follower forwards a read to the leader
    READ_INDEX_RESPONSE = 12
    TIMEOUT_NOW = 13  # leadership transfer (thesis §3.10): start an election right away
    # A node that lost its disk asks its peers' terms before it takes part (RaftConfig.rejoining).
    TERM_QUERY = 14
    TERM_QUERY_RESPONSE = 15


@dataclass(slots=True)
class Message:
    """A message between peers. Which fields matter depends on `type`:

    APPEND: index/log_term = prevLogIndex/prevLogTerm, entries, commit.
    APPEND_RESPONSE: index = last index matched (success) or the rejected prevLogIndex;
        on reject, hint_index/log_term are the follower's fast-backtracking hint.
    VOTE, PRE_VOTE: index/log_term = candidate's last log index/term; context=b"transfer" when the
        election comes from a leadership transfer (it may then disturb a live leader's lease).
    *_RESPONSE to votes: reject.
    HEARTBEAT: commit (bounded by the follower's match), read_seq.  HEARTBEAT_RESPONSE: read_seq.
    SNAPSHOT: index/log_term = snapshot index/term, voters, learners, context (the snapshot's
        membership), offset, data, done.
    SNAPSHOT_RESPONSE: index = snapshot index, offset = next offset expected, reject.
    READ_INDEX: context.  READ_INDEX_RESPONSE: index, context.
    TERM_QUERY: nothing.  TERM_QUERY_RESPONSE: term (the answering node's).
    """

    type: MessageType
    to: int
    sender: int
    term: int
    index: int = 0
    log_term: int = 0
    commit: int = 0
    entries: list[Entry] = field(default_factory=list)
    reject: bool = False
    hint_index: int = 0
    read_seq: int = 0
    context: bytes = b""
    offset: int = 0
    data: bytes = b""
    done: bool = False
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
