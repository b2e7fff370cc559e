"""Damaged files in a data dir: finding them (`esc wal check`) and setting them aside so the node
can catch up from the leader instead (`esc node --repair`).

A node's durable promises live in three places: the Raft log (every record has a CRC-32C), the
hard state (term, vote, commit, with a CRC-32C) and the newest state machine snapshot (its
manifest lists each file's size and CRC-32C). The live queue files are rebuilt at every start
from that snapshot and the log, so they are not checked here. A node whose copy of any of the
three fails its check cannot vouch for what it acknowledged or voted: it must not serve or vote
on it. With at most a minority damaged, the cluster still holds everything it acknowledged, so
the damaged node can start over empty and catch up as a node that lost its disk does
(RaftConfig.rejoining: no vote until it holds every committed entry). docs/faults.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from eventstream.state.errors import StateError
from eventstream.state.snapshot import list_snapshots, read_manifest, snapshot_files
from eventstream.storage import crc32c
from eventstream.storage.errors import StorageError
from eventstream.storage.hard_state import HARD_STATE_FILE, HardState
from eventstream.storage.inspect import inspect_log

# What --repair moves aside: everything the node recovers from. Kept, not deleted, so an
# operator (or a later analysis) still has the damaged copy.
DATA_ENTRIES = ("log", "state", HARD_STATE_FILE)
DAMAGED_PREFIX = "damaged-"
READ_PIECE_BYTES = 4 << 20


class DamagedDataError(StorageError):
    """The data dir fails its checks and the node was not asked to repair it."""


@dataclass(slots=True)
class DataDirCheck:
    problems: list[str] = field(default_factory=list)  # "file: offset N: what is wrong"
    notes: list[str] = field(default_factory=list)  # what was checked and found sound

    @property
    def ok(self) -> bool:
        return not self.problems


def check_data_dir(data_dir: Path) -> DataDirCheck:
    """Read-only check of the log, the hard state and the newest snapshot of a node's data dir."""
    result = DataDirCheck()
    try:
        result.notes.append(f"{HARD_STATE_FILE}: {HardState.load(str(data_dir))}")
    except StorageError as exc:
        result.problems.append(str(exc))
    log_dir = data_dir / "log"
    if log_dir.is_dir():
        report = inspect_log(str(log_dir))
        if report.ok:
            result.notes.append(report.lines[-1])
        else:
            result.problems += [f"{log_dir}/{line}" for line in report.lines if "DAMAGED" in line]
    _check_newest_snapshot(data_dir / "state" / "snapshots", result)
    return result


def _check_newest_snapshot(root: Path, result: DataDirCheck) -> None:
    available = list_snapshots(str(root))
    if not available:
        result.notes.append(f"{root}: no snapshot")
        return
    index, folder = available[-1]
    try:
        files = snapshot_files(read_manifest(folder))
    except StateError as exc:
        result.problems.append(str(exc))
        return
    for name, (size, expected) in sorted(files.items()):
        path = os.path.join(folder, name)
        problem = _file_crc_problem(path, size, expected)
        if problem:
            result.problems.append(problem)
    if result.ok:
        result.notes.append(f"snapshot at index {index}: {len(files)} files, sizes and CRCs ok")


def _file_crc_problem(path: str, size: int, expected: int) -> str | None:
    """Whether the first `size` bytes of `path` have CRC-32C `expected`; what is wrong if not."""
    crc = read = 0
    try:
        with open(path, "rb") as f:
            while read < size:
                piece = f.read(min(READ_PIECE_BYTES, size - read))
                if not piece:
                    return f"{path}: offset {read}: file ends before the {size} bytes the snapshot holds"
                crc = crc32c(piece, crc)
                read += len(piece)
    except OSError as exc:
        return f"{path}: unreadable: {exc.strerror or exc}"
    if crc != expected:
        return f"{path}: offset 0-{size}: CRC-32C {crc:#010x}, the snapshot manifest says {expected:#010x}"
    return None


def set_aside(data_dir: Path) -> Path:
    """Move the log, state and hard state into DATA_DIR/damaged-N/ (the first free N), in one
    filesystem so each move is a rename; returns that folder. The data dir is then empty."""
    n = 1
    while (data_dir / f"{DAMAGED_PREFIX}{n}").exists():
        n += 1
    target = data_dir / f"{DAMAGED_PREFIX}{n}"
    target.mkdir()
    for name in DATA_ENTRIES:
        if (data_dir / name).exists():
            os.rename(data_dir / name, target / name)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


REPAIR_ADVICE = (
    "this node's copy cannot be trusted. If a majority of the cluster is up and undamaged, start "
    "this node with --repair: it moves the damaged files into {data_dir}/damaged-N/, starts empty "
    "and catches up from the leader, voting again only once it holds every committed entry. If a "
    "majority of the nodes report damage, do not repair them: keep every data dir as it is, since "
    "a repaired majority would forget acknowledged events."
)
