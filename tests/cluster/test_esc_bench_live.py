"""esc-bench end to end: a local 3-node cluster started by --local, a short bounded load, and the
JSON report it leaves behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def test_local_run_acknowledges_events_and_reports_every_figure(tmp_path: Path) -> None:
    report_path = tmp_path / "run.json"
    result = subprocess.run(
        [sys.executable, "-m", "esc_bench.cli", "--local", "3", "--clients", "2",
         "--concurrency", "2", "--batch-size", "50", "--duration", "1.5", "--warmup", "0.5",
         "--read-ratio", "0.1", "--report-interval", "0.5", "--json", str(report_path)],
        capture_output=True, text=True, timeout=100, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "events/s" in result.stdout and "CPU us per event" in result.stdout
    assert "events/s" in result.stderr  # the progress line
    report = json.loads(report_path.read_text())
    assert report["events"] > 0 and report["events"] % 50 == 0
    assert report["events_per_s"] > 0 and report["mb_per_s"] > 0
    assert report["errors"] == {} and report["duplicates"] == 0
    assert report["latency_ms"]["count"] * 50 == report["events"]
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    assert report["reads"] > 0
    assert [n["node"] for n in report["nodes"]] == ["1", "2", "3"]
    assert all(n["cpu_s"] > 0 and n["peak_rss_bytes"] > 0 for n in report["nodes"])
    assert report["cpu_us_per_event"] > 0
    assert report["params"]["target"]["local_nodes"] == 3
    assert len(report["timeline"]) >= 3
