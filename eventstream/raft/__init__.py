"""The Raft consensus core: a pure, deterministic state machine (no I/O, clock or threads).

Public API: RaftNode (node.py) driven by tick/step/propose/read_index and ready/advance; Ready's
field docstring is the host's ordering contract; Storage/MemoryStorage (storage.py) is the narrow
read interface the core uses.
"""

from eventstream.raft.config import ConfigError, RaftConfig
from eventstream.raft.membership import (
    ChangeKind,
    Membership,
    MembershipChange,
    MembershipError,
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
from eventstream.raft.node import (
    EntryTooLargeError,
    MalformedMessageError,
    MembershipChangeError,
    NotLeaderError,
    ProposalError,
    RaftNode,
    Ready,
    Role,
    Status,
    TransferInProgressError,
    UncommittedLimitError,
)
from eventstream.raft.storage import (
    CompactedError,
    MemoryStorage,
    SnapshotUnavailableError,
    Storage,
    StorageError,
    UnavailableError,
)

__all__ = [
    "NONE",
    "CompactedError",
    "ConfigError",
    "Entry",
    "EntryTooLargeError",
    "HardState",
    "MalformedMessageError",
    "Membership",
    "MembershipChange",
    "MembershipChangeError",
    "MembershipError",
    "ChangeKind",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NotLeaderError",
    "ProposalError",
    "RaftConfig",
    "RaftNode",
    "ReadState",
    "Ready",
    "Role",
    "SnapshotChunk",
    "SnapshotMeta",
    "SnapshotUnavailableError",
    "Status",
    "Storage",
    "StorageError",
    "TransferInProgressError",
    "UncommittedLimitError",
    "UnavailableError",
]
