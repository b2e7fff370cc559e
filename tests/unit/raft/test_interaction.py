"""Runs every script in testdata/ and compares with its golden output (see interaction.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.raft.interaction import Interaction, parse, run_file

TESTDATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


def test_scripts_exist() -> None:
    assert len(SCRIPTS) >= 8


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script(path: Path) -> None:
    expected, actual = run_file(path)
    assert actual == expected, f"{path.name} differs; rerun with ESC_REWRITE_GOLDEN=1 to update"


def test_parser_requires_separator() -> None:
    with pytest.raises(ValueError, match="----"):
        parse("campaign 1\nok\n")


def test_unknown_command_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown command"):
        Interaction().run("frobnicate 1")
