"""The EventStreamCore state machine that committed Raft entries are applied to (docs/state-machine.md).

Contract with the node:
  * `StateMachine.open(directory)` rebuilds the state from the newest complete local snapshot
    (or starts empty); `applied_index` then says where the node must replay the log from.
    Queue files written after that snapshot are discarded: the log is the durable copy.
  * `apply(index, term, data)` applies ONE committed entry; indexes must follow each other.
    `data` is a command (eventstream.state.commands); an empty entry is the leader's no-op.
    Returns an ApplyResult; for SET_EVENT it carries parallel per-event arrays (statuses,
    queues, offsets) rather than per-event objects. A bad entry raises ApplyStoppedError naming
    the index, and every later apply raises too.
  * `read(queue, offset, limit, max_bytes)` reads one queue; `digest()` hashes the full state
    (it reads every retained byte: a consistency check to run now and then, not per entry).
  * Not thread-safe, except that a SnapshotCut may be written on another thread while apply
    goes on.
  * `snapshot()` = `begin_snapshot()` (short pause, between two applies) + `SnapshotCut.write()`
    (may run on another thread while apply goes on). After a snapshot at index i the node may
    compact the Raft log through i (storage's `compact_through`).
  * `snapshot_chunks(...)` streams a snapshot for InstallSnapshot; the receiving side feeds the
    chunks to `snapshot_receiver()` and calls `restore(receiver)`. A truncated or corrupt
    snapshot raises SnapshotError and leaves the previous state as it was.
  * `validate_config(mapping)` is what the leader runs before proposing CONFIG_UPDATE.
Apply never reads a clock or global random state.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from eventstream.state import snapshot as snapshots
from eventstream.state._state import (
    DedupFullError,
    DedupTable,
    MalformedCommandError,
    apply_dedup_add,
)
from eventstream.state.commands import (
    DEDUP_EXPIRE_BODY,
    DEDUP_EXPIRE_LEGACY_BODY,
    SET_EVENT_AT_HEAD,
    CommandType,
)
from eventstream.state.config import (
    ConfigError,
    default_config,
    merge_config,
    validate_config,
)
from eventstream.state.digest import state_digest
from eventstream.state.errors import ApplyStoppedError, SnapshotError, StateError
from eventstream.state.queues import QueueStore, StoredEvent
from eventstream.state.snapshot_stream import SnapshotReceiver, stream_snapshot
from eventstream.storage.atomic_file import lock_directory as storage_lock_directory
from eventstream.storage.errors import StorageError

LIVE_PREFIX = "live-"
LOCK_NAME = "LOCK"
SNAPSHOTS_KEPT = 2


def lock_directory(directory: str) -> int:
    """flock the state directory, so two machines never rebuild the same live folders."""
    try:
        return storage_lock_directory(directory, LOCK_NAME, "state directory", "StateMachine")
    except StorageError as e:
        raise StateError(str(e)) from None


log = logging.getLogger(__name__)

class ApplyResult(NamedTuple):
    """Outcome of one applied entry. Per-event arrays are set for SET_EVENT (statuses are the
    STATUS_* values of eventstream.state._state) and per-id statuses for DEDUP_ADD."""

    log_index: int
    command: CommandType | None  # None for the leader's no-op
    statuses: memoryview | None = None
    queues: memoryview | None = None
    offsets: memoryview | None = None
    expired_count: int = 0
    first_seen_us: int | None = None  # SET_EVENT_AT: the leader's clock its ids are seen at


class StateMachine:
    def __init__(self, directory: str) -> None:
        """Use StateMachine.open()."""
        self.directory = directory
        self.snapshots_root = os.path.join(directory, "snapshots")
        self.applied_index = 0
        self.applied_term = 0
        self.config: dict[str, Any] = default_config()
        self.dedup = DedupTable(self.config["dedup_ids_max"])
        self._generation = 0
        self.live_root = ""
        self.queues = QueueStore("")
        self._stopped: str | None = None
        self._lock_fd: int | None = None

    # ----- lifecycle -----

    @classmethod
    def open(cls, directory: str) -> StateMachine:
        machine = cls(directory)
        os.makedirs(machine.snapshots_root, exist_ok=True)
        machine._lock_fd = lock_directory(directory)
        try:
            machine._rebuild()
        except BaseException:
            machine.close()
            raise
        return machine

    def _rebuild(self) -> None:
        """Fresh live folders from the newest complete snapshot, or an empty state. A damaged
        newest snapshot raises SnapshotError: falling back to an older one could need log
        entries already compacted, so the node decides (e.g. asks the leader for a snapshot)."""
        for name in os.listdir(self.directory):
            if name.startswith(LIVE_PREFIX):
                shutil.rmtree(os.path.join(self.directory, name))
                suffix = name[len(LIVE_PREFIX) :]
                if suffix.isascii() and suffix.isdigit():
                    self._generation = max(self._generation, int(suffix))
        for name in os.listdir(self.snapshots_root):
            if not name.startswith(snapshots.SNAPSHOT_PREFIX):  # unfinished work folders
                shutil.rmtree(os.path.join(self.snapshots_root, name), ignore_errors=True)
        available = snapshots.list_snapshots(self.snapshots_root)
        if available:
            self._install(available[-1][1])
        else:
            self.live_root = self._new_live_root()
            self.queues = QueueStore(self.live_root)

    def close(self) -> None:
        try:
            self.queues.close()
        except OSError as e:
            # Nothing is lost: the next open rebuilds the queue files from the newest snapshot
            # and the Raft log (_rebuild). The descriptors are closed all the same.
            log.warning("queue files of %s not fully written at close: %s", self.directory, e)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _new_live_root(self) -> str:
        self._generation += 1
        path = os.path.join(self.directory, f"{LIVE_PREFIX}{self._generation}")
        os.makedirs(path)
        return path

    # ----- apply -----

    def apply(self, index: int, term: int, data: bytes | memoryview) -> ApplyResult:
        if self._stopped is not None:
            raise ApplyStoppedError(f"apply is stopped: {self._stopped}")
        if index != self.applied_index + 1:
            raise StateError(
                f"entry {index} applied out of order: last applied is {self.applied_index}"
            )
        view = memoryview(data)
        try:
            result = self._apply_command(index, view)
        except (MalformedCommandError, ConfigError) as e:
            # Raised before anything changed: bodies are checked whole first.
            self._stopped = f"entry {index} (term {term}) is corrupt or from another version: {e}"
            raise ApplyStoppedError(self._stopped) from e
        except Exception as e:
            # Part of the entry may be applied: only a rebuild (open: newest snapshot, then the
            # log replayed) gives a state that is known to be right.
            self._stopped = (
                f"entry {index} (term {term}) failed half-applied, reopen to rebuild: {e!r}"
            )
            raise ApplyStoppedError(self._stopped) from e
        self.applied_index = index
        self.applied_term = term
        return result

    def _apply_command(self, index: int, view: memoryview) -> ApplyResult:
        if len(view) == 0:
            return ApplyResult(index, None)
        kind = view[0]
        body = view[1:]
        if kind == CommandType.SET_EVENT:
            statuses, queues, offsets = self.queues.apply_set_event(
                body, self.config, self.dedup, index, None
            )
            return ApplyResult(index, CommandType.SET_EVENT, statuses, queues, offsets)
        if kind == CommandType.SET_EVENT_AT:
            if len(view) < SET_EVENT_AT_HEAD.size:
                raise MalformedCommandError(f"SET_EVENT_AT body is {len(body)} bytes, shorter than its timestamp")
            _, first_seen_us = SET_EVENT_AT_HEAD.unpack_from(view)
            statuses, queues, offsets = self.queues.apply_set_event(
                view[SET_EVENT_AT_HEAD.size:], self.config, self.dedup, index, first_seen_us
            )
            return ApplyResult(index, CommandType.SET_EVENT_AT, statuses, queues, offsets,
                               first_seen_us=first_seen_us)
        if kind == CommandType.DEDUP_ADD:
            statuses = memoryview(apply_dedup_add(body, self.dedup))
            return ApplyResult(index, CommandType.DEDUP_ADD, statuses)
        if kind == CommandType.DEDUP_EXPIRE:
            if len(body) == DEDUP_EXPIRE_BODY.size:
                cutoff_us, generated_cutoff_us = DEDUP_EXPIRE_BODY.unpack(body)
                expired = self.dedup.expire(cutoff_us, generated_cutoff_us)
            elif len(body) == DEDUP_EXPIRE_LEGACY_BODY.size:
                expired = self.dedup.expire(*DEDUP_EXPIRE_LEGACY_BODY.unpack(body))
            else:
                raise MalformedCommandError(f"DEDUP_EXPIRE body is {len(body)} bytes, not 16 (or 8)")
            return ApplyResult(index, CommandType.DEDUP_EXPIRE, expired_count=expired)
        if kind == CommandType.CONFIG_UPDATE:
            try:
                update = json.loads(bytes(body))
            except ValueError as e:
                raise MalformedCommandError(f"CONFIG_UPDATE body is not JSON: {e}") from e
            self._apply_config(validate_config(update))
            return ApplyResult(index, CommandType.CONFIG_UPDATE)
        if kind == CommandType.MEMBERSHIP:
            return ApplyResult(index, CommandType.MEMBERSHIP)
        raise MalformedCommandError(f"unknown command type {kind}")

    def _apply_config(self, update: dict[str, Any]) -> None:
        self.config = merge_config(self.config, update)
        if "dedup_ids_max" in update:
            self.dedup.set_ids_max(update["dedup_ids_max"])
        if any(k.startswith("retention") or k == "queue_retention" for k in update):
            self.queues.enforce_retention_all(self.config)

    # ----- reads and checks -----

    def read(
        self, queue: int, offset: int, limit: int = 1000, max_bytes: int = 1 << 20
    ) -> list[StoredEvent]:
        """Events of one queue from `offset`; OffsetRangeError states the valid range."""
        self._flush_queues(queue)
        return self.queues.read(queue, offset, limit, max_bytes, self.config["queue_count"])

    def _flush_queues(self, queue: int | None = None) -> None:
        """Write what apply gathered (queues.py, QueueLog.unwritten) before the files are read:
        of the one queue about to be read, or of all.
        A failed write leaves the files behind the applied state, so apply stops until a reopen
        rebuilds them, exactly as for a write that fails inside apply. A stopped machine's
        files are void until then, so nothing more is written to them."""
        if self._stopped is not None:
            return
        try:
            self.queues.flush(queue)
        except OSError as e:
            self._stopped = f"writing applied events to the queue files failed, reopen to rebuild: {e!r}"
            raise ApplyStoppedError(self._stopped) from e

    def queue_range(self, queue: int) -> tuple[int, int]:
        """(retention floor, next offset) of a queue."""
        log = self.queues.logs.get(queue)
        return (log.floor_offset, log.next_offset) if log else (0, 0)

    @staticmethod
    def validate_config(update: Any) -> dict[str, Any]:
        return validate_config(update)

    def digest(self) -> str:
        self._flush_queues()
        return state_digest(
            self.applied_index,
            self.config,
            self.queues.describe(),
            self.live_root,
            self.dedup.freeze(),
        )

    def begin_digest(self) -> snapshots.DigestCut:
        """Cut the digest's inputs at the applied index (hard links, frozen dedup entries); the
        cut's `compute` gives what `digest()` would have, and may run on another thread."""
        self._flush_queues()
        if self._stopped is not None:
            raise StateError(f"no digest of a stopped state machine: {self._stopped}")
        config, queues = json.loads(json.dumps([self.config, self.queues.describe()]))  # copies the cut owns
        return snapshots.digest_cut(self.live_root, self.snapshots_root, self.applied_index, config, queues,
                                    self.dedup)

    # ----- snapshots -----

    def begin_snapshot(
        self, raft_meta: Mapping[str, Any] | None = None, at_index: int | None = None
    ) -> snapshots.SnapshotCut:
        """Cut a snapshot at the applied index: hard links and a frozen view of the dedup entries.

        `raft_meta` is what the node must get back with the snapshot besides the state (the
        membership at the last included index, Raft section 7); it is stored as given (JSON).
        `at_index`, when given, must be the applied index: a snapshot is always of the state as
        applied, so asking for another index is refused rather than silently moved.
        """
        if at_index is not None and at_index != self.applied_index:
            raise StateError(
                f"snapshot asked at index {at_index}, but the applied index is {self.applied_index}"
            )
        self._flush_queues()
        if self._stopped is not None:
            raise StateError(f"no snapshot of a stopped state machine: {self._stopped}")
        manifest = {
            "format": snapshots.FORMAT_VERSION,
            "last_index": self.applied_index,
            "last_term": self.applied_term,
            "raft": dict(raft_meta or {}),
            "config": self.config,
            "queue_slots": len(self.queues.next_offsets),
            "queues": self.queues.describe(),
        }
        manifest = json.loads(json.dumps(manifest))  # a deep copy the writer may own
        return snapshots.cut(self.live_root, self.snapshots_root, manifest, self.dedup)

    def snapshot(
        self, raft_meta: Mapping[str, Any] | None = None, at_index: int | None = None
    ) -> str:
        """Take a complete snapshot now; returns its folder and prunes all but the newest
        SNAPSHOTS_KEPT (a stream still reading an older one must finish first)."""
        folder = self.begin_snapshot(raft_meta, at_index).write()
        self.prune_snapshots()
        return folder

    @staticmethod
    def snapshot_info(folder: str) -> tuple[int, int, dict[str, Any]]:
        """(last included index, last included term, raft_meta) of a complete snapshot."""
        manifest = snapshots.read_manifest(folder)
        return manifest["last_index"], manifest["last_term"], manifest.get("raft", {})

    def prune_snapshots(self, keep: int = SNAPSHOTS_KEPT) -> None:
        for _, folder in snapshots.list_snapshots(self.snapshots_root)[:-keep]:
            shutil.rmtree(folder, ignore_errors=True)

    def latest_snapshot(self) -> str | None:
        available = snapshots.list_snapshots(self.snapshots_root)
        return available[-1][1] if available else None

    def snapshot_chunks(
        self, folder: str | None = None, chunk_bytes: int = 1 << 20
    ) -> Iterator[bytes]:
        """The newest (or given) snapshot as a stream of chunks of at most chunk_bytes."""
        folder = folder or self.latest_snapshot()
        if folder is None:
            raise SnapshotError("no complete snapshot to send")
        return stream_snapshot(folder, chunk_bytes)

    def snapshot_receiver(self) -> SnapshotReceiver:
        return SnapshotReceiver(self.snapshots_root)

    def restore(self, source: SnapshotReceiver | str) -> None:
        """Replace the whole state with a snapshot (a finished receiver or a local folder).

        Everything is rebuilt and checked (records, dedup image, digest) beside the current
        state; only when all checks pass does the new state replace it.
        """
        folder = source.finish() if isinstance(source, SnapshotReceiver) else source
        self._install(folder)
        self._stopped = None
        self.prune_snapshots()

    def _install(self, folder: str) -> None:
        manifest = snapshots.read_manifest(folder)
        live_root = self._new_live_root()
        store = QueueStore(live_root)
        try:
            # The digest covers the configuration as it was cut; keys added since (a format-1
            # snapshot has no dedup_generated_window_ms) take their defaults, as they did on
            # every replica that applied the log instead.
            cut_config = validate_config(manifest["config"])
            config = merge_config(default_config(), cut_config)
            owned = os.path.dirname(os.path.realpath(folder)) == os.path.realpath(
                self.snapshots_root
            )
            snapshots.materialize_queues(folder, manifest, live_root, owned)
            store.load(manifest["queues"], manifest["queue_slots"])
            dedup = snapshots.load_dedup(folder, manifest, config["dedup_ids_max"])
            digest = state_digest(
                manifest["last_index"], cut_config, store.describe(), live_root, dedup.freeze()
            )
            if digest != manifest["digest"]:
                raise SnapshotError(
                    f"{folder}: restored state digest {digest} differs from the manifest's "
                    f"{manifest['digest']}"
                )
        except BaseException as e:
            store.close()
            shutil.rmtree(live_root, ignore_errors=True)
            inconsistent = (ConfigError, KeyError, TypeError, DedupFullError, StateError)
            if isinstance(e, inconsistent) and not isinstance(e, SnapshotError):
                raise SnapshotError(f"{folder}: inconsistent snapshot: {e!r}") from e
            raise
        old_root = self.live_root
        self.queues.close()
        self.queues = store
        self.live_root = live_root
        self.dedup = dedup
        self.config = config
        self.applied_index = manifest["last_index"]
        self.applied_term = manifest["last_term"]
        if old_root:
            shutil.rmtree(old_root, ignore_errors=True)
