"""Carrying out a Ready: the one place the order of its contract (eventstream/raft/node.py,
class Ready) and the rule for a leader's deferred sync are written down.

The node and the simulator's host both run ReadyExecutor; each gives it its own durable log,
network and state machine behind the three small interfaces below (files with fdatasync and
sockets in the node, memory in the simulator), so what the simulator proves about the order is
proven about the code that ships.

    send messages            leader traffic may overlap its own write (thesis 10.2.1)
    stage snapshot chunks, install a finished snapshot
    append entries, save hard state
    sync                     when must_sync; a leader's own write may stay unsynced (below)
    send persisted messages  votes and acks promise durable state
    apply committed entries, serve confirmed reads
    compact the log, advance
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from eventstream.raft.messages import Entry, HardState, Message, SnapshotChunk, SnapshotMeta
from eventstream.raft.node import RaftNode, ReadState, Ready, Role


class ReadyLog(Protocol):
    """The durable log and hard state as a Ready writes them."""

    def append(self, entries: list[Entry]) -> None:
        """Write entries, first dropping any at or after entries[0].index (§5.3)."""

    def save_hard_state(self, hs: HardState) -> None: ...

    def saved_term_vote(self) -> tuple[int, int]:
        """The term and vote last made durable."""

    def has_unsynced(self) -> bool:
        """Whether writes of a deferred sync are still not durable."""

    def sync(self) -> None:
        """Make every write so far durable, now; tells the core of a deferred one (persisted)."""

    def defer_sync(self, index: int, term: int) -> None:
        """Entries through (index, term) stay unsynced for now; a later sync makes them
        durable and reports them with RaftNode.persisted."""

    def compact(self, index: int) -> None: ...


class ReadySender(Protocol):
    def send(self, messages: list[Message]) -> None: ...


class ReadyApplier(Protocol):
    """The state machine's side of a Ready."""

    def stage_snapshot_chunks(self, chunks: list[SnapshotChunk]) -> None: ...

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        """Restore from the staged image and replace the log by it."""

    def apply(self, entries: list[Entry]) -> None: ...

    def confirm_reads(self, read_states: list[ReadState], dropped: list[bytes]) -> None: ...

    def after_advance(self) -> None:
        """Work that needs the core to have taken the Ready (role changes, a new snapshot)."""


class ReadyExecutor:
    """Drives `core` through every Ready it has. `sync_writes` is wal_sync: without it the host
    never syncs on a Ready's behalf (a background flusher bounds the loss window). With
    `defer_leader_sync` a leader's Ready that promises nothing durable to anyone does not wait
    for its fdatasync (see can_defer_sync)."""

    __slots__ = ("core", "log", "sender", "applier", "sync_writes", "defer_leader_sync", "before_writes",
                 "last_durable")

    def __init__(self, core: RaftNode, log: ReadyLog, sender: ReadySender, applier: ReadyApplier,
                 *, sync_writes: bool = True, defer_leader_sync: bool = True,
                 before_writes: Callable[[Ready], None] | None = None) -> None:
        self.core = core
        self.log = log
        self.sender = sender
        self.applier = applier
        self.sync_writes = sync_writes
        self.defer_leader_sync = defer_leader_sync
        # A fault point: called once the Ready's messages are out and before anything is
        # written. The simulator crashes a node here (an exception leaves the Ready undone, as
        # a dead process does); the node sets none.
        self.before_writes = before_writes
        self.last_durable = True  # whether the last Ready's writes were durable when advanced

    def run_one(self) -> Ready | None:
        core = self.core
        if not core.has_ready():
            return None
        rd = core.ready()
        durable = self.last_durable = self.carry_out(rd)
        core.advance(rd, durable=durable)
        self.applier.after_advance()
        return rd

    def carry_out(self, rd: Ready) -> bool:
        """Carry out `rd` in its contract's order; returns whether its writes are durable."""
        defer = self.sync_writes and rd.must_sync and self.can_defer_sync(rd)  # judged before the writes
        if rd.messages:
            self.sender.send(rd.messages)
        if self.before_writes is not None:
            self.before_writes(rd)
        applier, log = self.applier, self.log
        if rd.snapshot_chunks:
            applier.stage_snapshot_chunks(rd.snapshot_chunks)
        if rd.snapshot is not None:
            applier.install_snapshot(rd.snapshot)
        if rd.entries:
            log.append(rd.entries)
        if rd.hard_state is not None:
            log.save_hard_state(rd.hard_state)
        durable = self.make_durable(rd, defer)
        if rd.persisted_messages:
            self.sender.send(rd.persisted_messages)
        # Committed entries are applied once the acknowledgement is on its way: the leader
        # waits for that acknowledgement, never for this node's apply (commit means a majority
        # holds them durably, §5.3). Entries written by this very Ready may already be
        # committed and are applied before this node's own copy is synced when the leader
        # defers its sync: neither the answer to a client nor the state depends on that copy,
        # and a crash loses nothing the state machine cannot rebuild from its snapshot and the
        # log, which the leader completes again.
        if rd.committed_entries:
            applier.apply(rd.committed_entries)
        if rd.read_states or rd.dropped_reads:
            applier.confirm_reads(rd.read_states, rd.dropped_reads)
        if rd.compact_index:
            log.compact(rd.compact_index)
        return durable

    def make_durable(self, rd: Ready, defer: bool) -> bool:
        """Sync what `rd` wrote unless it may stay unsynced; returns whether it is durable."""
        log = self.log
        if self.sync_writes and rd.must_sync and (rd.entries or rd.snapshot is not None):
            if defer:
                # A leader's own fdatasync does not hold up its next cycles: new entries are
                # proposed and sent while it runs, and the core counts the leader toward commit
                # only once the write is reported durable (RaftNode.persisted; thesis 10.2.1).
                last = rd.entries[-1]
                log.defer_sync(last.index, last.term)
                return False
            log.sync()
        elif self.sync_writes and rd.persisted_messages and log.has_unsynced():
            log.sync()  # no ack or vote while writes of this node's leadership are unsynced
        return True

    def can_defer_sync(self, rd: Ready) -> bool:
        """A leader's Ready that promises nothing durable to anyone (RaftNode.advance): no vote,
        no ack, no snapshot, no change of term or vote from what is saved."""
        hs = rd.hard_state
        return (
            self.defer_leader_sync
            and self.core.role == Role.LEADER
            and bool(rd.entries)
            and rd.snapshot is None
            and not rd.snapshot_chunks
            and not rd.persisted_messages
            and (hs is None or (hs.term, hs.vote) == self.log.saved_term_vote())
        )
