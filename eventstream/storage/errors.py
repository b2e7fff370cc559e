"""Named errors of the storage layer. Each message names the file and byte offset it is about."""

from __future__ import annotations


class StorageError(Exception):
    """An operating error of the durable log or hard state (bad argument, I/O failure...)."""


class CorruptionError(StorageError):
    """Bytes on disk fail their checks where a torn write cannot explain them; never guessed around."""


class CompactedError(StorageError):
    """The requested index is below the first index: it was dropped after a snapshot."""


class UnavailableError(StorageError):
    """The requested index is above the last index: it was never written or was truncated."""


class CodecError(ValueError):
    """An event batch that cannot be encoded (bad field, limit exceeded) or decoded (malformed)."""
