"""What a status request costs a busy leader: plain, and with the state digest.

    python tools/status_cost.py [--seconds 25] [--payload-bytes 1000] [--replication inprocess]

Starts 3 local nodes, loads them for --seconds (esc-bench's closed loop, 2 clients x 8 requests
of 100 events), then asks the leader for GET /status twice, then GET /status?digest=1 while
polling plain GET /status every 20 ms, and GET /status once more. Prints each answer's time and
the node's term and role as it answered, and the slowest plain answer while the digest was
computed: the digest reads every retained event, and the node must go on meanwhile (a role that
changed is a leadership the digest cost).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from esc_bench.params import LoadParams  # noqa: E402
from esc_bench.run import run_load  # noqa: E402
from eventstream.local_cluster import LocalCluster  # noqa: E402


def timed_status(http: str, query: str) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    with urllib.request.urlopen(f"http://{http}/status{query}", timeout=120) as resp:
        body = json.loads(resp.read())
    return time.monotonic() - started, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--payload-bytes", type=int, default=1000)
    parser.add_argument("--replication", default="inprocess", choices=("inprocess", "pool"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="esc-status-cost-"))
    cluster = LocalCluster(root, 3, replication=args.replication, batch_size=100, wal_sync=False,
                           log_level="warning").start()
    try:
        leader = cluster.leader(timeout=20.0)
        pids = {str(k): n.proc.pid for k, n in cluster.nodes.items() if n.proc is not None}
        params = LoadParams(2, 8, 100, args.payload_bytes, keys=1000, ids=False, read_ratio=0.0,
                            duration_s=args.seconds, events=None, warmup_s=0.5, rate_events_per_s=None,
                            time_limit_s=args.seconds + 60, request_timeout_s=10.0, report_interval_s=1.0, seed=1)
        outcome = run_load(params, cluster.addresses, pids, lambda progress: None)
        held = sum(f.stat().st_size for f in cluster.nodes[leader].data_dir.rglob("*") if f.is_file())
        print(f"{sum(w['events'] for w in outcome.workers):,} events acknowledged; the leader's data dir "
              f"holds {held / 1e9:.2f} GB")
        http = cluster.nodes[leader].http

        def show(query: str, seconds: float, body: dict[str, Any]) -> None:
            print(f"GET /status{query:<10} {seconds * 1000:9.1f} ms   term {body['term']}, {body['role']}")

        for _ in range(2):
            show("", *timed_status(http, ""))
        asked: list[tuple[float, dict[str, Any]]] = []
        digest = threading.Thread(target=lambda: asked.append(timed_status(http, "?digest=1")))
        digest.start()
        meanwhile: list[float] = []
        while digest.is_alive():
            meanwhile.append(timed_status(http, "")[0])
            time.sleep(0.02)
        digest.join()
        show("?digest=1", *asked[0])
        print(f"  meanwhile {len(meanwhile)} plain GET /status, the slowest {max(meanwhile, default=0) * 1000:.1f} ms")
        show("", *timed_status(http, ""))
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
