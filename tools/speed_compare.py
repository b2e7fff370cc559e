"""Two checkouts measured side by side in one run, alternated A B A B, on the loads the speed
figures in bench/RESULTS.md are kept for.

    python tools/speed_compare.py --a ../base --b . [--rounds 3] [--duration 6]
                                  [--shapes batch1000 single1 single64 thread3 thread5 thread3tls]

Each checkout must be built (`make build`: its own .venv). Shapes (3 local nodes, wal_sync on,
100-byte events with ids, the native load engine):

- batch1000: batches of 1000 events, 2 clients x 8 in flight (esc-bench): events/s, node CPU
  per event (every node process and worker);
- single1: one client, one event per request: events/s, p50, p99;
- single64: 64 single-event clients (2 x 32): events/s, p50, p99, node CPU per event;
- thread3 / thread5 / thread3tls: the leader's main-thread CPU per event at batch 100, 2 x 8, in
  both replication modes (tools/leader_thread_cost.py, run with the checkout's interpreter),
  3 nodes, 5 nodes, 3 nodes with TLS and a token.

Prints one markdown row per shape and checkout: medians of the rounds and every round's figure.
Bounded: at most 5 rounds, at most 20 s per load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH_SHAPES = {
    "batch1000": ["--batch-size", "1000", "--clients", "2", "--concurrency", "8"],
    "single1": ["--batch-size", "1", "--clients", "1", "--concurrency", "1"],
    "single64": ["--batch-size", "1", "--clients", "2", "--concurrency", "32"],
}
THREAD_SHAPES = {"thread3": ["--nodes", "3"], "thread5": ["--nodes", "5"], "thread3tls": ["--nodes", "3", "--secure"]}


def _python(tree: Path) -> str:
    return str(tree / ".venv" / "bin" / "python")


def _bench(tree: Path, shape: str, duration: float, out: Path) -> dict[str, Any]:
    cmd = [_python(tree), "-m", "esc_bench.cli", "--local", "3", "--wal-sync", "--engine", "native",
           "--duration", str(duration), "--warmup", "2", "--json", str(out), *BENCH_SHAPES[shape]]
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=duration + 120, check=False)
    if done.returncode != 0:
        sys.exit(f"speed_compare: {' '.join(cmd)} in {tree} failed: {done.stderr.strip()[-2000:]}")
    report = json.loads(out.read_text())
    return {"events_per_s": report["events_per_s"], "p50_ms": report["latency_ms"]["p50"],
            "p99_ms": report["latency_ms"]["p99"], "cpu_us_per_event": report["cpu_us_per_event"] or 0.0}


def _thread(tree: Path, shape: str, mode: str, duration: float) -> dict[str, Any]:
    cmd = [_python(tree), str(HERE / "leader_thread_cost.py"), "--replication", mode, "--seconds", str(duration),
           *THREAD_SHAPES[shape]]
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=duration + 120, check=False)
    if done.returncode != 0:
        sys.exit(f"speed_compare: {' '.join(cmd)} in {tree} failed: {done.stderr.strip()[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", type=Path, required=True, help="the checkout measured first in odd rounds")
    p.add_argument("--b", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=3, choices=range(1, 6))
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--shapes", nargs="+", default=list(BENCH_SHAPES) + ["thread3"],
                   choices=list(BENCH_SHAPES) + list(THREAD_SHAPES))
    args = p.parse_args()
    if not 1 <= args.duration <= 20:
        p.error("--duration must be 1..20 s")
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    for label, tree in trees.items():
        if not Path(_python(tree)).exists():
            p.error(f"{label}: {tree} has no .venv (run `make build` there)")
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            for r in range(args.rounds):
                order = ("A", "B") if r % 2 == 0 else ("B", "A")
                for label in order:
                    tree = trees[label]
                    if shape in BENCH_SHAPES:
                        figures = _bench(tree, shape, args.duration, Path(tmp) / f"{shape}-{r}-{label}.json")
                    else:
                        pool = _thread(tree, shape, "pool", args.duration)
                        inprocess = _thread(tree, shape, "inprocess", args.duration)
                        figures = {"events_per_s": pool["events_per_s"],
                                   "pool_main_us": pool["main_thread_us_per_event"],
                                   "inprocess_main_us": inprocess["main_thread_us_per_event"],
                                   "ratio": pool["main_thread_us_per_event"] / inprocess["main_thread_us_per_event"],
                                   "pool_cluster_us": pool["cluster_us_per_event"],
                                   "inprocess_cluster_us": inprocess["cluster_us_per_event"]}
                    runs.setdefault((shape, label), []).append(figures)
                    print(f"# {shape} {label} round {r + 1}: {json.dumps(figures)}", file=sys.stderr, flush=True)
    print(f"A = {trees['A']}, B = {trees['B']}")
    print("| shape | tree | figures (median of rounds) | every round |")
    print("|---|---|---|---|")
    for (shape, label), rows in runs.items():
        keys = list(rows[0])
        med = {k: statistics.median(r[k] for r in rows) for k in keys}
        text = ", ".join(f"{k} {v:,.2f}" if isinstance(v, float) and v < 100 else f"{k} {v:,.0f}"
                         for k, v in med.items())
        first = keys[0] if shape in BENCH_SHAPES else "ratio"
        each = ", ".join(f"{r[first]:,.2f}" if r[first] < 100 else f"{r[first]:,.0f}" for r in rows)
        print(f"| {shape} | {label} | {text} | {first}: {each} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
