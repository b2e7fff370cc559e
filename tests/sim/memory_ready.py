"""The in-memory parts a MemoryHost gives the node's ReadyExecutor (eventstream/node/ready.py):
its log and hard state with a crash model, its network, and its little state machine.

Durability model, kept in step with the node: entries are written unsynced and become durable
at the next sync (a crash loses the rest, MemoryHost.crash); term and vote are durable once
saved, as the node's hard-state file is written atomically with fsync; a commit index saved on
its own is durable only as of the next sync, and never past the last durable entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from eventstream.raft import Entry, HardState, Message, ReadState, SnapshotChunk, SnapshotMeta

if TYPE_CHECKING:
    from tests.sim.host import MemoryHost


class MemoryLog:
    """ReadyLog over the host's MemoryStorage."""

    __slots__ = ("host", "pending")

    def __init__(self, host: MemoryHost) -> None:
        self.host = host
        self.pending: tuple[int, int] | None = None  # a deferred write not yet reported durable

    def append(self, entries: list[Entry]) -> None:
        host = self.host
        first = entries[0].index
        host.unsynced_from = min(host.unsynced_from, first) if host.unsynced_from else first
        host.storage.append(entries)

    def save_hard_state(self, hs: HardState) -> None:
        host = self.host
        prev = host.storage.hard_state
        host.storage.set_hard_state(hs)
        if (hs.term, hs.vote) != (prev.term, prev.vote):
            durable_last = host.unsynced_from - 1 if host.unsynced_from else host.storage.last_index()
            host.synced_commit = min(hs.commit, durable_last)

    def saved_term_vote(self) -> tuple[int, int]:
        hs = self.host.storage.hard_state
        return hs.term, hs.vote

    def has_unsynced(self) -> bool:
        return self.pending is not None

    def sync(self) -> None:
        host = self.host
        host.unsynced_from = 0
        host.synced_commit = host.storage.hard_state.commit
        pending, self.pending = self.pending, None
        if pending is not None:
            host.node.persisted(*pending)

    def defer_sync(self, index: int, term: int) -> None:
        self.pending = (index, term)

    def compact(self, index: int) -> None:
        self.host.storage.compact(index)


class MemorySender:
    """ReadySender: hands each message to the simulated network."""

    __slots__ = ("send_one",)

    def __init__(self, send_one: Callable[[Message], None]) -> None:
        self.send_one = send_one

    def send(self, messages: list[Message]) -> None:
        for m in messages:
            self.send_one(m)


class MemoryApplier:
    """ReadyApplier over the host's CRC-chain state machine."""

    __slots__ = ("host",)

    def __init__(self, host: MemoryHost) -> None:
        self.host = host

    def stage_snapshot_chunks(self, chunks: list[SnapshotChunk]) -> None:
        self.host.stage(chunks)

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        self.host.install(meta)

    def apply(self, entries: list[Entry]) -> None:
        self.host.apply_entries(entries)

    def confirm_reads(self, read_states: list[ReadState], dropped: list[bytes]) -> None:
        self.host.read_states.extend(read_states)

    def after_advance(self) -> None:
        self.host.after_advance()
