"""NodeStorage: the Raft core's narrow read interface over the node's durable files.

    log/          SegmentLog: the Raft log (entries, terms, truncation, compaction)
    hardstate     term, vote, commit (storage.HardState, replaced atomically)
    state/        the state machine, whose snapshot folders are the Raft snapshots

The core only reads through this object; the node writes the same files while it carries out
a Ready, so everything read here is durable (or, for the leader's own tail, written and about
to be synced: the core never counts that toward commit before advance()).

Snapshots for InstallSnapshot are served by byte offset. The state machine streams a snapshot
folder as a sequence of chunks; this class writes that stream once to a file beside the folder
in streams/ (in a background thread, so the event loop never waits on compressing a large
snapshot) and
then answers any (offset, length) with one pread, which also makes resending a chunk cheap.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from eventstream.raft.membership import Membership
from eventstream.raft.messages import Entry, HardState, SnapshotMeta
from eventstream.raft.storage import (
    CompactedError,
    SnapshotUnavailableError,
    UnavailableError,
    limit_size,
)
from eventstream.state import StateError, StateMachine
from eventstream.state import snapshot as snapshots
from eventstream.storage import HardState as StoredHardState
from eventstream.storage import SegmentLog
from eventstream.storage import errors as storage_errors

log = logging.getLogger(__name__)

STREAM_SUFFIX = ".stream"
# Memory for the newest log entries (RecentEntries): several seconds of a busy leader's writes.
RECENT_ENTRIES_BYTES = 32 * 1024 * 1024


class RecentEntries:
    """The newest entries written to the log, kept in memory (at most `bytes_max` of data).

    Entries are read back soon after they are written: a leader sends them to its followers
    and applies them at commit, a follower applies them when the next message carries the
    commit. Serving those from memory saves a read syscall and a CRC pass over every entry.
    Invariant: `entries` holds consecutive indexes from `first`, identical to the log's.
    """

    __slots__ = ("bytes_max", "entries", "first", "nbytes")

    def __init__(self, bytes_max: int) -> None:
        self.bytes_max = bytes_max
        self.entries: deque[Entry] = deque()
        self.first = 0
        self.nbytes = 0

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0

    def written(self, entries: Sequence[Entry]) -> None:
        """The log now ends with `entries` (anything after entries[0].index - 1 was replaced)."""
        if not entries:
            return
        recent = self.entries
        start = entries[0].index
        if not recent or not self.first <= start <= self.first + len(recent):
            self.clear()
            self.first = start
        while self.first + len(recent) > start:
            self.nbytes -= len(recent.pop().data)
        for entry in entries:
            recent.append(entry)
            self.nbytes += len(entry.data)
        while self.nbytes > self.bytes_max and len(recent) > 1:
            self.nbytes -= len(recent.popleft().data)
            self.first += 1

    def get(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry] | None:
        """Entries lo <= index < hi under the log's max_bytes rule, or None when not all held."""
        recent = self.entries
        first = self.first
        if lo < first or hi > first + len(recent) or lo >= hi:
            return None
        return list(limit_size([recent[i] for i in range(lo - first, hi - first)], max_bytes))


def membership_meta(membership: Membership) -> dict[str, Any]:
    """The membership as the snapshot manifest's "raft" section keeps it (JSON)."""
    return {"membership": {"voters": list(membership.voters), "learners": list(membership.learners),
                           "context": base64.b64encode(membership.context).decode("ascii")}}


def membership_from_meta(raft_meta: dict[str, Any], fallback: Membership) -> Membership:
    """The membership a snapshot was taken with; `fallback` (the configured peers) for a
    snapshot written before membership changes existed."""
    stored = raft_meta.get("membership")
    if stored is None:
        return fallback
    return Membership.of(stored["voters"], stored["learners"], base64.b64decode(stored["context"]))


