"""The node's view of its log: what storage holds durably plus an unstable tail (and possibly a
snapshot) that the host has been asked to persist but has not yet confirmed.

    storage: [first_index .. stable_last]     unstable: [offset .. last_index]

Invariant: offset == (index of the last durable-or-superseded entry) + 1, committed <= last_index,
applied <= committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from eventstream.raft.messages import Entry, SnapshotMeta
from eventstream.raft.storage import CompactedError, Storage, UnavailableError, limit_size


class RaftLog:
    __slots__ = (
        "storage",
        "unstable",
        "offset",
        "pending_snapshot",
        "committed",
        "applied",
        "applying",
        "on_append",
    )

    def __init__(self, storage: Storage, committed: int, applied: int) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable: list[Entry] = []
        self.offset = last + 1
        # A snapshot received from the leader that the host has not yet installed.
        self.pending_snapshot: SnapshotMeta | None = None
        if committed > last:
            raise ValueError(f"hard state commit {committed} is beyond the last index {last}")
        if applied > last:
            raise ValueError(f"applied index {applied} is beyond the last index {last}")
        # Whatever the host applied was committed, even if a commit index written without sync
        # was lost in a crash.
        self.committed = max(committed, first - 1, applied)
        # A host that persisted its state machine may start with applied above the snapshot.
        self.applied = max(applied, first - 1)
        # Highest index handed to the host in a Ready's committed_entries.
        self.applying = self.applied
        # Called with (entries, first index) after every append, so the node can follow the
        # membership entries in its log as they arrive and as a leader cuts them off.
        self.on_append: Callable[[Sequence[Entry], int], None] | None = None

    # --- reading ------------------------------------------------------------------------------

    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.offset + len(self.unstable) - 1
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index
        return self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Term at index; raises CompactedError below first_index - 1, UnavailableError above
        last_index."""
        if index >= self.offset:
            position = index - self.offset
            if position < len(self.unstable):
                return self.unstable[position].term
            raise UnavailableError(f"index {index} is beyond last index {self.last_index()}")
        snapshot = self.pending_snapshot
        if snapshot is not None:
            if index == snapshot.index:
                return snapshot.term
            raise CompactedError(f"index {index} is covered by the pending snapshot")
        return self.storage.term(index)

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> Sequence[Entry]:
        """Entries [lo, hi) from storage and the unstable tail."""
        if lo < self.first_index():
            raise CompactedError(f"index {lo} is compacted (first index {self.first_index()})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} is beyond last index {self.last_index()}")
        if lo >= hi:
            return []
        offset = self.offset
        if lo >= offset:
            return limit_size(self.unstable[lo - offset : hi - offset], max_bytes)
        stored = self.storage.entries(lo, min(hi, offset), max_bytes)
        if hi <= offset or len(stored) < min(hi, offset) - lo:
            return stored
        more: Sequence[Entry] = self.unstable[: hi - offset]
        if max_bytes is not None:
            room = max_bytes - sum(len(e.data) for e in stored)
            if room <= 0:
                return stored
            more = limit_size(more, room)
            if more and len(more[0].data) > room:
                return stored
        return [*stored, *more]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a candidate's log is at least as up-to-date as ours if its last term is
        higher, or equal with a last index at least as large."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest (i, term(i)) with i <= index and term(i) <= term. Entries above it cannot
        match a log whose entry at `index` has `term` (terms only grow along a log), which lets
        a rejection skip whole terms (§5.3, "the leader can decrement nextIndex to bypass all of
        the conflicting entries in that term")."""
        while index > 0:
            try:
                current = self.term(index)
            except CompactedError:
                return index, 0
            if current <= term:
                return index, current
            index -= 1
        return 0, 0

    def next_committed_entries(self, max_bytes: int | None = None) -> Sequence[Entry]:
        if self.applying >= self.committed:
            return []
        return self.entries(self.applying + 1, self.committed + 1, max_bytes)

    def has_committed_entries(self) -> bool:
        return self.applying < self.committed and self.pending_snapshot is None

    # --- writing ------------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> int:
        """Append entries to the unstable tail, replacing any conflicting suffix."""
        first = entries[0].index
        if first - 1 < self.committed:
            # §5.4: committed entries are never overwritten; reaching here is a safety bug.
            raise AssertionError(
                f"append at {first} would overwrite committed entries (commit {self.committed})"
            )
        offset = self.offset
        if first == offset + len(self.unstable):
            self.unstable.extend(entries)
        elif first <= offset:
            # Replaces part of the durable log too: the host truncates it when persisting.
            self.offset = first
            self.unstable = list(entries)
        else:
            del self.unstable[first - offset :]
            self.unstable.extend(entries)
        if self.on_append is not None:
            self.on_append(entries, first)
        return self.last_index()

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]
    ) -> int | None:
        """AppendEntries receiver rules 2-5 (Figure 2). Returns the last new index, or None on
        a log mismatch at prev_index."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        if entries:
            conflict = self._find_conflict(entries)
            if conflict:
                self.append(entries[conflict - entries[0].index :])
        self.commit_to(min(commit, last_new))
        return last_new

    def _find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or conflicts with ours; 0 if all are present."""
        last = self.last_index()
        if entries[0].index > last:
            return entries[0].index
        for entry in entries:
            if entry.index > last or not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(f"commit {index} is beyond the last index {self.last_index()}")
            self.committed = index

    def stable_to(self, index: int, term: int) -> None:
        """The host persisted entries through (index, term). Ignored if that entry has since
        been replaced in the unstable tail."""
        if index < self.offset:
            return
        position = index - self.offset
        if position < len(self.unstable) and self.unstable[position].term == term:
            del self.unstable[: position + 1]
            self.offset = index + 1

    def stable_snapshot(self, index: int) -> None:
        if self.pending_snapshot is not None and self.pending_snapshot.index == index:
            self.pending_snapshot = None

    def applied_to(self, index: int) -> None:
        if index > self.applied:
            self.applied = index

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Discard the whole log in favour of a snapshot from the leader (§7)."""
        self.committed = snapshot.index
        self.offset = snapshot.index + 1
        self.unstable = []
        self.pending_snapshot = snapshot
        self.applying = snapshot.index
