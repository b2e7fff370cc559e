"""Pool vs in-process replication on real local clusters, measured in one run.

`python -m eventstream.replication.mode_benchmark` runs, for each cluster size, batch_size and
wal_sync setting, the same client load against a fresh cluster in each replication mode, back
to back, and prints acknowledged events/s, client p50/p99 append latency, and where the
leader's CPU went (its own process, the control plane, vs its worker processes). bench/
test_bench_replication.py runs a subset under pytest-benchmark.

The load is `clients` client processes, each with `concurrency` requests in flight, each
request an append_batch of `events_per_request` events of `payload_bytes`; they share the
machine's cores with every node, so compare the two modes of one run, never figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from eventstream.client import AsyncClient, EventIn
from eventstream.errors import EscError
from eventstream.local_cluster import LocalCluster


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


def _percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


async def _load(addresses: list[str], seconds: float, concurrency: int, events_per_request: int,
                payload_bytes: int) -> tuple[int, int, list[float]]:
    latencies: list[float] = []
    counts = [0, 0]  # events acknowledged, requests failed
    payload = b"p" * payload_bytes
    async with AsyncClient(addresses, timeout_s=10.0) as client:
        end = time.monotonic() + seconds

        async def one(k: int) -> None:
            batch = [EventIn(payload, key=b"key-%d-%d" % (k, i)) for i in range(events_per_request)]
            while time.monotonic() < end:
                started = time.perf_counter()
                try:
                    await client.append_batch(batch)
                except EscError:
                    counts[1] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                counts[0] += events_per_request

        await asyncio.gather(*(one(k) for k in range(concurrency)))
    return counts[0], counts[1], latencies


def _load_process(args: tuple[list[str], float, int, int, int]) -> tuple[int, int, list[float]]:
    return asyncio.run(_load(*args))


def _run_clients(addresses: list[str], seconds: float, clients: int, concurrency: int, events_per_request: int,
                 payload_bytes: int) -> tuple[int, int, list[float]]:
    """The load from `clients` processes at once, so the client side is not one GIL."""
    args = (addresses, seconds, concurrency, events_per_request, payload_bytes)
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        results = pool.map(_load_process, [args] * clients)
    latencies = [x for _, _, lat in results for x in lat]
    return sum(r[0] for r in results), sum(r[1] for r in results), latencies


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _workers_of(leader: psutil.Process) -> list[psutil.Process]:
    return [c for c in leader.children() if "eventstream.replication.worker" in " ".join(c.cmdline())]


def measure_mode(root: Path, mode: str, nodes: int, batch_size: int, wal_sync: bool, seconds: float,
                 clients: int = 2, concurrency: int = 16, events_per_request: int = 100,
                 payload_bytes: int = 100, warmup_s: float = 1.0) -> ModeFigures:
    cluster = LocalCluster(root, nodes, replication=mode, batch_size=batch_size, wal_sync=wal_sync,
                           log_level="warning").start()
    try:
        leader_id = cluster.leader(timeout=20.0)
        if mode == "pool":
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                st = cluster.nodes[leader_id].status()
                if st is not None and len(st["replication_workers"]) == nodes - 1:
                    break
                time.sleep(0.05)
        asyncio.run(_load(cluster.addresses, warmup_s, concurrency, events_per_request, payload_bytes))
        procs = {k: psutil.Process(n.proc.pid) for k, n in cluster.nodes.items() if n.proc is not None}
        leader = procs[leader_id]
        workers = _workers_of(leader)
        before = {k: _cpu(p) for k, p in procs.items()}
        workers_before = sum(_cpu(w) for w in workers)
        started = time.monotonic()
        events, errors, latencies = _run_clients(
            cluster.addresses, seconds, clients, concurrency, events_per_request, payload_bytes)
        # The clients' own start-up (about 0.2 s) is inside the window: it lowers both modes alike.
        elapsed = time.monotonic() - started
        after = {k: _cpu(p) for k, p in procs.items()}
        workers_after = sum(_cpu(w) for w in workers if w.is_running())
        latencies.sort()
        return ModeFigures(
            mode, nodes, batch_size, wal_sync, round(elapsed, 2), events, errors, round(events / elapsed),
            round(_percentile(latencies, 50) * 1000, 2), round(_percentile(latencies, 99) * 1000, 2),
            round(after[leader_id] - before[leader_id], 2), round(workers_after - workers_before, 2),
            round(sum(after[k] - before[k] for k in procs if k != leader_id), 2),
        )
    finally:
        cluster.stop()


def compare(nodes: int, batch_size: int, wal_sync: bool, seconds: float, root: Path | None = None,
            rounds: int = 1, **load: int) -> list[ModeFigures]:
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
    """Per mode: median events/s, p99 and CPU over the rounds."""
    out: dict[str, dict[str, float]] = {}
    for mode in ("inprocess", "pool"):
        mine = [r for r in rows if r.mode == mode]
        out[mode] = {
            key: statistics.median(getattr(r, key) for r in mine)
            for key in ("events_per_s", "p99_ms", "leader_cpu_s", "workers_cpu_s")
        }
        # CPU per event is steadier than CPU per second when the load itself swings.
        out[mode]["leader_us_per_event"] = statistics.median(r.leader_cpu_s / r.events * 1e6 for r in mine if r.events)
        out[mode]["workers_us_per_event"] = statistics.median(r.workers_cpu_s / r.events * 1e6 for r in mine if r.events)
    return out


HEADER = (f"{'nodes':>5} {'batch':>5} {'wal_sync':>8} {'mode':>9} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'leader cpu':>10} {'workers cpu':>11} {'followers cpu':>13} {'errors':>6}")


def row(f: ModeFigures) -> str:
    return (f"{f.nodes:>5} {f.batch_size:>5} {'on' if f.wal_sync else 'off':>8} {f.mode:>9} {f.events_per_s:>10,.0f} "
            f"{f.p50_ms:>8.2f} {f.p99_ms:>8.2f} {f.leader_cpu_s:>10.2f} {f.workers_cpu_s:>11.2f} "
            f"{f.followers_cpu_s:>13.2f} {f.errors:>6}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=4.0, help="measured load per scenario and mode")
    p.add_argument("--nodes", type=int, nargs="+", default=[3, 5])
    p.add_argument("--batch", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--wal-sync", choices=["on", "off"], nargs="+", default=["off", "on"])
    p.add_argument("--clients", type=int, default=2, help="client processes")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight per client process")
    p.add_argument("--rounds", type=int, default=1, help="measurements per mode, order alternating")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    args = p.parse_args(argv)
    if not args.json:
        print(HEADER, flush=True)
    summary = []
    for nodes in args.nodes:
        for batch in args.batch:
            for sync in args.wal_sync:
                rows = compare(nodes, batch, sync == "on", args.seconds, rounds=args.rounds, clients=args.clients,
                               concurrency=args.concurrency)
                for f in rows:
                    print(asdict(f) if args.json else row(f), flush=True)
                m = medians(rows)
                summary.append((nodes, batch, sync, m))
                if args.json:
                    print({"nodes": nodes, "batch_size": batch, "wal_sync": sync, "medians": m}, flush=True)
    if not args.json:
        print(f"\nmedians over {args.rounds} round(s); ratios are pool / inprocess; CPU in us per event")
        print(f"{'nodes':>5} {'batch':>5} {'wal_sync':>8} {'events/s':>9} {'p99':>6} "
              f"{'leader inproc':>13} {'leader pool':>11} {'pool workers':>12}")
        for nodes, batch, sync, m in summary:
            i, p_ = m["inprocess"], m["pool"]
            print(f"{nodes:>5} {batch:>5} {sync:>8} {p_['events_per_s'] / i['events_per_s']:>9.2f} "
                  f"{p_['p99_ms'] / i['p99_ms']:>6.2f} {i['leader_us_per_event']:>13.2f} "
                  f"{p_['leader_us_per_event']:>11.2f} {p_['workers_us_per_event']:>12.2f}")


if __name__ == "__main__":
    main()
