"""What TLS and tokens cost, measured in one run: `esc-bench --local 3` with `--secure` (TLS on
every link, a token on every connection) beside the same load without, alternated A B A B so
both sides share the machine's moods.

    python tools/tls_cost.py [--rounds 2] [--duration 6] [--replication pool|inprocess]
                             [--shape batch|single|both]

Shapes: batches of 1000 events (2 clients x 8 in flight) and 64 single-event clients (2 x 32),
both with the native load engine and wal_sync on. Prints one table row per shape and side:
median events/s, p50 and p99 of the runs, node CPU per event. Bounded: at most 5 rounds of at
most 20 s each.
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

SHAPES = {
    "batch 1000, 2 x 8": ["--batch-size", "1000", "--clients", "2", "--concurrency", "8"],
    "64 single-event clients": ["--batch-size", "1", "--clients", "2", "--concurrency", "32"],
}


def _run(shape: list[str], secure: bool, duration: float, replication: str | None, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "esc_bench.cli", "--local", "3", "--wal-sync", "--engine", "native",
           "--duration", str(duration), "--warmup", "2", "--json", str(out), *shape]
    if secure:
        cmd.append("--secure")
    if replication:
        cmd += ["--replication", replication]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120, check=False)
    if done.returncode != 0:
        sys.exit(f"tls_cost: {' '.join(cmd)} failed: {done.stderr.strip()}")
    return dict(json.loads(out.read_text()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, choices=range(1, 6))
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--replication", choices=["pool", "inprocess"], default=None)
    p.add_argument("--shape", choices=["batch", "single", "both"], default="both")
    args = p.parse_args()
    if not 1 <= args.duration <= 20:
        p.error("--duration must be 1..20 s")
    runs: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        chosen = {"batch": list(SHAPES)[:1], "single": list(SHAPES)[1:], "both": list(SHAPES)}[args.shape]
        for name, shape in ((n, SHAPES[n]) for n in chosen):
            for r in range(args.rounds):
                for secure in (False, True):
                    report = _run(shape, secure, args.duration, args.replication, Path(tmp) / f"{r}-{secure}.json")
                    runs.setdefault((name, secure), []).append(report)
                    print(f"# {name} {'TLS+token' if secure else 'plain'} round {r + 1}: "
                          f"{report['events_per_s']:,.0f} events/s, p99 {report['latency_ms']['p99']:.2f} ms, "
                          f"errors {report['errors']}", file=sys.stderr)
    print("| shape | links | events/s (median) | p50 ms | p99 ms | node CPU us/event | runs |")
    print("|---|---|---|---|---|---|---|")
    for (name, secure), reports in runs.items():
        rates = [r["events_per_s"] for r in reports]
        p50 = statistics.median(r["latency_ms"]["p50"] for r in reports)
        p99 = statistics.median(r["latency_ms"]["p99"] for r in reports)
        cpu = statistics.median(r["cpu_us_per_event"] or 0.0 for r in reports)
        each = ", ".join(f"{x:,.0f}" for x in rates)
        print(f"| {name} | {'TLS + token' if secure else 'plain'} | {statistics.median(rates):,.0f} | "
              f"{p50:.2f} | {p99:.2f} | {cpu:.1f} | {each} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
