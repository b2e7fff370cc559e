"""Snapshots as file sets (docs/state-machine.md, "Snapshots"; Raft paper section 7).

A complete snapshot is a folder `snapshots/snap-<index:020d>/`:

    MANIFEST.json            written last; its presence is what makes the snapshot complete
    dedup.lz4                the dedup entries of ids callers chose (DedupTable.export_entries
                             image), one lz4 frame
    dedup-generated.lz4      the same for ids the client library generated (format 2)
    queues/<q>/<base>.qseg   hard links to the live queue segments at the cut

MANIFEST.json holds: format, last_index, last_term (the index/term of the last applied entry),
config, queue_slots, queues (QueueStore.describe() plus each segment's crc32c of its first
`bytes` bytes), dedup and dedup_generated {file, count, image_bytes, file_bytes, crc32c} and the
state digest at the cut. Format 1 (before generated ids had their own class) has no
dedup_generated: it is read as holding none, which is what a format-1 state held. A segment
that was the active one at the cut keeps growing in the live folder, and so through its hard
link here: only its first `bytes` bytes belong to the snapshot.

Taking a snapshot is split so apply pauses only briefly (`cut`): the cut hard-links every live
segment (one link() per segment file, no data copied) and freezes the dedup entries (a reference
to each chunk of 65,536 entries; entries never change once written, so nothing is copied).
Everything slow (fsync, checksums, lz4, digest, manifest) happens in `SnapshotCut.write`, which
may run on another thread while apply goes on: sealed segments never change, the active one is
read only up to its length at the cut, and the frozen dedup chunks outlive any expiry.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import lz4.frame

from eventstream.state._state import DEDUP_ENTRY_BYTES, DedupTable, DedupView
from eventstream.state.digest import state_digest
from eventstream.state.errors import SnapshotError
from eventstream.state.queues import segment_prefix_pieces
from eventstream.storage import crc32c

FORMAT_VERSION = 2
FORMATS_READ = (1, 2)
MANIFEST_NAME = "MANIFEST.json"
DEDUP_NAME = "dedup.lz4"
DEDUP_GENERATED_NAME = "dedup-generated.lz4"
SNAPSHOT_PREFIX = "snap-"
MANIFEST_BYTES_MAX = 64 << 20
DEDUP_PIECE_BYTES = DEDUP_ENTRY_BYTES << 16  # 65,536 entries, about 2.4 MB


def snapshot_folder(snapshots_root: str, index: int) -> str:
    return os.path.join(snapshots_root, f"{SNAPSHOT_PREFIX}{index:020d}")


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class SnapshotCut:
    """What `cut` captured; `write` turns it into a complete snapshot folder."""

    work_path: str
    final_path: str
    manifest: dict[str, Any]
    dedup: tuple[DedupView, DedupView]  # (ids callers chose, ids the client library generated)

    def write(self) -> str:
        """Sync, checksum and describe the cut; returns the complete snapshot's folder."""
        try:
            segments = [s for queue in self.manifest["queues"] for s in queue["segments"]]
            for segment in segments:
                fsync_path(os.path.join(self.work_path, segment["file"]))
                segment["crc32c"] = 0  # the CRC-32C of no bytes; pieces below extend it
            for key, name, view in (("dedup", DEDUP_NAME, self.dedup[0]),
                                    ("dedup_generated", DEDUP_GENERATED_NAME, self.dedup[1])):
                file_bytes, crc = write_dedup_image(os.path.join(self.work_path, name), view)
                self.manifest[key] = {
                    "file": name,
                    "count": len(view),
                    "image_bytes": len(view) * DEDUP_ENTRY_BYTES,
                    "file_bytes": file_bytes,
                    "crc32c": crc,
                }

            def checksum(segment: dict[str, Any], piece: bytes) -> None:
                segment["crc32c"] = crc32c(piece, segment["crc32c"])

            self.manifest["digest"] = state_digest(
                self.manifest["last_index"],
                self.manifest["config"],
                self.manifest["queues"],
                self.work_path,
                self.dedup,
                checksum,
            )
            write_synced(
                os.path.join(self.work_path, MANIFEST_NAME),
                json.dumps(self.manifest, sort_keys=True).encode(),
            )
            fsync_path(self.work_path)
            os.rename(self.work_path, self.final_path)
            fsync_path(os.path.dirname(self.final_path))
        except BaseException:
            shutil.rmtree(self.work_path, ignore_errors=True)
            raise
        return self.final_path


def write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def cut(
    live_root: str,
    snapshots_root: str,
    manifest: dict[str, Any],
    dedup: DedupTable,
) -> SnapshotCut:
    """The short part of a snapshot, run between two applies: links and an in-memory copy."""
    index = manifest["last_index"]
    final_path = snapshot_folder(snapshots_root, index)
    if os.path.exists(final_path):
        raise SnapshotError(f"a snapshot at index {index} already exists: {final_path}")
    work_path = os.path.join(snapshots_root, f"tmp-{index:020d}")
    link_segments(live_root, work_path, manifest["queues"])
    return SnapshotCut(work_path, final_path, manifest, dedup.freeze())


