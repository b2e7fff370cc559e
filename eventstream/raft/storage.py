"""The narrow read interface through which the core sees durable state, and an in-memory
implementation for tests and the simulator (docs/conventions.md §3).

The core only reads storage. The host writes it while processing a Ready (see node.Ready), so
everything a Storage returns is durable: entries, hard state, snapshot.

Mapping onto the durable log (storage engineer's SegmentLog):
    entries(lo, hi, max_bytes)  -> list(map(Entry._make, SegmentLog.entries(lo, hi, max_bytes)))
                                   (the core reads .index/.term/.data and needs len())
    term(i)                     -> SegmentLog.term(i), or the snapshot's term at its index
    first_index / last_index    -> SegmentLog.first_index / last_index (snapshot index + 1 / + 0
                                   when the log is empty)
    initial_state()             -> HardState file + membership of the latest snapshot (or None)
    snapshot() / snapshot_chunk -> the snapshot file's metadata and a byte range of its image
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from eventstream.raft.membership import Membership
from eventstream.raft.messages import EMPTY_HARD_STATE, Entry, HardState, SnapshotMeta


class StorageError(Exception):
    """Base of the errors a Storage raises to the core."""


class CompactedError(StorageError):
    """The requested index is below first_index - 1: compacted into a snapshot."""


class UnavailableError(StorageError):
    """The requested index is above last_index."""


class SnapshotUnavailableError(StorageError):
    """No snapshot can be read right now (none taken yet, or it was replaced mid-transfer).
    The core retries on the follower's next heartbeat response."""


class Storage(Protocol):
    """Read-only view of durable Raft state.

    Invariant: first_index() - 1 is the index of the latest snapshot (0 if none), and
    term(first_index() - 1) returns that snapshot's term.
    """

    def initial_state(self) -> tuple[HardState, Membership | None]:
        """The persisted hard state, and the membership at first_index() - 1 (that of the
        snapshot; None: use the configured voters). The core follows the membership entries
        of the log after it by itself."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> Sequence[Entry]:
        """Entries [lo, hi). With max_bytes, stop before the entry that would exceed it, but
        always return at least one entry. Raises CompactedError / UnavailableError."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at index, for first_index()-1 <= index <= last_index()."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> SnapshotMeta:
        """Metadata of the latest snapshot. Raises SnapshotUnavailableError if there is none."""
        ...

    def snapshot_chunk(self, index: int, offset: int, max_bytes: int) -> bytes:
        """Bytes [offset, offset + max_bytes) of the image of the snapshot at `index`; shorter
        only at the end of the image (so a short or empty chunk is the last one). Raises
        SnapshotUnavailableError if that snapshot is no longer the latest."""
        ...


def limit_size(entries: Sequence[Entry], max_bytes: int | None) -> Sequence[Entry]:
    """The longest prefix of `entries` whose data fits in max_bytes, and at least one entry."""
    if max_bytes is None or not entries:
        return entries
    total = 0
    for count, entry in enumerate(entries):
        total += len(entry.data)
        if total > max_bytes:
            return entries[: max(count, 1)]
    return entries


class MemoryStorage:
    """Storage held in memory, with the write operations a host performs on a Ready.

    Invariant: self._entries[0] is a sentinel carrying the snapshot's (index, term); real entries
    follow with consecutive indexes.
    """

    __slots__ = ("_entries", "hard_state", "membership", "_snapshot_meta", "_snapshot_data")

    def __init__(self, voters: tuple[int, ...] = ()) -> None:
        self._entries: list[Entry] = [Entry(0, 0, b"")]
        self.hard_state = EMPTY_HARD_STATE
        self.membership = Membership.of(voters) if voters else None
        self._snapshot_meta: SnapshotMeta | None = None
        self._snapshot_data = b""

    # --- the read interface ---------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, Membership | None]:
        return self.hard_state, self.membership

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise CompactedError(f"index {index} is compacted (first index {offset + 1})")
        if index - offset >= len(self._entries):
            raise UnavailableError(f"index {index} is beyond last index {self.last_index()}")
        return self._entries[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> Sequence[Entry]:
        offset = self._entries[0].index
        if lo <= offset:
            raise CompactedError(f"index {lo} is compacted (first index {offset + 1})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} is beyond last index {self.last_index()}")
        return limit_size(self._entries[lo - offset : hi - offset], max_bytes)

    def snapshot(self) -> SnapshotMeta:
        if self._snapshot_meta is None:
            raise SnapshotUnavailableError("no snapshot has been taken")
        return self._snapshot_meta

    def snapshot_chunk(self, index: int, offset: int, max_bytes: int) -> bytes:
        if self._snapshot_meta is None or self._snapshot_meta.index != index:
            raise SnapshotUnavailableError(f"snapshot at index {index} is no longer available")
        return self._snapshot_data[offset : offset + max_bytes]

    # --- writes the host performs ---------------------------------------------------------------

    def snapshot_data(self) -> bytes:
        return self._snapshot_data

    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries, first deleting any suffix they replace (§5.3)."""
        if not entries:
            return
        offset = self._entries[0].index
        first = entries[0].index
        if first <= offset:
            raise CompactedError(f"cannot append at index {first}: compacted through {offset}")
        if first > self.last_index() + 1:
            raise UnavailableError(
                f"append at index {first} would leave a gap after last index {self.last_index()}"
            )
        del self._entries[first - offset :]
        self._entries.extend(entries)

    def lose_from(self, index: int) -> None:
        """Drop entries from `index` on (never the snapshot): a crash losing writes that were
        never synced. Test hosts model torn durability with it."""
        offset = self._entries[0].index
        del self._entries[max(index, offset + 1) - offset :]

    def apply_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Replace the whole log by a snapshot received from the leader (§7)."""
        if self._snapshot_meta is not None and meta.index < self._snapshot_meta.index:
            raise ValueError(
                f"snapshot at {meta.index} is older than the current one at "
                f"{self._snapshot_meta.index}"
            )
        self._snapshot_meta = meta
        self._snapshot_data = bytes(data)
        self.membership = Membership(meta.voters, meta.learners, meta.context)
        self._entries = [Entry(meta.index, meta.term, b"")]
        if self.hard_state.commit < meta.index:
            self.hard_state = self.hard_state._replace(commit=meta.index)

    def create_snapshot(self, index: int, data: bytes, membership: Membership) -> SnapshotMeta:
        """Record a snapshot the host took of its state machine at `index` (which it applied),
        with the membership in force there (RaftNode.membership_at)."""
        if self._snapshot_meta is not None and index <= self._snapshot_meta.index:
            raise ValueError(f"snapshot at {index} is not newer than {self._snapshot_meta.index}")
        meta = SnapshotMeta(index, self.term(index), membership.voters, membership.learners,
                            membership.context)
        self._snapshot_meta = meta
        self._snapshot_data = bytes(data)
        return meta

    def compact(self, index: int) -> None:
        """Discard entries up to and including index, which a snapshot must cover."""
        offset = self._entries[0].index
        if index <= offset:
            return
        if self._snapshot_meta is None or index > self._snapshot_meta.index:
            raise ValueError(f"cannot compact through {index}: no snapshot covers it")
        if index > self.last_index():
            raise UnavailableError(f"compact through {index} beyond last index {self.last_index()}")
        term = self._entries[index - offset].term
        self._entries = [Entry(index, term, b""), *self._entries[index - offset + 1 :]]
