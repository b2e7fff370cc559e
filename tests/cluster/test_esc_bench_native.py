"""`esc-bench --engine native` against a real 3-node cluster: every event it counts was
acknowledged, and afterwards the normal client reads each of them back exactly once."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventstream.client import Client
from tests.cluster.harness import LocalCluster

pytestmark = pytest.mark.timeout(120)

EVENTS = 2000
BATCH = 5
PAYLOAD_BYTES = 40
SEED = 3
QUEUES = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, replication_mode: str) -> Iterator[LocalCluster]:
    c = LocalCluster(Path(tmp_path_factory.mktemp("native-bench")), 3, queue_count=QUEUES,
                     replication=replication_mode).start()
    try:
        c.leader()
        yield c
    finally:
        c.stop()


def test_every_counted_event_is_readable_exactly_once(cluster: LocalCluster, tmp_path: Path) -> None:
    report_path = tmp_path / "native.json"
    result = subprocess.run(
        [sys.executable, "-m", "esc_bench.cli", "--cluster", ",".join(cluster.addresses),
         "--engine", "native", "--clients", "2", "--concurrency", "8", "--batch-size", str(BATCH),
         "--payload-bytes", str(PAYLOAD_BYTES), "--keys", "50", "--events", str(EVENTS),
         "--warmup", "0", "--seed", str(SEED), "--report-interval", "0.5", "--time-limit", "60",
         "--json", str(report_path)],
        capture_output=True, text=True, timeout=100, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "engine native" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["params"]["engine"] == "native"
    assert report["errors"] == {} and report["duplicates"] == 0
    assert report["events"] == EVENTS and report["requests"] == EVENTS // BATCH
    assert report["latency_ms"]["count"] == EVENTS // BATCH
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    assert report["events_per_s"] > 0 and report["loadgen_cpu_s"] > 0
    assert report["timeline"] and report["timeline"][-1]["errors"] == 0

    # Each load process sends its own payload: random.Random(seed + index).randbytes(n).
    payloads = {random.Random(SEED + k).randbytes(PAYLOAD_BYTES) for k in range(2)}
    with Client(cluster.addresses) as client:
        events = [e for queue in range(QUEUES) for e in client.read_to_end(queue)]
    ids = [e.event_id for e in events]
    assert len(events) == EVENTS, "an event counted as acknowledged is missing, or one is extra"
    assert len(set(ids)) == EVENTS and all(i is not None and len(i) == 16 for i in ids)
    assert {e.payload for e in events} <= payloads
    assert {e.key for e in events} <= {b"key-%d" % k for k in range(50)}


def test_the_engine_follows_a_new_leader_when_the_old_one_is_killed(cluster: LocalCluster, tmp_path: Path) -> None:
    """Runs last in this module: it leaves the cluster one node short."""
    report_path = tmp_path / "failover.json"
    old = cluster.leader()
    proc = subprocess.Popen(
        [sys.executable, "-m", "esc_bench.cli", "--cluster", ",".join(cluster.addresses),
         "--engine", "native", "--clients", "1", "--concurrency", "8", "--batch-size", "1",
         "--duration", "8", "--warmup", "0", "--timeout", "3", "--json", str(report_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(3.0)
        killed_at_us = time.time_ns() // 1000
        cluster.nodes[old].kill()
        cluster.leader(exclude=(old,))
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    report = json.loads(report_path.read_text())
    assert report["events"] > 0 and report["duplicates"] == 0
    assert report["client_leader_redirects"] >= 1
    assert set(report["errors"]) <= {"ConnectFailed", "ConnectionClosed", "NotLeader", "Unavailable", "NoAnswer"}
    alive = [node.address for node_id, node in cluster.nodes.items() if node_id != old]
    with Client(alive) as client:
        events = [e for queue in range(QUEUES) for e in client.read_to_end(queue)]
    assert len({e.event_id for e in events}) == len(events)
    # Events stamped after the kill can only have reached the log through the new leader.
    assert sum(e.timestamp > killed_at_us for e in events) > 0
