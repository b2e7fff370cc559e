"""tools/snapshot_inspector.py: describes a snapshot, verifies it, and names damage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from eventstream.state import StateMachine, encode_dedup_add, encode_set_event
from eventstream.storage.codec import Event

REPOSITORY = Path(__file__).resolve().parents[2]
TOOL = str(REPOSITORY / "tools" / "snapshot_inspector.py")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, TOOL, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_snapshot_inspector_describes_verifies_and_names_damage(tmp_path: Path) -> None:
    machine = StateMachine.open(str(tmp_path / "state"))
    machine.apply(1, 2, encode_set_event([Event(None, None, 3, i, b"x" * 10) for i in range(7)]))
    machine.apply(2, 2, encode_dedup_add([(b"id", 1)]))
    folder = machine.snapshot()
    machine.close()

    described = run(folder, "--verify")
    assert described.returncode == 0, described.stderr
    assert "last index 2, last term 2" in described.stdout
    assert "queue 3: offsets [0, 7), 1 segments" in described.stdout
    assert "dedup: 1 remembered ids" in described.stdout
    assert "verify: ok" in described.stdout

    segment = next(Path(folder, "queues").rglob("*.qseg"))
    data = bytearray(segment.read_bytes())
    data[-1] ^= 1
    os.unlink(segment)
    segment.write_bytes(bytes(data))
    damaged = run(folder, "--verify")
    assert damaged.returncode == 1
    assert "DAMAGED" in damaged.stderr and "CRC" in damaged.stderr
    assert "Traceback" not in damaged.stderr

    missing = run(str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "not a usable snapshot folder" in missing.stderr
