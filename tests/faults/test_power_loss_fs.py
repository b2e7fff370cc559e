"""The power-loss filesystem's own rules, called directly (no mount): reads see unsynced writes,
fsync makes them durable, and a new instance over the same backing dir (what a power cut
leaves) sees only what was synced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.power_loss import power_loss_unavailable_reason

reason = power_loss_unavailable_reason()
if reason is not None and "mfusepy" in reason:
    pytest.skip(reason, allow_module_level=True)

from tests.faults.power_loss_fs import PowerLossFS  # noqa: E402  (needs libfuse at import)


def _reboot(fs: PowerLossFS) -> PowerLossFS:
    return PowerLossFS(fs.backing)


def test_unsynced_writes_are_read_back_and_lost_at_power_cut(tmp_path: Path) -> None:
    fs = PowerLossFS(str(tmp_path))
    fd = fs.create("/seg", 0o644)
    fs.write("/seg", b"durable|", 0, fd)
    fs.fsync("/seg", 1, fd)
    fs.write("/seg", b"volatile", 8, fd)
    assert fs.read("/seg", 100, 0, fd) == b"durable|volatile"
    assert fs.getattr("/seg")["st_size"] == 16
    fs.release("/seg", fd)
    after = _reboot(fs)
    fd = after.open("/seg", os.O_RDONLY)
    assert after.read("/seg", 100, 0, fd) == b"durable|"
    after.release("/seg", fd)


def test_truncate_then_rewrite_is_durable_only_when_synced(tmp_path: Path) -> None:
    fs = PowerLossFS(str(tmp_path))
    fd = fs.create("/f", 0o644)
    fs.write("/f", b"0123456789", 0, fd)
    fs.fsync("/f", 0, fd)
    fs.truncate("/f", 4, fd)
    fs.write("/f", b"xy", 6, fd)
    assert fs.read("/f", 100, 0, fd) == b"0123\0\0xy"
    assert _reboot(fs).getattr("/f")["st_size"] == 10, "the cut was never synced"
    fs.fsync("/f", 0, fd)
    fs.release("/f", fd)
    assert (tmp_path / "f").read_bytes() == b"0123\0\0xy"


def test_hard_links_share_unsynced_data_and_unlink_forgets_it(tmp_path: Path) -> None:
    fs = PowerLossFS(str(tmp_path))
    fd = fs.create("/a", 0o644)
    fs.write("/a", b"shared", 0, fd)
    fs.link("/b", "/a")
    fd_b = fs.open("/b", os.O_RDONLY)
    assert fs.read("/b", 10, 0, fd_b) == b"shared"
    fs.release("/b", fd_b)
    fs.release("/a", fd)
    fs.unlink("/a")
    fs.unlink("/b")
    assert not fs.unsynced, "a file with no name left keeps no unsynced data"
