"""Cluster membership as replicated state (docs/raft.md, "Membership").

A membership is the set of voters (who elect and whose majority commits) and learners (who
receive the log but count in no quorum), plus an opaque `context` the host attaches (the
members' addresses, for the node): the core carries it along and never reads it.

A membership entry is a log entry whose data starts with MEMBERSHIP_ENTRY_TAG. A node uses
the latest membership entry in its log from the moment it is appended, committed or not
(Raft thesis §4.1), and falls back to the one before if that entry is cut off by a leader.

Changes go one node at a time (thesis §4.1: any two majorities of configurations that differ
by one voter overlap), and a leader takes one only after it has committed an entry of its own
term and when no earlier change is still uncommitted (thesis §4.1 and the fix to its single-
server algorithm, raft-dev 2015: without the first rule a new leader could commit a change
concurrent with an uncommitted one of a deposed leader, and two disjoint majorities form).

Entry body, integers little-endian:
    u8 tag (MEMBERSHIP_ENTRY_TAG)   u8 version (1)   u16 voters   u16 learners   u32 context_len
    u64 id * (voters + learners)    context bytes
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from typing import NamedTuple

# Shares the first-byte namespace of the state machine's commands (eventstream/state/commands.py),
# which treats it like a no-op: the state machine has nothing to do for a membership change.
MEMBERSHIP_ENTRY_TAG = 6
_VERSION = 1
_HEAD = struct.Struct("<BBHHI")
_ID = struct.Struct("<Q")
MAX_MEMBERS = 64


class MembershipError(ValueError):
    """A membership or membership change that cannot be taken; the message says why."""


class Membership(NamedTuple):
    """Who takes part. Invariant (validate): voters non-empty, ids positive, no id both a voter
    and a learner, both tuples sorted."""

    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()
    context: bytes = b""

    @classmethod
    def of(cls, voters: Iterable[int], learners: Iterable[int] = (), context: bytes = b"") -> Membership:
        membership = cls(tuple(sorted(voters)), tuple(sorted(learners)), bytes(context))
        membership.validate()
        return membership

    def validate(self) -> None:
        if not self.voters:
            raise MembershipError("a membership needs at least one voter")
        ids = self.voters + self.learners
        if any(node <= 0 for node in ids):
            raise MembershipError(f"member ids must be positive integers: {ids}")
        if len(set(ids)) != len(ids):
            raise MembershipError(f"a member is listed twice: voters {self.voters}, learners {self.learners}")
        if len(ids) > MAX_MEMBERS:
            raise MembershipError(f"{len(ids)} members; at most {MAX_MEMBERS}")

    @property
    def members(self) -> tuple[int, ...]:
        return self.voters + self.learners

    def role_of(self, node: int) -> str:
        if node in self.voters:
            return "voter"
        if node in self.learners:
            return "learner"
        return "none"


class ChangeKind(enum.Enum):
    ADD_LEARNER = "add-learner"
    ADD_VOTER = "add-voter"
    PROMOTE = "promote"
    REMOVE = "remove"


class MembershipChange(NamedTuple):
    kind: ChangeKind
    node: int


def changed(current: Membership, change: MembershipChange, context: bytes | None = None) -> Membership:
    """The membership after `change`, one node's part at a time. `context` replaces the host's
    attachment (None keeps it). Raises MembershipError for a change that does not apply."""
    node = change.node
    if node <= 0:
        raise MembershipError(f"member ids must be positive integers, got {node}")
    voters, learners = set(current.voters), set(current.learners)
    kind = change.kind
    if kind in (ChangeKind.ADD_LEARNER, ChangeKind.ADD_VOTER):
        if node in voters or node in learners:
            raise MembershipError(f"node {node} is already a {current.role_of(node)}")
        (learners if kind == ChangeKind.ADD_LEARNER else voters).add(node)
    elif kind == ChangeKind.PROMOTE:
        if node not in learners:
            raise MembershipError(f"node {node} is not a learner (it is: {current.role_of(node)})")
        learners.discard(node)
        voters.add(node)
    elif kind == ChangeKind.REMOVE:
        if node not in voters and node not in learners:
            raise MembershipError(f"node {node} is not a member")
        if voters == {node}:
            raise MembershipError(f"node {node} is the last voter; a cluster needs one")
        voters.discard(node)
        learners.discard(node)
    else:  # pragma: no cover - the enum is closed
        raise MembershipError(f"unknown change {kind!r}")
    return Membership.of(voters, learners, current.context if context is None else context)


def is_membership_entry(data: bytes | memoryview) -> bool:
    return len(data) > 0 and data[0] == MEMBERSHIP_ENTRY_TAG


def encode_membership_entry(membership: Membership) -> bytes:
    membership.validate()
    head = _HEAD.pack(MEMBERSHIP_ENTRY_TAG, _VERSION, len(membership.voters), len(membership.learners),
                      len(membership.context))
    ids = b"".join(_ID.pack(node) for node in membership.members)
    return head + ids + membership.context


def decode_membership_entry(data: bytes | memoryview) -> Membership:
    """The membership in an entry that is_membership_entry; MembershipError if it is malformed
    (a committed one that does not parse is damage or a newer version: never guessed at)."""
    view = memoryview(data)
    if len(view) < _HEAD.size:
        raise MembershipError(f"membership entry of {len(view)} bytes is shorter than its head")
    tag, version, n_voters, n_learners, context_len = _HEAD.unpack_from(view)
    if tag != MEMBERSHIP_ENTRY_TAG:
        raise MembershipError(f"entry tag {tag} is not a membership entry")
    if version != _VERSION:
        raise MembershipError(f"membership entry version {version} is unknown (this build reads {_VERSION})")
    expected = _HEAD.size + (n_voters + n_learners) * _ID.size + context_len
    if len(view) != expected:
        raise MembershipError(f"membership entry is {len(view)} bytes; its head says {expected}")
    ids = [_ID.unpack_from(view, _HEAD.size + i * _ID.size)[0] for i in range(n_voters + n_learners)]
    context = bytes(view[expected - context_len:])
    membership = Membership(tuple(ids[:n_voters]), tuple(ids[n_voters:]), context)
    if list(membership.voters) != sorted(membership.voters) or list(membership.learners) != sorted(membership.learners):
        raise MembershipError("membership entry lists its ids out of order")
    membership.validate()
    return membership


class MembershipHistory:
    """The memberships in force along one node's log: the one at `base_index` (its snapshot, or
    the configured one at 0) and one per membership entry after it, in index order. What a node
    uses now is the latest (thesis §4.1: in force once appended, committed or not)."""

    __slots__ = ("base_index", "base", "entries")

    def __init__(self, base_index: int, base: Membership) -> None:
        self.base_index = base_index
        self.base = base
        self.entries: list[tuple[int, Membership]] = []

    @property
    def current(self) -> Membership:
        return self.entries[-1][1] if self.entries else self.base

    @property
    def latest_index(self) -> int:
        """Index of the entry that set the current membership (base_index for the base)."""
        return self.entries[-1][0] if self.entries else self.base_index

    def at(self, index: int) -> Membership:
        """The membership in force at `index` (>= base_index)."""
        if index < self.base_index:
            raise MembershipError(f"membership at {index} is compacted (history starts at {self.base_index})")
        found = self.base
        for at, membership in self.entries:
            if at > index:
                break
            found = membership
        return found

    def appended(self, entries: Iterable[tuple[int, int, bytes | memoryview]], first: int) -> bool:
        """Entries from index `first` on replaced the log's tail: forget the memberships they cut
        off and take those they carry. Returns whether the current membership changed."""
        before = self.current
        history = self.entries
        while history and history[-1][0] >= first:
            history.pop()
        for index, _, data in entries:
            if is_membership_entry(data):
                history.append((index, decode_membership_entry(data)))
        return self.current != before

    def reset(self, index: int, membership: Membership) -> None:
        """The log was replaced by a snapshot through `index`."""
        self.base_index = index
        self.base = membership
        self.entries = []

    def compacted(self, index: int) -> None:
        """Entries through `index` are going: the history need not answer below it."""
        if index <= self.base_index:
            return
        self.base = self.at(index)
        self.base_index = index
        self.entries = [(at, membership) for at, membership in self.entries if at > index]


__all__ = [
    "MEMBERSHIP_ENTRY_TAG",
    "MembershipHistory",
    "ChangeKind",
    "Membership",
    "MembershipChange",
    "MembershipError",
    "changed",
    "decode_membership_entry",
    "encode_membership_entry",
    "is_membership_entry",
]
