"""Replication modes: esc-bench's load against a fresh 3-node cluster in
replication = "inprocess" and "pool", back to back in one run. Figures (events/s, client p99,
the leader's CPU split between its own process and its workers) go to extra_info; the full
matrix (3 and 5 nodes, batch 100 and 1000, wal_sync on and off) is
`python -m esc_bench.replication_modes`. Figures in bench/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from esc_bench.replication_modes import compare

SECONDS = 3.0


@pytest.mark.parametrize("wal_sync", [False, True], ids=["wal_sync_off", "wal_sync_on"])
def test_pool_vs_inprocess_3_nodes_batch_100(benchmark: Any, tmp_path: Path, wal_sync: bool) -> None:
    rows = benchmark.pedantic(compare, args=(3, 100, wal_sync, SECONDS, tmp_path), rounds=1, iterations=1)
    by_mode = {r.mode: r for r in rows}
    for mode, r in by_mode.items():
        benchmark.extra_info[mode] = asdict(r)
    inproc, pool = by_mode["inprocess"], by_mode["pool"]
    assert inproc.events > 0 and pool.events > 0  # both modes carried the load
    benchmark.extra_info["pool_over_inprocess_events_per_s"] = round(pool.events_per_s / inproc.events_per_s, 3)
    benchmark.extra_info["pool_over_inprocess_p99"] = round(pool.p99_ms / inproc.p99_ms, 3)
