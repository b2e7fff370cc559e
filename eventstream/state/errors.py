"""Named errors of the state machine; each message says what was wrong and where."""

from __future__ import annotations


class StateError(Exception):
    """Base of the state machine's operating errors."""


class ApplyStoppedError(StateError):
    """A committed entry could not be applied (corruption or version mismatch).

    The message names the Raft index. The state machine refuses every later apply, because
    skipping an entry would let replicas diverge; an operator must restore from a snapshot.
    """


class OffsetRangeError(StateError, LookupError):
    """A read asked for an offset outside [retention floor, end] of a queue."""


class SnapshotError(StateError):
    """A snapshot is truncated, corrupt or inconsistent; the previous state is left unchanged."""
