"""Errors a client of the cluster sees. Each names what happened and what the caller may do."""

from __future__ import annotations


class EscError(Exception):
    """Base of every error the client library raises."""


class NotLeader(EscError):
    """The node asked is not the leader. leader_id/leader_address name the leader when known."""

    def __init__(self, message: str, leader_id: int = 0, leader_address: str | None = None) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address


class Timeout(EscError):
    """No answer within the deadline; the operation may or may not have taken effect.

    An append retried with the same event ids is applied at most once, so retrying is safe.
    """


class Unavailable(EscError):
    """The cluster cannot serve the request now: no leader, or the leader has lost its quorum."""


class InvalidArgument(EscError):
    """The request is malformed or a value is out of its allowed range; retrying will not help."""


class OutOfRange(InvalidArgument):
    """A read offset outside the queue's valid range; the message states the range."""


class Overloaded(EscError):
    """The leader's proposal queue is full; back off and retry."""


class Refused(EscError):
    """The cluster cannot take this change as it stands now (another membership change is
    pending, the learner lags, too few voters would be live); nothing changed. The message
    says why and what to do."""


class Unauthenticated(EscError):
    """The cluster requires a token and this client presented none, or one it does not know
    (revoked, mistyped). Give `token=` (CLI: --token or ESC_TOKEN)."""


class PermissionDenied(EscError):
    """The token is valid but does not allow this operation, or this queue."""