def link_segments(live_root: str, work_path: str, queues: list[dict[str, Any]]) -> None:
    """Hard-link every segment `queues` (QueueStore.describe()) names into a fresh work_path."""
    shutil.rmtree(work_path, ignore_errors=True)
    os.makedirs(work_path)
    try:
        for queue in queues:
            for segment in queue["segments"]:
                target = os.path.join(work_path, segment["file"])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.link(os.path.join(live_root, segment["file"]), target)
    except BaseException:
        shutil.rmtree(work_path, ignore_errors=True)
        raise


@dataclass
class DigestCut:
    """The state digest's inputs at one applied index, cut like a snapshot (hard links and the
    frozen dedup entries), so `compute` may read them on another thread while apply goes on."""

    work_path: str
    index: int
    config: dict[str, Any]
    queues: list[dict[str, Any]]
    dedup: tuple[DedupView, DedupView]

    def compute(self) -> str:
        """The digest; the cut's links are removed whatever happens."""
        try:
            return state_digest(self.index, self.config, self.queues, self.work_path, self.dedup)
        finally:
            shutil.rmtree(self.work_path, ignore_errors=True)


def digest_cut(live_root: str, snapshots_root: str, index: int, config: dict[str, Any],
               queues: list[dict[str, Any]], dedup: DedupTable) -> DigestCut:
    """The short part of a digest, run between two applies. Its folder does not start with
    SNAPSHOT_PREFIX, so a crash leaves nothing the next open keeps."""
    work_path = os.path.join(snapshots_root, f"digest-{index:020d}")
    link_segments(live_root, work_path, queues)
    return DigestCut(work_path, index, config, queues, dedup.freeze())


def read_manifest(folder: str) -> dict[str, Any]:
    """The manifest of a snapshot folder, checked for shape; SnapshotError when unusable."""
    path = os.path.join(folder, MANIFEST_NAME)
    try:
        if os.path.getsize(path) > MANIFEST_BYTES_MAX:
            raise SnapshotError(f"{path}: larger than {MANIFEST_BYTES_MAX} bytes")
        with open(path, "rb") as f:
            manifest = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise SnapshotError(f"{path}: unreadable snapshot manifest: {e}") from e
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest: Any, where: str) -> None:
    required = {
        "format": int,
        "last_index": int,
        "last_term": int,
        "config": dict,
        "queue_slots": int,
        "queues": list,
        "dedup": dict,
        "digest": str,
    }
    if not isinstance(manifest, dict):
        raise SnapshotError(f"{where}: manifest is not a JSON object")
    for key, kind in required.items():
        if not isinstance(manifest.get(key), kind):
            raise SnapshotError(f"{where}: manifest field {key!r} missing or not {kind.__name__}")
    if manifest["format"] not in FORMATS_READ:
        raise SnapshotError(
            f"{where}: snapshot format {manifest['format']}, this build reads formats "
            f"{', '.join(map(str, FORMATS_READ))}"
        )
    if manifest["format"] >= 2 and not isinstance(manifest.get("dedup_generated"), dict):
        raise SnapshotError(f"{where}: manifest field 'dedup_generated' missing or not dict")
    for name in snapshot_files(manifest):
        check_relative_name(name, where)


def check_relative_name(name: Any, where: str) -> None:
    """File names come from a peer during restore: only plain relative paths below the folder."""
    if (
        not isinstance(name, str)
        or not name
        or name.startswith("/")
        or any(part in ("", ".", "..") for part in name.split("/"))
        or "\\" in name
        or "\x00" in name
    ):
        raise SnapshotError(f"{where}: unsafe file name {name!r} in snapshot")


