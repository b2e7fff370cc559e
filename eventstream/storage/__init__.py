"""Durable storage: CRC-32C, the segmented Raft log, hard state and the event batch codec."""

from eventstream.storage._crc32c import crc32c
from eventstream.storage.errors import (
    CodecError,
    CompactedError,
    CorruptionError,
    StorageError,
    UnavailableError,
)
from eventstream.storage.hard_state import HardState
from eventstream.storage.segment_log import RecoveryCut, SegmentLog

__all__ = [
    "CodecError",
    "CompactedError",
    "CorruptionError",
    "HardState",
    "RecoveryCut",
    "SegmentLog",
    "StorageError",
    "UnavailableError",
    "crc32c",
]
