"""A host for one RaftNode in memory: it carries out Ready records with the node's own
ReadyExecutor (eventstream/node/ready.py) against MemoryStorage and a tiny state machine, so
the order and the sync rules the simulator proves are the ones the node runs. Shared by the
simulator, the interaction tests and the core benchmark.

The state machine folds every applied entry into a CRC-32 chain, so two replicas that applied
the same entries in the same order have the same digest at every index.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from collections.abc import Callable

from eventstream.node.ready import ReadyExecutor
from eventstream.node.snapshot_policy import snapshot_due
from eventstream.raft import (
    Entry,
    Message,
    RaftConfig,
    RaftNode,
    ReadState,
    Ready,
    SnapshotChunk,
    SnapshotMeta,
)
from eventstream.raft.storage import MemoryStorage, SnapshotUnavailableError
from tests.sim.memory_ready import MemoryApplier, MemoryLog, MemorySender

# Snapshot image: b"<applied index>:<digest>:" padded so that it spans several chunks.
SNAPSHOT_PADDING = b"#" * 200


def encode_image(index: int, digest: int) -> bytes:
    return b"%d:%d:" % (index, digest) + SNAPSHOT_PADDING


def decode_image(image: bytes) -> tuple[int, int]:
    index, digest, _ = image.split(b":", 2)
    return int(index), int(digest)


class MemoryHost:
    """One node with its durable storage (MemoryStorage) and volatile state machine.

    `synced_commit` is the commit index as of the last synced write: a crash may lose commit
    advances written without sync (Ready.must_sync False), and nothing else that was persisted.

    With `deferred_sync`, a leader's entries are written but synced only when the simulator
    calls sync_deferred() (or a later Ready must be durable), as the node does with its
    fdatasync in a worker thread (advance(durable=False), RaftNode.persisted). A crash before
    then loses them: `unsynced_from` is the first such entry.
    """

    __slots__ = (
        "node_id",
        "config",
        "storage",
        "node",
        "applied",
        "digest",
        "staged",
        "synced_commit",
        "on_apply",
        "on_restore",
        "compact_wanted",
        "read_states",
        "snapshot_every",
        "applied_since_snapshot",
        "keep_entries",
        "node_class",
        "_deferred_sync",
        "log",
        "sender",
        "executor",
        "executor_class",
        "unsynced_from",
        "rejoining",
    )

    def __init__(
        self,
        config: RaftConfig,
        storage: MemoryStorage,
        seed: int,
        node_class: type[RaftNode] = RaftNode,
        executor_class: type[ReadyExecutor] = ReadyExecutor,
    ) -> None:
        self.node_id = config.id
        self.config = config
        self.storage = storage
        self.on_apply: Callable[[MemoryHost, Entry, int], None] | None = None
        self.on_restore: Callable[[MemoryHost, SnapshotMeta, int], None] | None = None
        self.compact_wanted = 0
        self.read_states: list[ReadState] = []
        # Take a snapshot after this many applied entries (0: never), keeping this many entries.
        self.snapshot_every = 0
        self.keep_entries = 0
        self.staged = bytearray()
        # The mutation check swaps in a deliberately broken subclass here.
        self.node_class = node_class
        self.executor_class = executor_class  # the node's, or a mutation of its rules
        self._deferred_sync = False
        self.sender = MemorySender(lambda m: None)
        self.unsynced_from = 0
        # Set by lose_disk(); kept across restarts until the core votes again, as the node's
        # REJOINING file is (eventstream/node.py, RaftConfig.rejoining).
        self.rejoining = config.rejoining
        self.start(seed)

    def start(self, seed: int) -> None:
        """(Re)start from durable state: the state machine is rebuilt from the snapshot."""
        self.synced_commit = self.storage.hard_state.commit
        try:
            meta = self.storage.snapshot()
            self.applied, self.digest = decode_image(self.storage.snapshot_data())
            assert self.applied == meta.index
            if meta.index > self.storage.last_index():
                # A leader applies (and may snapshot) entries a majority committed before its
                # own deferred sync; a crash then leaves the snapshot past the log's end. As
                # the node does (Node.open_storage), the log restarts from the snapshot.
                self.storage.apply_snapshot(meta, self.storage.snapshot_data())
        except SnapshotUnavailableError:
            self.applied, self.digest = 0, 0
        self.applied_since_snapshot = 0
        self.compact_wanted = 0
        self.staged = bytearray()
        config = dataclasses.replace(self.config, applied=self.applied, rejoining=self.rejoining)
        self.node = self.node_class(config, self.storage, random.Random(seed))
        self.log = MemoryLog(self)
        self.executor = self.executor_class(self.node, self.log, self.sender, MemoryApplier(self),
                                            defer_leader_sync=self._deferred_sync)

    def lose_disk(self) -> None:
        """The node is down and its disk replaced: it restarts (start()) with nothing, as
        `esc node --rejoin` on an empty data dir."""
        self.storage = MemoryStorage()
        self.unsynced_from = 0
        self.rejoining = True

    def crash(self) -> None:
        """Lose everything volatile, the entries and the commit index written without sync."""
        if self.unsynced_from:
            self.storage.lose_from(self.unsynced_from)
            self.unsynced_from = 0
        hs = self.storage.hard_state
        if hs.commit > self.synced_commit:
            self.storage.hard_state = hs._replace(commit=max(self.synced_commit, 0))

    @property
    def deferred_sync(self) -> bool:
        return self._deferred_sync

    @deferred_sync.setter
    def deferred_sync(self, on: bool) -> None:
        self._deferred_sync = on
        self.executor.defer_leader_sync = on

    def sync_deferred(self) -> None:
        """Sync what deferred Readys wrote, and tell a leader (RaftNode.persisted)."""
        if self.unsynced_from:
            self.log.sync()

    def carry_out(self, rd: Ready, send: Callable[[Message], None]) -> bool:
        """Carry out `rd` without advancing (for tests that advance by hand); returns whether
        its writes are durable."""
        self.sender.send_one = send
        return self.executor.carry_out(rd)

    # MemoryApplier's side (tests/sim/memory_ready.py)
    def stage(self, chunks: list[SnapshotChunk]) -> None:
        for chunk in chunks:
            if chunk.offset == 0:
                self.staged = bytearray()
            assert chunk.offset == len(self.staged), "snapshot chunks out of order"
            self.staged += chunk.data

    def install(self, meta: SnapshotMeta) -> None:
        image = bytes(self.staged)
        index, digest = decode_image(image)
        assert index == meta.index, f"staged snapshot at {index}, asked to install {meta.index}"
        self.storage.apply_snapshot(meta, image)
        self.applied, self.digest = index, digest
        self.staged = bytearray()
        if self.on_restore is not None:
            self.on_restore(self, meta, digest)

    def apply_entries(self, entries: list[Entry]) -> None:
        for entry in entries:
            assert entry.index == self.applied + 1, (
                f"node {self.node_id} applies {entry.index} after {self.applied}"
            )
            self.applied = entry.index
            self.digest = zlib.crc32(entry.data, zlib.crc32(b"%d" % entry.term, self.digest))
            if self.on_apply is not None:
                self.on_apply(self, entry, self.digest)
        if self.snapshot_every:
            self.applied_since_snapshot += len(entries)
            if snapshot_due(self.applied_since_snapshot, self.snapshot_every,
                            self.node.streaming_snapshot()):
                self.take_snapshot()

    def take_snapshot(self) -> None:
        self.applied_since_snapshot = 0
        try:
            current = self.storage.snapshot().index
        except SnapshotUnavailableError:
            current = 0
        if self.applied <= current:
            return
        self.storage.create_snapshot(
            self.applied, encode_image(self.applied, self.digest), self.node.membership_at(self.applied)
        )
        # The node learns the new applied index at advance(); ask for compaction after that.
        self.compact_wanted = self.applied - self.keep_entries

    def handle_ready(self, send: Callable[[Message], None]) -> Ready | None:
        """Carry out one Ready in full with the node's ReadyExecutor; returns it (None if there
        was nothing to do)."""
        self.sender.send_one = send
        return self.executor.run_one()

    def after_advance(self) -> None:
        """After advance: the rejoin flag, and a compaction request for the snapshot taken
        while applying (the core accepts it only after advance)."""
        node = self.node
        if self.rejoining and not node.withholding_votes:
            self.rejoining = False
        if self.compact_wanted:
            if self.compact_wanted >= node.log.first_index():
                node.compact(self.compact_wanted)
            self.compact_wanted = 0