class NodeStorage:
    def __init__(self, data_dir: str, log: SegmentLog, state: StateMachine, initial: Membership) -> None:
        self.data_dir = data_dir
        self.log = log
        self.recent = RecentEntries(RECENT_ENTRIES_BYTES)
        self.state = state
        self.initial = initial  # the membership before any change: --peers, or what --join learned
        self._snapshot_meta: SnapshotMeta | None = None
        self._stream_lock = threading.Lock()
        self._stream_ready: dict[str, str] = {}  # snapshot folder -> finished stream file
        self._stream_building: set[str] = set()
        # Streams of an earlier run may be of snapshots since pruned; they are rebuilt on demand.
        shutil.rmtree(os.path.join(data_dir, "streams"), ignore_errors=True)
        self.refresh_snapshot()

    # -- the read interface (eventstream.raft.storage.Storage) ------------------------------
    def initial_state(self) -> tuple[HardState, Membership | None]:
        stored = StoredHardState.load(self.data_dir)
        vote = 0 if stored.voted_for is None else stored.voted_for
        return HardState(stored.term, vote, stored.commit), self.initial

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> Sequence[Entry]:
        cached = self.recent.get(lo, hi, max_bytes) if lo >= self.log.first_index else None
        if cached is not None:
            return cached
        try:
            rows = self.log.entries(lo, hi, max_bytes)
        except storage_errors.CompactedError as exc:
            raise CompactedError(str(exc)) from None
        except storage_errors.UnavailableError as exc:
            raise UnavailableError(str(exc)) from None
        return [Entry(index, term, data) for index, term, data in rows]  # type: ignore[arg-type]

    def term(self, index: int) -> int:
        try:
            return self.log.term(index)
        except storage_errors.CompactedError as exc:
            meta = self._snapshot_meta
            if meta is not None and meta.index == index:
                return meta.term
            raise CompactedError(str(exc)) from None
        except storage_errors.UnavailableError as exc:
            raise UnavailableError(str(exc)) from None

    def first_index(self) -> int:
        return self.log.first_index

    def last_index(self) -> int:
        return self.log.last_index

    def snapshot(self) -> SnapshotMeta:
        if self._snapshot_meta is None:
            raise SnapshotUnavailableError("no snapshot has been taken")
        return self._snapshot_meta

    def snapshot_chunk(self, index: int, offset: int, max_bytes: int) -> bytes:
        meta = self._snapshot_meta
        folder = self.state.latest_snapshot()
        if meta is None or meta.index != index or folder is None:
            raise SnapshotUnavailableError(f"snapshot at index {index} is no longer the latest")
        with self._stream_lock:
            stream = self._stream_ready.get(folder)
            if stream is None:
                if folder not in self._stream_building:
                    self._stream_building.add(folder)
                    threading.Thread(
                        target=self._build_stream, args=(folder,), name="snapshot-stream", daemon=True
                    ).start()
                raise SnapshotUnavailableError(f"snapshot {index} is being prepared for sending")
        with open(stream, "rb") as fh:
            return os.pread(fh.fileno(), max_bytes, offset)

    # -- bookkeeping the node calls ----------------------------------------------------------
    def refresh_snapshot(self) -> None:
        """Re-read which snapshot is the latest (after taking or installing one)."""
        folder = self.state.latest_snapshot()
        if folder is None:
            self._snapshot_meta = None
            return
        manifest = snapshots.read_manifest(folder)
        membership = membership_from_meta(manifest.get("raft", {}), self.initial)
        self._snapshot_meta = SnapshotMeta(manifest["last_index"], manifest["last_term"], membership.voters,
                                           membership.learners, membership.context)
        self._prune_streams(keep=folder)

    def save_hard_state(self, hard_state: HardState) -> None:
        vote = None if hard_state.vote == 0 else hard_state.vote
        StoredHardState(hard_state.term, vote, hard_state.commit).save(self.data_dir)

    def _build_stream(self, folder: str) -> None:
        streams = os.path.join(self.data_dir, "streams")
        os.makedirs(streams, exist_ok=True)
        target = os.path.join(streams, os.path.basename(folder.rstrip("/")) + STREAM_SUFFIX)
        partial = target + ".partial"
        try:
            with open(partial, "wb") as fh:
                for chunk in self.state.snapshot_chunks(folder):
                    fh.write(chunk)
            os.replace(partial, target)
            with self._stream_lock:
                self._stream_ready[folder] = target
        except Exception as exc:
            if isinstance(exc, (OSError, StateError)):
                # A full disk, or the snapshot pruned meanwhile: one line; a later send builds
                # the stream again.
                log.warning("could not prepare snapshot %s for sending: %s", folder, exc)
            else:
                log.exception("could not prepare snapshot %s for sending", folder)
            with contextlib.suppress(OSError):
                os.unlink(partial)
        finally:
            with self._stream_lock:
                self._stream_building.discard(folder)

    def _prune_streams(self, keep: str) -> None:
        with self._stream_lock:
            for folder, stream in list(self._stream_ready.items()):
                if folder != keep:
                    del self._stream_ready[folder]
                    try:
                        os.unlink(stream)
                    except OSError:
                        pass
