"""Quorum math over one voter configuration.

All majority arithmetic lives here, so joint consensus (§6: a decision needs a majority of the
old AND of the new configuration) can later be a class with the same three methods.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class VoteResult(enum.Enum):
    PENDING = 0
    WON = 1
    LOST = 2


class MajorityConfig:
    """A set of voters deciding by simple majority.

    Invariant: voters is non-empty and sorted, quorum = len(voters) // 2 + 1.
    """

    __slots__ = ("voters", "quorum")

    def __init__(self, voters: tuple[int, ...]) -> None:
        if not voters:
            raise ValueError("a configuration needs at least one voter")
        self.voters = tuple(sorted(voters))
        self.quorum = len(self.voters) // 2 + 1

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.voters

    def __repr__(self) -> str:
        return f"MajorityConfig({self.voters})"

    def committed_index(self, acked: Mapping[int, int]) -> int:
        """The largest index that a majority has acknowledged (a voter missing from `acked`
        counts as 0). Used for commit (§5.3) and for confirming ReadIndex rounds."""
        values = sorted((acked.get(v, 0) for v in self.voters), reverse=True)
        return values[self.quorum - 1]

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        """WON once a majority granted, LOST once a majority can no longer grant (§5.2)."""
        granted = 0
        rejected = 0
        for v in self.voters:
            answer = votes.get(v)
            if answer is True:
                granted += 1
            elif answer is False:
                rejected += 1
        if granted >= self.quorum:
            return VoteResult.WON
        if len(self.voters) - rejected < self.quorum:
            return VoteResult.LOST
        return VoteResult.PENDING

    def has_quorum(self, active: set[int]) -> bool:
        """Whether `active` contains a majority (check-quorum, thesis §6.2)."""
        return sum(1 for v in self.voters if v in active) >= self.quorum
