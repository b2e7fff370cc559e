"""Pool vs in-process replication on real local clusters, measured in one run with esc-bench.

`python -m esc_bench.replication_modes` runs, for each cluster size, batch size and
wal_sync setting, esc-bench's load (esc_bench/run.py: client processes, closed loop,
HdrHistogram latencies) against a fresh local cluster in each replication mode, back to back,
alternating the order from round to round, and prints acknowledged events/s, client p50/p99
append latency, and where the leader's CPU went: its own process (the control plane: Raft,
WAL, apply, clients) vs its replication worker processes. bench/test_bench_replication.py runs
a subset under pytest-benchmark.

"Batch" is both the events per append request esc-bench sends (--batch-size) and the node's
batch_size, so one request becomes about one Raft entry in every cell. The load shares the
machine's cores with every node, so compare the two modes of one run, never figures across runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from esc_bench.latency import summary_ms
from esc_bench.node_usage import MAIN_THREAD_LABEL
from esc_bench.params import LoadParams
from esc_bench.run import run_load
from eventstream.local_cluster import LocalCluster

# The label under which a leader's worker process is measured: WORKER_LABEL + follower id.
WORKER_LABEL = "worker-"


@dataclass(slots=True)
class ModeFigures:
    mode: str
    nodes: int
    batch_size: int
    wal_sync: bool
    seconds: float
    events: int
    errors: int
    events_per_s: float
    p50_ms: float
    p99_ms: float
    leader_cpu_s: float  # the leader's own process: Raft core, storage, apply, clients
    workers_cpu_s: float  # the leader's replication workers (0 in inprocess mode)
    followers_cpu_s: float
    leader_changes: int
    # Pool mode, from the leader's /status after the load (warm-up included): the worst of its
    # workers' 99th-percentile order waits (bucket upper bound, ms: from the node writing an
    # order to the worker taking it) and their missed wake-ups in total.
    order_wait_ms_p99: float = 0.0
    missed_wakeups: int = 0
    # The leader's main thread alone (its event loop: Raft, log, apply, clients and, in
    # inprocess mode, sending to every follower): the thread that bounds a leader on a machine
    # of its own, which the pool exists to relieve.
    leader_main_thread_cpu_s: float = 0.0


def _wait_for_workers(cluster: LocalCluster, leader_id: int, nodes: int) -> dict[str, int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = cluster.nodes[leader_id].status()
        workers = st["replication_workers"] if st is not None else {}
        if len(workers) == nodes - 1:
            return {WORKER_LABEL + peer: usage["pid"] for peer, usage in workers.items()}
        time.sleep(0.05)
    raise RuntimeError(f"the pool-mode leader {leader_id} did not report {nodes - 1} workers within 10 s")


def measure_mode(root: Path, mode: str, nodes: int, batch_size: int, wal_sync: bool, seconds: float,
                 clients: int = 2, concurrency: int = 8, payload_bytes: int = 100,
                 warmup_s: float = 1.0) -> ModeFigures:
    # Every round starts from the same state of the page cache: the data earlier rounds wrote
    # (about 0.5 GB per round at batch 1000) is on disk before this one starts, and each
    # round's files are deleted when it ends. Otherwise the kernel's writeback of earlier
    # rounds lands in later ones and throttles their writers (first rounds ran fastest).
    os.sync()
    cluster = LocalCluster(root, nodes, replication=mode, batch_size=batch_size, wal_sync=wal_sync,
                           log_level="warning").start()
    try:
        leader_id = cluster.leader(timeout=20.0)
        pids = {str(k): n.proc.pid for k, n in cluster.nodes.items() if n.proc is not None}
        pids[MAIN_THREAD_LABEL + str(leader_id)] = pids[str(leader_id)]
        if mode == "pool":
            pids |= _wait_for_workers(cluster, leader_id, nodes)
        params = LoadParams(clients, concurrency, batch_size, payload_bytes, keys=1000, ids=True, read_ratio=0.0,
                            duration_s=seconds, events=None, warmup_s=warmup_s, rate_events_per_s=None,
                            time_limit_s=60.0, request_timeout_s=10.0, report_interval_s=1.0, seed=1)
        outcome = run_load(params, cluster.addresses, pids, lambda progress: None)
        workers: dict[str, dict[str, Any]] = {}
        if mode == "pool":
            st = cluster.nodes[leader_id].status()
            workers = st["replication_workers"] if st is not None else {}
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    events = sum(w["events"] for w in outcome.workers)
    errors = sum(sum(w["errors"].values()) for w in outcome.workers)
    window_s = max((w["window_s"] for w in outcome.workers), default=0.0)
    cpu = {n.node: n.cpu_s or 0.0 for n in outcome.nodes}
    latency = summary_ms(outcome.latency)
    return ModeFigures(
        mode, nodes, batch_size, wal_sync, round(window_s, 2), events, errors,
        round(events / window_s) if window_s else 0.0,
        float(latency["p50"] or "nan"), float(latency["p99"] or "nan"),
        round(cpu.get(str(leader_id), 0.0), 3),
        round(sum(v for k, v in cpu.items() if k.startswith(WORKER_LABEL)), 3),
        round(sum(v for k, v in cpu.items()
                  if k != str(leader_id) and not k.startswith((WORKER_LABEL, MAIN_THREAD_LABEL))), 3),
        outcome.leader_changes_seen,
        max((w["order_wait_ms_p99"] for w in workers.values()), default=0.0),
        sum(w["missed_wakeups"] for w in workers.values()),
        round(cpu.get(MAIN_THREAD_LABEL + str(leader_id), 0.0), 3),
    )


def compare(nodes: int, batch_size: int, wal_sync: bool, seconds: float, root: Path | None = None,
            rounds: int = 1, **load: Any) -> list[ModeFigures]:
    """Both modes on the same settings, back to back; with several rounds the order alternates,
    so a slow minute on the shared machine does not always land on the same mode."""
    rows = []
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        for r in range(rounds):
            for mode in ("inprocess", "pool") if r % 2 == 0 else ("pool", "inprocess"):
                rows.append(measure_mode(Path(tmp) / f"{mode}-{r}", mode, nodes, batch_size, wal_sync, seconds,
                                         **load))
    return rows


def medians(rows: list[ModeFigures]) -> dict[str, dict[str, float]]:
    """Per mode: median events/s, p50, p99 and CPU over the rounds."""
    out: dict[str, dict[str, float]] = {}
    for mode in ("inprocess", "pool"):
        mine = [r for r in rows if r.mode == mode]
        out[mode] = {
            key: statistics.median(getattr(r, key) for r in mine)
            for key in ("events_per_s", "p50_ms", "p99_ms", "leader_cpu_s", "workers_cpu_s")
        }
        # CPU per event is steadier than CPU per second when the load itself swings.
        counted = [r for r in mine if r.events] or mine
        out[mode]["leader_us_per_event"] = statistics.median(r.leader_cpu_s / max(r.events, 1) * 1e6 for r in counted)
        out[mode]["main_thread_us_per_event"] = statistics.median(
            r.leader_main_thread_cpu_s / max(r.events, 1) * 1e6 for r in counted)
        out[mode]["workers_us_per_event"] = statistics.median(r.workers_cpu_s / max(r.events, 1) * 1e6 for r in counted)
        # Every node process and worker: what one event costs the machine, which decides
        # throughput once the cores are all busy.
        out[mode]["cluster_us_per_event"] = statistics.median(
            (r.leader_cpu_s + r.workers_cpu_s + r.followers_cpu_s) / max(r.events, 1) * 1e6 for r in counted)
    return out


HEADER = (f"{'nodes':>5} {'batch':>5} {'wal_sync':>8} {'mode':>9} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'leader cpu':>10} {'workers cpu':>11} {'followers cpu':>13} {'errors':>6} {'wait p99 ms':>11} "
          f"{'missed':>6} {'main thr':>8}")

SUMMARY_HEADER = (
    "| nodes | batch | wal_sync | events/s inprocess | events/s pool | pool / inprocess | p99 ms inprocess "
    "| p99 ms pool | leader us/event inprocess | leader us/event pool | workers us/event | control plane share (pool) "
    "| cluster us/event inprocess | cluster us/event pool | leader main thread us/event inprocess "
    "| leader main thread us/event pool | main thread pool / inprocess |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(f: ModeFigures) -> str:
    return (f"{f.nodes:>5} {f.batch_size:>5} {'on' if f.wal_sync else 'off':>8} {f.mode:>9} {f.events_per_s:>10,.0f} "
            f"{f.p50_ms:>8.2f} {f.p99_ms:>8.2f} {f.leader_cpu_s:>10.2f} {f.workers_cpu_s:>11.2f} "
            f"{f.followers_cpu_s:>13.2f} {f.errors:>6} {f.order_wait_ms_p99:>11.2f} {f.missed_wakeups:>6} {f.leader_main_thread_cpu_s:>8.2f}")


def summary_row(nodes: int, batch: int, sync: str, m: dict[str, dict[str, float]]) -> str:
    """One markdown row of medians; the control-plane share is the leader process's part of the
    leader's CPU (its process plus its workers) in pool mode."""
    i, p = m["inprocess"], m["pool"]
    ratio = p["events_per_s"] / i["events_per_s"] if i["events_per_s"] else float("nan")
    leader_total = p["leader_us_per_event"] + p["workers_us_per_event"]
    share = p["leader_us_per_event"] / leader_total if leader_total else float("nan")
    return (f"| {nodes} | {batch} | {sync} | {i['events_per_s']:,.0f} | {p['events_per_s']:,.0f} | {ratio:.2f} "
            f"| {i['p99_ms']:.1f} | {p['p99_ms']:.1f} | {i['leader_us_per_event']:.2f} "
            f"| {p['leader_us_per_event']:.2f} | {p['workers_us_per_event']:.2f} | {share:.0%} "
            f"| {i['cluster_us_per_event']:.2f} | {p['cluster_us_per_event']:.2f} "
            f"| {i['main_thread_us_per_event']:.2f} | {p['main_thread_us_per_event']:.2f} "
            f"| {p['main_thread_us_per_event'] / i['main_thread_us_per_event'] if i['main_thread_us_per_event'] else float('nan'):.2f} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=3.0, help="measured load per scenario and mode")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measurement")
    p.add_argument("--nodes", type=int, nargs="+", default=[3, 5])
    p.add_argument("--batch", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--wal-sync", choices=["on", "off"], nargs="+", default=["off", "on"])
    p.add_argument("--clients", type=int, default=2, help="client processes")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight per client process")
    p.add_argument("--rounds", type=int, default=3, help="measurements per mode, order alternating")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    args = p.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if not args.json:
        print(HEADER, flush=True)
    summary = []
    for nodes in args.nodes:
        for batch in args.batch:
            for sync in args.wal_sync:
                rows = compare(nodes, batch, sync == "on", args.seconds, rounds=args.rounds, clients=args.clients,
                               concurrency=args.concurrency, warmup_s=args.warmup)
                for f in rows:
                    print(asdict(f) if args.json else row(f), flush=True)
                m = medians(rows)
                summary.append((nodes, batch, sync, m))
                if args.json:
                    print({"nodes": nodes, "batch_size": batch, "wal_sync": sync, "medians": m}, flush=True)
    if not args.json:
        finished = time.strftime("%H:%M UTC", time.gmtime())
        print(f"\nmedians over {args.rounds} round(s) per mode, {started} to {finished}; CPU in us per event")
        print(SUMMARY_HEADER)
        for nodes, batch, sync, m in summary:
            print(summary_row(nodes, batch, sync, m))


if __name__ == "__main__":
    main()
