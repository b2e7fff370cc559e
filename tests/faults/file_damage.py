"""Damage to a stopped node's files, as a failing disk or a stray write does it: a flipped byte
or a cut in the middle of a sealed WAL segment (never the tail, which a crash can tear), a
flipped byte in the hard state, in a file of the newest snapshot."""

from __future__ import annotations

import os
import random
from pathlib import Path

from eventstream.storage.hard_state import HARD_STATE_FILE
from eventstream.storage.segment_log import SEGMENT_SUFFIX

TARGETS = ("log-flip", "log-cut", "hard-state", "snapshot")


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def damageable(data_dir: Path) -> list[str]:
    """The TARGETS this data dir has a file for."""
    found = []
    if len(list((data_dir / "log").glob(f"*{SEGMENT_SUFFIX}"))) >= 2:
        found += ["log-flip", "log-cut"]
    if (data_dir / HARD_STATE_FILE).is_file():
        found.append("hard-state")
    if _snapshot_files(data_dir):
        found.append("snapshot")
    return found


def _snapshot_files(data_dir: Path) -> list[Path]:
    snapshots = sorted((data_dir / "state" / "snapshots").glob("snap-*"))
    if not snapshots:
        return []
    return sorted(p for p in snapshots[-1].rglob("*") if p.is_file() and p.name != "MANIFEST.json"
                  and p.stat().st_size > 0)


def damage(data_dir: Path, target: str, rng: random.Random) -> tuple[Path, str]:
    """Damage one file of `data_dir` (whose node is stopped); returns the file and what was done."""
    if target in ("log-flip", "log-cut"):
        sealed = sorted((data_dir / "log").glob(f"*{SEGMENT_SUFFIX}"))[:-1]
        victim = rng.choice(sealed)
        size = victim.stat().st_size
        offset = rng.randrange(size // 4, 3 * size // 4)
        if target == "log-flip":
            flip_byte(victim, offset)
            return victim, f"flipped a byte of {victim} at offset {offset}"
        os.truncate(victim, offset)
        return victim, f"cut {victim} at offset {offset} of {size}"
    if target == "hard-state":
        victim = data_dir / HARD_STATE_FILE
        offset = rng.randrange(victim.stat().st_size)
        flip_byte(victim, offset)
        return victim, f"flipped a byte of {victim} at offset {offset}"
    if target == "snapshot":
        victim = max(_snapshot_files(data_dir), key=lambda p: p.stat().st_size)
        offset = rng.randrange(victim.stat().st_size)
        flip_byte(victim, offset)
        return victim, f"flipped a byte of {victim} at offset {offset}"
    raise ValueError(f"unknown damage target {target!r}")
