"""`esc-bench storage` and tools/segment_inspector.py: they run, bounded, and say what they saw."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from esc_bench.cli import main
from eventstream.cli import main as esc
from eventstream.storage import SegmentLog

REPOSITORY = Path(__file__).resolve().parents[2]


def test_esc_bench_storage_prints_a_row_per_scenario(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["storage", "--seconds", "0.05", "--quick",
                                       "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split()[:4] == ["path", "wal_sync", "batch", "payload"]
    rows = [line for line in lines[2:] if line.strip()]
    assert len(rows) == 9
    assert sum("log/plain MB/s" in row for row in rows) == 2
    assert os.listdir(tmp_path) == []  # every run cleans up after itself


def test_esc_bench_storage_rejects_bad_options() -> None:
    result = CliRunner().invoke(main, ["storage", "--seconds", "-1"])
    assert result.exit_code != 0
    assert "Invalid value" in result.output


def test_segment_inspector_reports_a_torn_tail(tmp_path: Path) -> None:
    with SegmentLog.open(str(tmp_path), segment_bytes=1024) as log:
        log.append([(i, 1, b"x" * 40) for i in range(1, 60)])
    last = sorted(tmp_path.glob("*.wal"))[-1]
    with open(last, "ab") as file:
        file.write(b"torn")
    result = subprocess.run(
        [sys.executable, str(REPOSITORY / "tools" / "segment_inspector.py"), str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert last.name in result.stdout
    assert "torn/corrupt tail" in result.stdout
    assert "4 bytes after it" in result.stdout


def test_esc_wal_inspect_reads_padded_records(tmp_path: Path) -> None:
    """Large records appended alone with wal_sync off sit after padding; both scanners (native
    for the table, reference for --records) walk over it."""
    with SegmentLog.open(str(tmp_path), wal_sync=False) as log:
        log.append([(1, 1, b"small")])
        log.append([(2, 1, b"L" * 70_000)])
        log.append([(3, 2, b"L" * 65_536)])
    result = CliRunner().invoke(esc, ["wal", "inspect", str(tmp_path), "--records"])
    assert result.exit_code == 0, result.output
    assert "3 valid records, all CRCs ok" in result.output
    assert "index 1 term 1 payload 5 bytes\n" in result.output
    assert "index 2 term 1 payload 70000 bytes after 65475 bytes of padding" in result.output
    assert "index 3 term 2 payload 65536 bytes after 61044 bytes of padding" in result.output


def test_esc_wal_inspect_reads_zeros_written_ahead_as_ok_and_anything_else_as_torn(tmp_path: Path) -> None:
    """An open (or killed) wal_sync log ends with zeros written ahead of its records; that is
    no damage. A byte that is not zero after the last record still is."""
    live = tmp_path / "live"
    with SegmentLog.open(str(live), wal_sync=True) as log:
        log.append([(i, 1, b"p" * 30) for i in range(1, 6)])
        (segment,) = live.glob("*.wal")
        image = segment.read_bytes()  # as a SIGKILL would leave it
    assert len(image) > 1 << 20
    for name, data, expected in (
        ("zeros", image, "zero bytes written ahead"),
        ("torn", image[:-100] + b"\x07" + image[-99:], "torn/corrupt tail"),
    ):
        directory = tmp_path / name
        directory.mkdir()
        (directory / segment.name).write_bytes(data)
        result = CliRunner().invoke(esc, ["wal", "inspect", str(directory)])
        assert result.exit_code == 0, result.output
        assert expected in result.output
        assert " 5 valid records" in result.output
