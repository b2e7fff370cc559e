"""`esc-bench --engine native` against a cluster with TLS and tokens on: the engine's own TLS
(csrc/tls_link.h) and its AUTH carry every event, answers larger than one TLS record included;
a token the cluster does not know is refused on every connection and appends nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from esc_bench._load_engine import RUN_DONE, LoadEngine
from eventstream.client import Client
from eventstream.replication._spsc_ring import TLS_AVAILABLE
from eventstream.tls import init_certs
from tests.cluster.harness import LocalCluster

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not TLS_AVAILABLE, reason="this build has no native TLS (no OpenSSL headers)")]

QUEUES = 2
BATCH = 1000  # an answer of 13 KB: more than one TLS record's room in the engine's first buffer


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, replication_mode: str) -> Iterator[LocalCluster]:
    root = Path(tmp_path_factory.mktemp("secure-bench"))
    init_certs(root / "tls", 3, ["127.0.0.1"])
    c = LocalCluster(root / "nodes", 3, queue_count=QUEUES, replication=replication_mode,
                     tls_dir=str(root / "tls")).start()
    try:
        c.create_token("ops")
        yield c
    finally:
        c.stop()


def _bench(cluster: LocalCluster, token: str, report_path: Path, events: int) -> subprocess.CompletedProcess[str]:
    assert cluster.tls_ca is not None
    return subprocess.run(
        [sys.executable, "-m", "esc_bench.cli", "--cluster", ",".join(cluster.addresses), "--engine", "native",
         "--clients", "1", "--concurrency", "4", "--batch-size", str(BATCH), "--events", str(events),
         "--warmup", "0", "--timeout", "3", "--time-limit", "30", "--ca", cluster.tls_ca, "--token", token,
         "--json", str(report_path)],
        capture_output=True, text=True, timeout=100, check=False,
    )


def test_the_native_engine_appends_over_tls_with_a_token(cluster: LocalCluster, tmp_path: Path) -> None:
    writer = cluster.create_token("writer", ("append",))
    result = _bench(cluster, writer, tmp_path / "ok.json", 20 * BATCH)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "ok.json").read_text())
    assert report["errors"] == {} and report["events"] == 20 * BATCH and report["duplicates"] == 0
    with Client(cluster.addresses, tls_ca=cluster.tls_ca, token=cluster.token) as client:
        stored = sum(len(client.read_to_end(q)) for q in range(QUEUES))
    assert stored == 20 * BATCH


def test_an_unknown_token_is_refused_and_appends_nothing(cluster: LocalCluster, tmp_path: Path) -> None:
    with Client(cluster.addresses, tls_ca=cluster.tls_ca, token=cluster.token) as client:
        before = sum(len(client.read_to_end(q)) for q in range(QUEUES))
    # The command checks the token before it starts the load: one line, exit 1.
    result = _bench(cluster, "esc_not-a-token", tmp_path / "refused.json", 4 * BATCH)
    assert result.returncode == 1 and "unknown or revoked token" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "refused.json").exists()
    # The engine itself: every connection's AUTH is refused, no request is answered OK.
    assert cluster.tls_ca is not None
    engine = LoadEngine(2, BATCH, b"x" * 100, 10, 0, True, 3.0)
    engine.set_tls(cluster.tls_ca)
    engine.set_token("esc_not-a-token")
    host, port = cluster.nodes[cluster.leader()].address.rsplit(":", 1)
    engine.set_target(host, int(port))
    now = time.monotonic()
    engine.set_schedule(now, now + 1.0, None)
    while time.monotonic() < now + 1.5 and engine.run(time.monotonic() + 0.2) != RUN_DONE:
        pass
    figures = engine.figures()
    assert figures["events_acked"] == 0 and figures["errors"].get("Refused", 0) >= 2, figures
    with Client(cluster.addresses, tls_ca=cluster.tls_ca, token=cluster.token) as client:
        assert sum(len(client.read_to_end(q)) for q in range(QUEUES)) == before
