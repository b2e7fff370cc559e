"""Finding damaged files in a data dir and setting them aside (eventstream/node/damage.py)."""

from __future__ import annotations

from pathlib import Path

from eventstream.node.damage import check_data_dir, set_aside
from eventstream.storage.hard_state import HARD_STATE_FILE, HardState
from tests.faults.file_damage import flip_byte


def test_a_sound_hard_state_passes_and_a_flipped_byte_is_named(tmp_path: Path) -> None:
    HardState(5, 2, 40).save(str(tmp_path))
    assert check_data_dir(tmp_path).ok
    flip_byte(tmp_path / HARD_STATE_FILE, 9)
    result = check_data_dir(tmp_path)
    assert not result.ok
    assert HARD_STATE_FILE in result.problems[0] and "offset" in result.problems[0]


def test_set_aside_moves_the_recoverable_files_and_keeps_them(tmp_path: Path) -> None:
    HardState(5, 2, 40).save(str(tmp_path))
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "x.wal").write_bytes(b"log bytes")
    (tmp_path / "state").mkdir()
    first = set_aside(tmp_path)
    assert first == tmp_path / "damaged-1"
    assert (first / "log" / "x.wal").read_bytes() == b"log bytes"
    assert (first / HARD_STATE_FILE).is_file() and (first / "state").is_dir()
    assert not (tmp_path / "log").exists() and not (tmp_path / HARD_STATE_FILE).exists()
    assert set_aside(tmp_path) == tmp_path / "damaged-2", "an earlier damaged copy is never overwritten"