def snapshot_files(manifest: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """{relative name: (bytes, crc32c)} of every data file a snapshot holds."""
    files: dict[str, tuple[int, int]] = {}
    try:
        for queue in manifest["queues"]:
            for segment in queue["segments"]:
                files[segment["file"]] = (segment["bytes"], segment["crc32c"])
        for key in ("dedup", "dedup_generated"):
            if key in manifest:
                dedup = manifest[key]
                files[dedup["file"]] = (dedup["file_bytes"], dedup["crc32c"])
    except (KeyError, TypeError) as e:
        raise SnapshotError(f"snapshot manifest lacks a file field: {e!r}") from e
    return files


def materialize_queues(
    snapshot_path: str, manifest: dict[str, Any], live_root: str, owned: bool
) -> None:
    """Place the snapshot's segments under a fresh live folder, by hard link where that is safe:

    * sealed segments never change, so they are always linked;
    * the active one will be appended to. It is linked only when the snapshot folder is this
      machine's own (no other process appends to that file) and the file is exactly the
      snapshot's length (nothing was appended after the cut); appends past the length then
      leave the snapshot intact, since only its first `bytes` bytes belong to it. Otherwise its
      prefix is copied (at most one segment per queue).
    """
    for queue in manifest["queues"]:
        for segment in queue["segments"]:
            source = os.path.join(snapshot_path, segment["file"])
            target = os.path.join(live_root, segment["file"])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                exact = os.path.getsize(source) == segment["bytes"]
                if exact and (segment["sealed"] or owned):
                    os.link(source, target)
                else:
                    copy_prefix(source, target, segment["bytes"])
            except OSError as e:
                raise SnapshotError(f"{source}: cannot place segment: {e}") from e


def copy_prefix(source: str, target: str, length: int) -> None:
    with open(target, "wb") as dst:
        for piece in segment_prefix_pieces(source, length):
            dst.write(piece)


def lz4_frame_of(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """One lz4 frame of the concatenated pieces, produced piece by piece."""
    compressor = lz4.frame.LZ4FrameCompressor()
    yield compressor.begin()
    for piece in pieces:
        yield compressor.compress(piece)
    yield compressor.flush()


def write_dedup_image(path: str, dedup: DedupView) -> tuple[int, int]:
    """Write the dedup entries as one lz4 frame, piece by piece from the frozen view (no copy of
    the whole image); returns (file bytes, crc32c of the file)."""
    size = crc = 0
    with open(path, "wb") as f:
        for piece in lz4_frame_of(dedup.pieces()):
            f.write(piece)
            crc = crc32c(piece, crc)
            size += len(piece)
        f.flush()
        os.fsync(f.fileno())
    return size, crc


def load_dedup(snapshot_path: str, manifest: dict[str, Any], ids_max: int) -> DedupTable:
    """Rebuild the dedup table from its lz4 files (one per class of ids)."""
    table = DedupTable(ids_max)
    load_dedup_image(snapshot_path, manifest["dedup"], table, generated=False)
    if "dedup_generated" in manifest:
        load_dedup_image(snapshot_path, manifest["dedup_generated"], table, generated=True)
    return table


def load_dedup_image(snapshot_path: str, info: dict[str, Any], table: DedupTable, generated: bool) -> None:
    """Load one class's entries, into a class still empty, from its lz4 file, decompressing a
    bounded piece at a time."""
    path = os.path.join(snapshot_path, info["file"])
    decompressor = lz4.frame.LZ4FrameDecompressor()
    carry = b""
    image_bytes = file_bytes = crc = 0
    try:
        with open(path, "rb") as f:
            while piece := f.read(DEDUP_PIECE_BYTES):
                file_bytes += len(piece)
                crc = crc32c(piece, crc)
                while not decompressor.eof:
                    out = decompressor.decompress(piece, max_length=DEDUP_PIECE_BYTES)
                    piece = b""
                    image_bytes += len(out)
                    carry += out
                    whole = len(carry) - len(carry) % DEDUP_ENTRY_BYTES
                    table.import_entries(carry[:whole], generated)
                    carry = carry[whole:]
                    if decompressor.needs_input:
                        break
    except OSError as e:
        raise SnapshotError(f"{path}: {e}") from e
    except RuntimeError as e:
        raise SnapshotError(f"{path}: lz4 frame does not decode: {e}") from e
    except (ValueError, MemoryError) as e:
        raise SnapshotError(f"{path}: {e}") from e
    if file_bytes != info["file_bytes"] or crc != info["crc32c"]:
        raise SnapshotError(f"{path}: size or CRC-32C differs from the manifest")
    if not decompressor.eof or carry or image_bytes != info["image_bytes"]:
        raise SnapshotError(f"{path}: dedup image of {image_bytes} bytes, manifest differs")
    count = table.generated_count if generated else len(table) - table.generated_count
    if count != info["count"]:
        raise SnapshotError(
            f"{path}: {count} dedup entries, the manifest says {info['count']}"
        )


def list_snapshots(snapshots_root: str) -> list[tuple[int, str]]:
    """Complete snapshots (those with a manifest) as (index, folder), oldest first."""
    out: list[tuple[int, str]] = []
    if not os.path.isdir(snapshots_root):
        return out
    for name in os.listdir(snapshots_root):
        if not name.startswith(SNAPSHOT_PREFIX):
            continue
        folder = os.path.join(snapshots_root, name)
        suffix = name[len(SNAPSHOT_PREFIX) :]
        if (suffix.isascii() and suffix.isdigit()) and os.path.exists(os.path.join(folder, MANIFEST_NAME)):
            out.append((int(suffix), folder))
    return sorted(out)
