"""The node's end of the entry ring a leader shares with its replication workers.

The leader writes each new log entry into the ring once; placing an AppendEntries message
returns where its entries start and end in the ring, which is what an order to a worker
carries. The ring is fresh for each leadership: within one term the leader's log only grows
(Figure 3, Leader Append-Only), so an index placed once names the same entry until the ring
overwrites it.
"""

from __future__ import annotations

import mmap
import os
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from eventstream.raft.messages import Entry
from eventstream.replication._spsc_ring import ENTRY_HEADER_BYTES, EntryRing, RecordTooLargeError

# Record space of the entry ring. Half of it bounds one entry (the node's entries are at most
# batch_bytes_max plus a little); pages of shared memory are committed when first written.
ENTRY_RING_BYTES_DEFAULT = 32 * 1024 * 1024


class Placement(NamedTuple):
    pos: int  # position of the first entry's record
    end: int  # position just past the last entry's record
    data_bytes: int


def shared_file(size: int) -> int:
    """An anonymous shared-memory file: nothing to unlink, gone when the last process closes it."""
    fd = os.memfd_create("esc-replication-ring")
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


class SharedEntries:
    """The entry ring and the position of each entry still in it.

    Invariant: positions[k] is the position of entry first + k, positions increase, and
    last == first + len(positions) - 1.
    """

    def __init__(self, ring_bytes: int = ENTRY_RING_BYTES_DEFAULT) -> None:
        self.size = ENTRY_HEADER_BYTES + ring_bytes
        self.fd = shared_file(self.size)
        try:
            self._map = mmap.mmap(self.fd, self.size)
            self.ring = EntryRing.create(self._map)
        except BaseException:
            os.close(self.fd)
            raise
        self._positions: deque[int] = deque()
        self._first = 0
        self._tail = 0
        self._half = self.ring.capacity // 2
        self.entries_written = 0
        self.bytes_written = 0

    @property
    def last(self) -> int:
        return self._first + len(self._positions) - 1

    def place(self, entries: Sequence[Entry]) -> Placement | None:
        """Make sure entries (contiguous, ascending) are in the ring, writing those that are not
        yet; None when they cannot all be sent from it (older than the ring's oldest entry, too
        large, or so old that a worker may not copy them before they are overwritten). Then the
        caller sends the message in full. Called once per follower per message: the path for
        entries already placed does no writing at all."""
        positions = self._positions
        first = self._first
        last = first + len(positions) - 1
        lo = entries[0].index
        hi = entries[-1].index
        if hi > last or not positions:
            ring = self.ring
            for e in entries:
                index = e.index
                if positions and first <= index <= last:
                    continue
                if not positions or index != last + 1:
                    if positions and index < first:
                        return None
                    # A gap (a new leader's first entries, or after an entry too large): start over.
                    positions.clear()
                    first = self._first = index
                try:
                    positions.append(ring.append(index, e.term, e.data))
                except RecordTooLargeError:
                    positions.clear()
                    return None
                last = index
                self.entries_written += 1
                self.bytes_written += len(e.data)
            # The ring's low bound moves only when this object writes.
            low = ring.low
            while positions and positions[0] < low:
                positions.popleft()
                first += 1
            self._first = first
            self._tail = ring.tail
        if not positions or lo < first or hi > last:
            return None
        pos = positions[lo - first]
        if pos < self._tail - self._half:
            return None
        end = positions[hi + 1 - first] if hi < last else self._tail
        data_bytes = len(entries[0].data) if lo == hi else sum(len(e.data) for e in entries)
        return Placement(pos, end, data_bytes)

    def close(self) -> None:
        """Release the node's end; workers keep their own mappings until they exit."""
        self.ring.close()
        self._map.close()
        os.close(self.fd)
