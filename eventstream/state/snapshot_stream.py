"""Snapshot transfer as a byte stream cut into bounded chunks (InstallSnapshot, Raft section 7).

Stream layout (integers little-endian):
    magic      b"ESCSNAP\\x01"
    per file:  b"F" u16 name_bytes, name (UTF-8, relative), u64 file_bytes, u32 crc32c(file)
               then b"B" u32 raw_bytes u32 frame_bytes u32 crc32c(frame) <one lz4 frame> blocks
               covering the file
               (raw_bytes <= BLOCK_RAW_BYTES; zero blocks for an empty file)
    end:       b"E" u32 file_count
The frame's own CRC catches damage that lz4 would decode to the same bytes (a changed match
offset inside a run), so any altered byte of the stream is refused. The first file is always
MANIFEST.json; every later file must be one the manifest lists, with
the size and CRC-32C it states. Chunks may cut the stream anywhere. The receiver keeps at most
one block plus one chunk in memory and writes files as blocks arrive, into a work folder that
becomes a snapshot folder only when the whole stream checked out.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

import lz4.frame

from eventstream.state import snapshot as snapshots
from eventstream.state.errors import SnapshotError
from eventstream.storage import crc32c

MAGIC = b"ESCSNAP\x01"
BLOCK_RAW_BYTES = 1 << 20
# An lz4 frame of an incompressible block is a little larger than the block.
BLOCK_FRAME_BYTES_MAX = BLOCK_RAW_BYTES + (BLOCK_RAW_BYTES >> 7) + 1024
CHUNK_BYTES_MAX = 16 << 20
NAME_BYTES_MAX = 255
FILE_HEADER = struct.Struct("<QI")
BLOCK_HEADER = struct.Struct("<III")


def stream_snapshot(folder: str, chunk_bytes: int) -> Iterator[bytes]:
    """Chunks of at most chunk_bytes of the stream of a complete snapshot folder."""
    if not 1 <= chunk_bytes <= CHUNK_BYTES_MAX:
        raise ValueError(f"chunk_bytes must be in [1, {CHUNK_BYTES_MAX}], got {chunk_bytes}")
    manifest = snapshots.read_manifest(folder)
    manifest_bytes = _read_whole(os.path.join(folder, snapshots.MANIFEST_NAME))
    pending = bytearray(MAGIC)
    files = [(snapshots.MANIFEST_NAME, len(manifest_bytes), crc32c(manifest_bytes))]
    files += [(name, size, crc) for name, (size, crc) in snapshots.snapshot_files(manifest).items()]
    for name, size, crc in files:
        encoded = name.encode()
        pending += b"F" + struct.pack("<H", len(encoded)) + encoded + FILE_HEADER.pack(size, crc)
        with open(os.path.join(folder, name), "rb") as f:
            remaining = size
            while remaining:
                raw = f.read(min(remaining, BLOCK_RAW_BYTES))
                if not raw:
                    raise SnapshotError(f"{folder}/{name}: shorter than the manifest's {size}")
                remaining -= len(raw)
                frame = lz4.frame.compress(raw)
                pending += b"B" + BLOCK_HEADER.pack(len(raw), len(frame), crc32c(frame)) + frame
                while len(pending) >= chunk_bytes:
                    yield bytes(pending[:chunk_bytes])
                    del pending[:chunk_bytes]
    pending += b"E" + struct.pack("<I", len(files))
    while pending:
        yield bytes(pending[:chunk_bytes])
        del pending[:chunk_bytes]


def _read_whole(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class SnapshotReceiver:
    """Consumes a snapshot stream chunk by chunk; `finish` yields a complete snapshot folder.

    Any error raises SnapshotError, removes the partial work folder and leaves every existing
    snapshot and the live state alone.
    """

    def __init__(self, snapshots_root: str) -> None:
        os.makedirs(snapshots_root, exist_ok=True)
        self.snapshots_root = snapshots_root
        self.work_path = os.path.join(snapshots_root, f"recv-{os.getpid()}-{id(self):x}")
        shutil.rmtree(self.work_path, ignore_errors=True)
        os.makedirs(self.work_path)
        self._buffer = bytearray()
        self._magic_seen = False
        self._ended = False
        self._file: BinaryIO | None = None
        self._file_name = ""
        self._file_remaining = 0
        self._file_crc_expected = 0
        self._file_crc = 0
        self._files_done: list[str] = []
        self._manifest: dict[str, Any] | None = None
        self._manifest_bytes = bytearray()
        self._expected: dict[str, tuple[int, int]] = {}
        self._failed = False

    def feed(self, chunk: bytes | memoryview) -> None:
        if self._failed:
            raise SnapshotError("snapshot stream already failed")
        if len(chunk) > CHUNK_BYTES_MAX:
            self._fail(f"chunk of {len(chunk)} bytes exceeds {CHUNK_BYTES_MAX}")
        if self._ended and len(chunk):
            self._fail("bytes after the end of the snapshot stream")
        self._buffer += chunk
        try:
            while self._step():
                pass
        except SnapshotError:
            self.abort()
            raise
        except (OSError, ValueError, RuntimeError, UnicodeDecodeError, struct.error) as e:
            self._fail(f"bad snapshot stream: {e!r}")

    def _fail(self, message: str) -> None:
        self.abort()
        raise SnapshotError(message)

    def abort(self) -> None:
        self._failed = True
        if self._file is not None:
            self._file.close()
            self._file = None
        shutil.rmtree(self.work_path, ignore_errors=True)

    def _step(self) -> bool:
        """Consume one item from the buffer; False when more bytes are needed."""
        buf = self._buffer
        if not self._magic_seen:
            if len(buf) < len(MAGIC):
                return False
            if bytes(buf[: len(MAGIC)]) != MAGIC:
                self._fail("not a snapshot stream (bad magic)")
            del buf[: len(MAGIC)]
            self._magic_seen = True
            return True
        if self._ended:
            if buf:
                self._fail("bytes after the end of the snapshot stream")
            return False
        if not buf:
            return False
        tag = buf[0]
        if self._file_remaining > 0 and tag != ord("B"):
            self._fail(
                f"{self._file_name}: stream ended the file {self._file_remaining} bytes early"
            )
        if tag == ord("F"):
            return self._begin_file()
        if tag == ord("B"):
            return self._block()
        if tag == ord("E"):
            if len(buf) < 5:
                return False
            (count,) = struct.unpack_from("<I", buf, 1)
            del buf[:5]
            if count != len(self._files_done):
                self._fail(
                    f"end marker counts {count} files, the stream carried {len(self._files_done)}"
                )
            self._ended = True
            return True
        self._fail(f"unknown item tag {tag} in snapshot stream")
        return False

    def _begin_file(self) -> bool:
        buf = self._buffer
        if len(buf) < 3:
            return False
        (name_bytes,) = struct.unpack_from("<H", buf, 1)
        if name_bytes > NAME_BYTES_MAX:
            self._fail(f"file name of {name_bytes} bytes in snapshot stream")
        end = 3 + name_bytes + FILE_HEADER.size
        if len(buf) < end:
            return False
        name = bytes(buf[3 : 3 + name_bytes]).decode()
        size, crc = FILE_HEADER.unpack_from(buf, 3 + name_bytes)
        del buf[:end]
        snapshots.check_relative_name(name, "snapshot stream")
        if self._manifest is None:
            if name != snapshots.MANIFEST_NAME or size > snapshots.MANIFEST_BYTES_MAX:
                self._fail(f"snapshot stream must start with a bounded manifest, got {name!r}")
        else:
            if name not in self._expected or name in self._files_done:
                self._fail(
                    f"snapshot stream carries {name!r}, which the manifest does not list once"
                )
            if (size, crc) != self._expected[name]:
                self._fail(
                    f"{name}: stream says {size} bytes crc {crc}, the manifest {self._expected[name]}"
                )
        path = os.path.join(self.work_path, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._file = open(path, "wb")  # noqa: SIM115 - closed in _end_file or abort
        self._file_name = name
        self._file_remaining = size
        self._file_crc_expected = crc
        self._file_crc = 0
        if size == 0:
            self._end_file()
        return True

    def _block(self) -> bool:
        buf = self._buffer
        header_end = 1 + BLOCK_HEADER.size
        if len(buf) < header_end:
            return False
        raw_bytes, frame_bytes, frame_crc = BLOCK_HEADER.unpack_from(buf, 1)
        if self._file is None:
            self._fail("data block outside a file in snapshot stream")
        if (
            raw_bytes > min(BLOCK_RAW_BYTES, self._file_remaining)
            or frame_bytes > BLOCK_FRAME_BYTES_MAX
        ):
            self._fail(
                f"{self._file_name}: block of {raw_bytes} bytes ({frame_bytes} framed) is out of bounds"
            )
        if len(buf) < header_end + frame_bytes:
            return False
        frame = bytes(buf[header_end : header_end + frame_bytes])
        del buf[: header_end + frame_bytes]
        if crc32c(frame) != frame_crc:
            self._fail(f"{self._file_name}: CRC-32C mismatch of an lz4 frame in snapshot stream")
        info = lz4.frame.get_frame_info(frame)
        if info.get("content_size", 0) not in (0, raw_bytes):
            self._fail(f"{self._file_name}: lz4 frame announces {info['content_size']} bytes")
        raw = lz4.frame.decompress(frame)
        if len(raw) != raw_bytes:
            self._fail(f"{self._file_name}: block decodes to {len(raw)} bytes, not {raw_bytes}")
        assert self._file is not None
        self._file.write(raw)
        self._file_crc = crc32c(raw, self._file_crc)
        self._file_remaining -= raw_bytes
        if self._manifest is None:
            self._manifest_bytes += raw
        if self._file_remaining == 0:
            self._end_file()
        return True

    def _end_file(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        if self._file_crc != self._file_crc_expected:
            self._fail(f"{self._file_name}: CRC-32C mismatch in snapshot stream")
        self._files_done.append(self._file_name)
        if self._manifest is None:
            try:
                manifest = json.loads(bytes(self._manifest_bytes))
            except ValueError as e:
                self._fail(f"snapshot manifest is not JSON: {e}")
            snapshots.check_manifest(manifest, "snapshot stream")
            self._manifest = manifest
            self._expected = snapshots.snapshot_files(manifest)

    def finish(self) -> str:
        """Check that the stream was whole; returns the installed snapshot folder."""
        if self._failed:
            raise SnapshotError("snapshot stream already failed")
        if not self._ended or self._manifest is None:
            self._fail("snapshot stream is truncated: no end marker")
        assert self._manifest is not None
        missing = set(self._expected) - set(self._files_done)
        if missing:
            self._fail(f"snapshot stream lacks files the manifest lists: {sorted(missing)}")
        snapshots.fsync_path(self.work_path)
        final = snapshots.snapshot_folder(self.snapshots_root, self._manifest["last_index"])
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(self.work_path, final)
        snapshots.fsync_path(self.snapshots_root)
        return final
