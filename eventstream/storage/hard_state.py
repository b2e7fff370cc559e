"""Raft hard state: the term, vote and commit index that must survive a restart (Raft paper
Figure 2, "Persistent state on all servers"; commit is kept too so a restart need not replay
from zero).

File layout of `<dir>/hardstate` (little-endian, 36 bytes):
    0  8 bytes  magic b"ESCHARD1"
    8  u64      term
   16  u64      voted_for + 1 (0 = no vote in this term)
   24  u64      commit
   32  u32      CRC-32C of bytes 0..32
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from eventstream.storage.atomic_file import pack_checked, unpack_checked, write_atomically
from eventstream.storage.errors import StorageError

HARD_STATE_FILE = "hardstate"
_MAGIC = b"ESCHARD1"
_LAYOUT = struct.Struct("<QQQ")
_U64_MAX = 2**64 - 1


@dataclass(frozen=True)
class HardState:
    """Invariant: 0 <= term, 0 <= commit, voted_for is None or a node id >= 0."""

    term: int = 0
    voted_for: int | None = None
    commit: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.term <= _U64_MAX or not 0 <= self.commit <= _U64_MAX:
            raise StorageError(f"term and commit must be in [0, 2**64): {self}")
        if self.voted_for is not None and not 0 <= self.voted_for < _U64_MAX:
            raise StorageError(f"voted_for must be None or a node id in [0, 2**64 - 1): {self}")

    def save(self, directory: str) -> None:
        """Replaces the hard state in `directory` atomically and durably."""
        vote = 0 if self.voted_for is None else self.voted_for + 1
        data = pack_checked(_MAGIC, _LAYOUT, self.term, vote, self.commit)
        write_atomically(os.path.join(directory, HARD_STATE_FILE), data)

    @classmethod
    def load(cls, directory: str) -> HardState:
        """The saved hard state, or the initial one (term 0, no vote, commit 0) if none was saved.

        Raises CorruptionError when the file exists but fails its checks.
        """
        fields = unpack_checked(os.path.join(directory, HARD_STATE_FILE), _MAGIC, _LAYOUT)
        if fields is None:
            return cls()
        term, vote, commit = fields
        return cls(term, None if vote == 0 else vote - 1, commit)
