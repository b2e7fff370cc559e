"""HardState: atomic, checked persistence of (term, voted_for, commit)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstream.storage import CorruptionError, HardState, StorageError
from eventstream.storage.hard_state import HARD_STATE_FILE


def test_missing_file_is_the_initial_state(tmp_path: Path) -> None:
    assert HardState.load(str(tmp_path)) == HardState(0, None, 0)


@given(
    term=st.integers(0, 2**64 - 1),
    voted_for=st.none() | st.integers(0, 2**64 - 2),
    commit=st.integers(0, 2**64 - 1),
)
def test_round_trip(tmp_path_factory: pytest.TempPathFactory, term: int,
                    voted_for: int | None, commit: int) -> None:
    directory = str(tmp_path_factory.mktemp("hard-state"))
    state = HardState(term, voted_for, commit)
    state.save(directory)
    assert HardState.load(directory) == state


def test_golden_file_bytes(tmp_path: Path) -> None:
    HardState(term=5, voted_for=2, commit=9).save(str(tmp_path))
    data = (tmp_path / HARD_STATE_FILE).read_bytes()
    assert data[:32] == (b"ESCHARD1" + (5).to_bytes(8, "little") + (3).to_bytes(8, "little")
                         + (9).to_bytes(8, "little"))
    assert len(data) == 36


def test_save_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    HardState(1, 1, 1).save(str(tmp_path))
    HardState(2, None, 1).save(str(tmp_path))
    assert HardState.load(str(tmp_path)) == HardState(2, None, 1)
    assert os.listdir(tmp_path) == [HARD_STATE_FILE]


@pytest.mark.parametrize("position", [0, 9, 20, 33])
def test_damaged_file_is_reported_with_offset(tmp_path: Path, position: int) -> None:
    HardState(7, 1, 3).save(str(tmp_path))
    path = tmp_path / HARD_STATE_FILE
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match=f"{HARD_STATE_FILE}: offset"):
        HardState.load(str(tmp_path))


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    HardState(7, 1, 3).save(str(tmp_path))
    os.truncate(tmp_path / HARD_STATE_FILE, 20)
    with pytest.raises(CorruptionError, match="20 bytes"):
        HardState.load(str(tmp_path))


@pytest.mark.parametrize("fields", [(-1, None, 0), (0, -1, 0), (0, None, 2**64)])
def test_rejects_out_of_range_fields(fields: tuple[int, int | None, int]) -> None:
    with pytest.raises(StorageError):
        HardState(*fields)
