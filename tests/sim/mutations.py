"""Deliberately broken variants of RaftNode, each breaking one rule, for the mutation check of
the simulator's checker: if the simulator cannot catch these, its green runs mean nothing."""

from __future__ import annotations

from eventstream.node.ready import ReadyExecutor
from eventstream.raft import Message, MessageType, RaftNode, Ready, Role
from eventstream.raft.log import RaftLog
from eventstream.raft.node import MembershipChangeError


class OldTermCommit(RaftNode):
    """Breaks Figure 8 / §5.4.2: commits an entry of an earlier term by counting replicas."""

    __slots__ = ()

    def _may_commit_at(self, index: int) -> bool:
        return True


class _AnyLogIsUpToDate(RaftLog):
    __slots__ = ()

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        return True


class VoteIgnoresLog(RaftNode):
    """Breaks §5.4.1: grants votes without comparing logs."""

    __slots__ = ()

    def _handle_vote_request(self, m: Message) -> None:
        self.log.__class__ = _AnyLogIsUpToDate
        try:
            super()._handle_vote_request(m)
        finally:
            self.log.__class__ = RaftLog


class VoteTwice(RaftNode):
    """Breaks §5.2: forgets its vote, so it may vote for two candidates in one term."""

    __slots__ = ()

    def _handle_vote_request(self, m: Message) -> None:
        if m.type == MessageType.VOTE and m.term == self.term:
            self.vote = 0
            self.leader = 0
        super()._handle_vote_request(m)


class RejoinVotes(RaftNode):
    """Breaks RaftConfig.rejoining: a node that lost its disk votes at once, for logs that may
    lack what it acknowledged before."""

    __slots__ = ()

    def _handle_vote_request(self, m: Message) -> None:
        self.withholding_votes = False
        super()._handle_vote_request(m)


class TwoChangesInFlight(RaftNode):
    """Breaks the one-change-at-a-time rule: a leader takes a membership change while another
    is still uncommitted."""

    __slots__ = ()

    def _check_membership_change_allowed(self) -> None:
        if self.log.term(self.log.committed) != self.term:
            raise MembershipChangeError("this leader has not yet committed an entry of its term")


class ChangeBeforeTermCommit(RaftNode):
    """Breaks the fix to single-server changes: a new leader takes a membership change before
    it has committed an entry of its own term."""

    __slots__ = ()

    def _check_membership_change_allowed(self) -> None:
        pending = self.memberships.latest_index
        if pending > self.log.committed:
            super()._check_membership_change_allowed()  # still one at a time


class AbandonsLaggards(RaftNode):
    """Breaks catch-up: a leader sends no entries to a follower more than 8 behind, which then
    never catches up, its applied index still: the stall the liveness check must tell from a
    slow but steady catch-up."""

    __slots__ = ()

    def _send_append(self, to: int, send_empty: bool = True) -> bool:
        if self.log.last_index() - self.progress[to].match > 8:
            return False
        return super()._send_append(to, send_empty)


MUTATIONS: dict[str, type[RaftNode]] = {
    "old-term-commit": OldTermCommit,
    "vote-ignores-log": VoteIgnoresLog,
    "vote-twice": VoteTwice,
    "rejoin-votes": RejoinVotes,
    "two-changes-in-flight": TwoChangesInFlight,
    "change-before-term-commit": ChangeBeforeTermCommit,
    "abandons-laggards": AbandonsLaggards,
}


class AckBeforeSync(ReadyExecutor):
    """Breaks the sync rule (ReadyExecutor.make_durable) on followers: their entries stay
    unsynced while their acknowledgements go out, so a crash takes back entries a leader
    counted toward commit. Only on the seeds that defer syncs, whose crash model has a window
    between a write and its sync."""

    __slots__ = ()

    def make_durable(self, rd: Ready, defer: bool) -> bool:
        if self.defer_leader_sync and rd.entries and self.core.role != Role.LEADER:
            return True  # the entries stay unsynced until the host's next sync
        return super().make_durable(rd, defer)


# Mutations of the node's Ready executor, which the simulator runs as the node does.
EXECUTOR_MUTATIONS: dict[str, type[ReadyExecutor]] = {
    "ack-before-sync": AckBeforeSync,
}
