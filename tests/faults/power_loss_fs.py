"""A FUSE filesystem that forgets what was never synced: the power-loss fault.

A process crash (SIGKILL) loses nothing the process had written: the kernel's page cache still
holds it and writes it back later. A power loss loses every write that no fsync/fdatasync made
durable. This layer makes that difference testable on one machine: a node's data dir is mounted
through it, over a backing directory that plays the disk.

- write and truncate land in this process's memory (a per-inode overlay of dirty extents and a
  pending size); reads see them, as reads see the page cache;
- fsync and fdatasync of a file write its overlay to the backing file (the disk);
- "power loss" is this process dying (SIGKILL): the overlay is gone, and a new mount over the same
  backing directory shows only what was synced.

Metadata (create, rename, link, unlink, mkdir) goes to the backing directory at once, as if
every directory were synced after each change: this layer tests lost file data, not lost
directory entries (docs/faults.md says what that leaves out).

Run as a process of its own, in the foreground until killed:

    python -m tests.faults.power_loss_fs BACKING_DIR MOUNT_POINT
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from mfusepy import FUSE, Operations

STAT_FIELDS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime",
               "st_ctime", "st_blocks", "st_blksize")


@dataclass(slots=True)
class Unsynced:
    """What a file holds beyond its backing copy: the size it has now, the length of the backing
    copy still valid (a truncation since the last sync cuts it), and the writes since, in order."""

    size: int
    backing_valid: int
    extents: list[tuple[int, bytearray]] = field(default_factory=list)

    def write(self, offset: int, data: bytes) -> None:
        if self.extents:
            start, last = self.extents[-1]
            if start + len(last) == offset:  # a sequential write grows the last extent
                last += data
                self.size = max(self.size, offset + len(data))
                return
        self.extents.append((offset, bytearray(data)))
        self.size = max(self.size, offset + len(data))

    def truncate(self, length: int) -> None:
        self.size = length
        self.backing_valid = min(self.backing_valid, length)
        kept = []
        for start, data in self.extents:
            if start < length:
                kept.append((start, data[: length - start]))
        self.extents = kept


class PowerLossFS(Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, backing: str) -> None:
        self.backing = os.path.realpath(backing)
        self._mutex = threading.Lock()
        self.unsynced: dict[int, Unsynced] = {}  # by backing inode, so hard links share it
        self.inode_of: dict[int, int] = {}  # open handle -> backing inode

    def _path(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    # ---------------------------------------------------------------- files and their data

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self._path(path))
        attrs = {name: getattr(st, name) for name in STAT_FIELDS}
        for name in ("st_atime", "st_mtime", "st_ctime"):
            attrs[name] = getattr(st, name + "_ns")
        with self._mutex:
            pending = self.unsynced.get(st.st_ino)
            if pending is not None:
                attrs["st_size"] = pending.size
        return attrs

    def open(self, path: str, flags: int) -> int:
        fd = os.open(self._path(path), os.O_RDWR if os.path.isfile(self._path(path)) else os.O_RDONLY)
        with self._mutex:
            self.inode_of[fd] = os.fstat(fd).st_ino
        return fd

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        fd = os.open(self._path(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        with self._mutex:
            self.inode_of[fd] = os.fstat(fd).st_ino
        return fd

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            pending = self.unsynced.get(self.inode_of[fh])
            if pending is None:
                return os.pread(fh, size, offset)
            end = min(offset + size, pending.size)
            if offset >= end:
                return b""
            out = bytearray(end - offset)
            if offset < pending.backing_valid:
                base = os.pread(fh, min(end, pending.backing_valid) - offset, offset)
                out[: len(base)] = base
            for start, data in pending.extents:
                lo, hi = max(start, offset), min(start + len(data), end)
                if lo < hi:
                    out[lo - offset : hi - offset] = data[lo - start : hi - start]
            return bytes(out)

    def _pending(self, inode: int, fd: int) -> Unsynced:
        pending = self.unsynced.get(inode)
        if pending is None:
            size = os.fstat(fd).st_size
            pending = self.unsynced[inode] = Unsynced(size, size)
        return pending

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            self._pending(self.inode_of[fh], fh).write(offset, data)
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        fd = fh if fh is not None else os.open(self._path(path), os.O_RDWR)
        try:
            with self._mutex:
                self._pending(os.fstat(fd).st_ino, fd).truncate(length)
        finally:
            if fh is None:
                os.close(fd)
        return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        # Reserving blocks changes nothing a reader sees; growing the file is a truncate.
        if mode == 0:
            with self._mutex:
                pending = self._pending(self.inode_of[fh], fh)
                if offset + size > pending.size:
                    pending.size = offset + size
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            pending = self.unsynced.pop(self.inode_of[fh], None)
            if pending is not None:
                # The backing directory is the disk: once written there, a power loss keeps it.
                os.ftruncate(fh, pending.backing_valid)
                for start, data in pending.extents:
                    os.pwrite(fh, data, start)
                os.ftruncate(fh, pending.size)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0  # close(2) does not sync

    def release(self, path: str, fh: int) -> int:
        with self._mutex:
            self.inode_of.pop(fh, None)
        os.close(fh)
        return 0

    # ---------------------------------------------------------------- directories and names

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._path(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._path(path))
        return 0

    def _forget_if_last_link(self, backing_path: str) -> None:
        try:
            st = os.lstat(backing_path)
        except FileNotFoundError:
            return
        if st.st_nlink <= 1:
            with self._mutex:
                self.unsynced.pop(st.st_ino, None)

    def unlink(self, path: str) -> int:
        target = self._path(path)
        self._forget_if_last_link(target)
        os.unlink(target)
        return 0

    def rename(self, old: str, new: str) -> int:
        self._forget_if_last_link(self._path(new))
        os.rename(self._path(old), self._path(new))
        return 0

    def link(self, target: str, source: str) -> int:
        os.link(self._path(source), self._path(target))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._path(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._path(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._path(path), ns=times) if times else os.utime(self._path(path))
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._path(path))
        return {name: getattr(sv, name) for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                      "f_files", "f_ffree", "f_favail", "f_flag", "f_namemax")}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.faults.power_loss_fs BACKING_DIR MOUNT_POINT", file=sys.stderr)
        return 2
    backing, mount = argv
    FUSE(PowerLossFS(backing), mount, foreground=True, nothreads=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
