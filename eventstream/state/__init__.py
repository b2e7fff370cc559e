"""The EventStreamCore state machine: queues, exactly-once dedup, replicated config, snapshots.

See eventstream/state/machine.py for the contract with the node and commands.py for the bytes of
each command.
"""

from eventstream.state._state import (
    STATUS_BAD_QUEUE,
    STATUS_DEDUP_FULL,
    STATUS_DUPLICATE,
    STATUS_STORED,
)
from eventstream.state.commands import (
    EVENT_COMMANDS,
    CommandType,
    dedup_cutoffs_us,
    encode_config_update,
    encode_dedup_add,
    encode_dedup_expire,
    encode_set_event,
    encode_set_event_at,
    encode_set_event_batch,
)
from eventstream.state.config import ConfigError, validate_config
from eventstream.state.errors import ApplyStoppedError, OffsetRangeError, SnapshotError, StateError
from eventstream.state.machine import ApplyResult, StateMachine
from eventstream.state.queues import StoredEvent
from eventstream.state.snapshot_stream import SnapshotReceiver

__all__ = [
    "EVENT_COMMANDS",
    "STATUS_BAD_QUEUE",
    "STATUS_DEDUP_FULL",
    "STATUS_DUPLICATE",
    "STATUS_STORED",
    "ApplyResult",
    "ApplyStoppedError",
    "CommandType",
    "ConfigError",
    "OffsetRangeError",
    "SnapshotError",
    "SnapshotReceiver",
    "StateError",
    "StateMachine",
    "StoredEvent",
    "dedup_cutoffs_us",
    "encode_config_update",
    "encode_dedup_add",
    "encode_dedup_expire",
    "encode_set_event",
    "encode_set_event_at",
    "encode_set_event_batch",
    "validate_config",
]
