"""Sustained appends against a local 3-node cluster, watching the dedup table: the leader's
remembered ids (all, and those the client library generated), OVERLOADED answers and each
node's RSS every 10 s. Benchmarks run seconds; a full dedup table shows only after minutes.

    python tools/dedup_sustained.py --seconds 150 --dedup-ids-max 5000000 --rate 50000

Events carry random ids marked generated, as the client library gives id-less events. With
--rate the load is an open loop of the Python client engine; without, the native engine as
fast as it goes. The cluster runs wal_sync off at batch 1000 (the logging profile's shape).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

from esc_bench.params import LoadParams
from esc_bench.run import LoadError, run_load
from eventstream.client import Client
from eventstream.local_cluster import LocalCluster

SAMPLE_S = 10.0
_SAMPLE = re.compile(r'^(esc_[a-zA-Z_]+(?:\{[^}]*\})?)\s+([0-9.e+-]+)$', re.M)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {m.group(1): float(m.group(2)) for m in _SAMPLE.finditer(text)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="load duration (bounded: at most 1800)")
    parser.add_argument("--dedup-ids-max", type=int, default=None, help="set the cluster's dedup_ids_max first")
    parser.add_argument("--rate", type=float, default=None, help="events/s over all clients (open loop)")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 1800:
        parser.error("--seconds must be in (0, 1800]")
    root = Path(tempfile.mkdtemp(prefix="esc-dedup-sustained-"))
    cluster = LocalCluster(root, 3, batch_size=1000, wal_sync=False, log_level="warning").start()
    try:
        leader = cluster.leader(timeout=20)
        if args.dedup_ids_max:
            with Client(cluster.addresses) as client:
                client.config_update({"dedup_ids_max": args.dedup_ids_max})
        params = LoadParams(2, 8, 1000, 100, keys=1000, ids=True, read_ratio=0.0, duration_s=args.seconds,
                            events=None, warmup_s=1, rate_events_per_s=args.rate,
                            time_limit_s=args.seconds + 60, request_timeout_s=10, report_interval_s=5,
                            seed=1, engine="native" if args.rate is None else "client")
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not stop.wait(SAMPLE_S):
                metrics = scrape(cluster.http_port + leader - 1)
                rss = [psutil.Process(n.proc.pid).memory_info().rss >> 20 for n in cluster.nodes.values() if n.proc]
                refused = sum(v for k, v in metrics.items() if "OVERLOADED" in k)
                print(f"t={time.monotonic() - started:5.0f}s dedup_ids={metrics.get('esc_dedup_ids', 0):>12,.0f} "
                      f"generated={metrics.get('esc_dedup_generated_ids', 0):>12,.0f} "
                      f"overloaded_answers={refused:,.0f} rss_mib={rss}", flush=True)

        threading.Thread(target=sample, daemon=True).start()
        pids = {str(k): n.proc.pid for k, n in cluster.nodes.items() if n.proc}
        try:
            outcome = run_load(params, cluster.addresses, pids, lambda _: None)
        except LoadError as exc:
            # A table that stays full keeps the clients retrying past the planned end.
            print(f"load stopped: {exc}")
            return 1
        finally:
            stop.set()
        events = sum(w["events"] for w in outcome.workers)
        window = max(w["window_s"] for w in outcome.workers)
        errors: dict[str, int] = {}
        for w in outcome.workers:
            for name, count in (w.get("errors") or {}).items():
                errors[name] = errors.get(name, 0) + count
        print(f"acked events/s over {window:.0f} s: {events / window:,.0f}; errors {errors or 'none'}")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
