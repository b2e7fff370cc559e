"""Small fixed-layout files replaced atomically: write a temp file, fsync, rename, fsync the dir.

A reader sees either the old or the new content, never a mix (POSIX rename is atomic), and
after the directory fsync the rename itself survives a crash. Each file carries a magic, its
fields and a CRC-32C, so a damaged file is reported rather than misread.
"""

from __future__ import annotations

import fcntl
import os
import struct

from eventstream.storage._crc32c import crc32c
from eventstream.storage.errors import CorruptionError, StorageError


def fsync_directory(path: str) -> None:
    """Makes creations, renames and unlinks inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes) -> None:
    """Replaces `path` with `data`; on return both the content and the rename are durable."""
    directory = os.path.dirname(os.path.abspath(path))
    temp = f"{path}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_directory(directory)


def pack_checked(magic: bytes, layout: struct.Struct, *fields: int) -> bytes:
    """magic + fields + CRC-32C of both."""
    body = magic + layout.pack(*fields)
    return body + struct.pack("<I", crc32c(body))


def unpack_checked(path: str, magic: bytes, layout: struct.Struct) -> tuple[int, ...] | None:
    """The fields of a file written by pack_checked, or None when the file does not exist."""
    try:
        with open(path, "rb") as file:
            data = file.read(len(magic) + layout.size + 8)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StorageError(f"{path}: cannot read: {error}") from error
    size = len(magic) + layout.size + 4
    if len(data) != size:
        raise CorruptionError(f"{path}: offset 0: {len(data)} bytes, expected {size}")
    if data[: len(magic)] != magic:
        raise CorruptionError(f"{path}: offset 0: bad magic {data[: len(magic)]!r}")
    (stored,) = struct.unpack_from("<I", data, size - 4)
    if crc32c(data[: size - 4]) != stored:
        raise CorruptionError(f"{path}: offset {size - 4}: CRC-32C mismatch")
    return layout.unpack_from(data, len(magic))


def lock_directory(directory: str, lock_name: str, what: str, holder: str = "process") -> int:
    """flock `directory`/`lock_name` for this process; returns the fd that holds the lock.

    Raises StorageError naming `what` when another process (or another open of the same
    directory in this one) holds it: two owners of one directory would overwrite each other.
    """
    fd = os.open(os.path.join(directory, lock_name), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"{directory}: {what} is open in another {holder}") from None
    return fd
