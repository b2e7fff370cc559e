"""The leader's main-thread CPU per event, one measurement, printed as one JSON line.

    python tools/leader_thread_cost.py --replication pool|inprocess [--nodes 3] [--batch 100]
                                       [--clients 2] [--concurrency 8] [--seconds 8] [--secure]

Starts a local cluster (wal_sync on), loads it with esc-bench's client processes (closed loop,
ids on, 100-byte events), and reads the leader's main thread's CPU time (the thread whose id is
the pid: the event loop that runs Raft, the log, apply and the clients) from the kernel before
and after the measured load, after a warm-up load of its own. Also reports the leader process
in all, its replication workers, and the whole cluster.

It imports only what every tree since the pool landed has (LocalCluster, esc_bench.run), so
tools/speed_compare.py can run it with another checkout's interpreter and compare trees in one
run. Bounded: at most 30 s of load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from esc_bench.params import LoadParams
from esc_bench.run import run_load
from eventstream.local_cluster import LocalCluster


def _thread_cpu_s(pid: int) -> float:
    for thread in psutil.Process(pid).threads():
        if thread.id == pid:
            return float(thread.user_time + thread.system_time)
    raise RuntimeError(f"process {pid} has no main thread")


def _process_cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _workers(cluster: LocalCluster, leader_id: int, want: int) -> list[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = cluster.nodes[leader_id].status() or {}
        workers = st.get("replication_workers") or {}
        if len(workers) >= want:
            return [int(w["pid"]) for w in workers.values()]
        time.sleep(0.05)
    return []


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replication", choices=["pool", "inprocess"], required=True)
    p.add_argument("--nodes", type=int, default=3, choices=[3, 5])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--secure", action="store_true", help="TLS on every link and a token")
    args = p.parse_args()
    if not 1 <= args.seconds <= 30:
        p.error("--seconds must be 1..30")
    with tempfile.TemporaryDirectory(prefix="esc-thread-") as root:
        options: dict[str, Any] = {"log_level": "warning", "wal_sync": True, "replication": args.replication,
                                      "batch_size": args.batch}
        if args.secure:
            from eventstream.tls import init_certs

            init_certs(Path(root) / "tls", args.nodes, ["127.0.0.1"])
            options["tls_dir"] = str(Path(root) / "tls")
        cluster = LocalCluster(Path(root) / "nodes", args.nodes, **options)
        cluster.start()
        try:
            leader = cluster.leader(timeout=20.0)
            tls_ca = token = None
            if args.secure:
                tls_ca, token = cluster.tls_ca, cluster.create_token("thread-cost")
            worker_pids = _workers(cluster, leader, args.nodes - 1) if args.replication == "pool" else []
            pids = {str(k): n.proc.pid for k, n in cluster.nodes.items() if n.proc is not None}
            leader_pid = pids[str(leader)]

            def load(seconds: float) -> int:
                params = LoadParams(args.clients, args.concurrency, args.batch, 100, keys=1000, ids=True,
                                    read_ratio=0.0, duration_s=seconds, events=None, warmup_s=0.0,
                                    rate_events_per_s=None, time_limit_s=60.0, request_timeout_s=10.0,
                                    report_interval_s=1.0, seed=1, tls_ca=tls_ca, token=token)
                outcome = run_load(params, cluster.addresses, pids, lambda progress: None)
                return sum(w["events"] for w in outcome.workers)

            load(args.warmup)
            all_pids = list(pids.values()) + worker_pids
            t0, p0 = _thread_cpu_s(leader_pid), _process_cpu_s(leader_pid)
            w0 = sum(_process_cpu_s(w) for w in worker_pids)
            c0 = sum(_process_cpu_s(x) for x in all_pids)
            events = load(args.seconds)
            t1, p1 = _thread_cpu_s(leader_pid), _process_cpu_s(leader_pid)
            w1 = sum(_process_cpu_s(w) for w in worker_pids)
            c1 = sum(_process_cpu_s(x) for x in all_pids)
        finally:
            cluster.stop()
    per = 1e6 / max(events, 1)
    print(json.dumps({
        "replication": args.replication, "nodes": args.nodes, "batch": args.batch, "secure": args.secure,
        "events": events, "events_per_s": round(events / args.seconds),
        "main_thread_us_per_event": round((t1 - t0) * per, 3),
        "leader_process_us_per_event": round((p1 - p0) * per, 3),
        "workers_us_per_event": round((w1 - w0) * per, 3),
        "cluster_us_per_event": round((c1 - c0) * per, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
