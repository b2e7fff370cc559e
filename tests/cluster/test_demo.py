"""`make demo` runs `esc demo`; a shortened run must pass all of its own checks."""

import pytest

from eventstream.demo import run_demo

pytestmark = pytest.mark.timeout(180)


def test_short_demo_passes_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(duration_s=6.0, clients=2, batch=5) == 0
    out = capsys.readouterr().out
    assert "[ok] every acknowledged event readable" in out
    assert "[ok] three nodes, one state digest" in out
    assert "FAILED" not in out
