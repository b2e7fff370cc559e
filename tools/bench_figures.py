"""Run the esc-bench scenarios of bench/RESULTS.md several times each and print the
median and range of every figure as a markdown table.

    python tools/bench_figures.py --repeat 3 --out bench/results/figures

Each run is one `esc-bench --local N` subprocess (its own cluster in a temp dir) with --json;
the JSON files stay in --out. The machine is shared: report medians and ranges, never one run.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click


@dataclass(frozen=True)
class Scenario:
    name: str
    args: tuple[str, ...]


COMMON = ("--payload-bytes", "100", "--duration", "8", "--warmup", "2")

SCENARIOS = [
    Scenario(f"3 nodes, batch {batch}, wal_sync {sync}",
             ("--local", "3", f"--{'' if sync == 'on' else 'no-'}wal-sync", "--batch-size", str(batch),
              "--clients", "2", "--concurrency", str(concurrency)))
    for sync in ("on", "off")
    for batch, concurrency in ((1, 64), (100, 16), (1000, 8))
] + [
    Scenario(f"5 nodes, batch 1000, wal_sync {sync}",
             ("--local", "5", f"--{'' if sync == 'on' else 'no-'}wal-sync", "--batch-size", "1000",
              "--clients", "2", "--concurrency", "8"))
    for sync in ("on", "off")
] + [
    Scenario(f"3 nodes, 1 client, 1 event at a time, wal_sync {sync}",
             ("--local", "3", f"--{'' if sync == 'on' else 'no-'}wal-sync", "--batch-size", "1",
              "--clients", "1", "--concurrency", "1"))
    for sync in ("on", "off")
]


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    middle = statistics.median(values)
    if len(values) == 1:
        return format(middle, fmt)
    return f"{format(middle, fmt)} ({format(min(values), fmt)} - {format(max(values), fmt)})"


@click.command()
@click.option("--repeat", type=click.IntRange(1, 10), default=3, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="bench/results/figures", show_default=True)
@click.option("--only", help="run only the scenarios whose name contains this text")
def main(repeat: int, out: str, only: str | None) -> None:
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in SCENARIOS if only is None or only in s.name]
    reports: dict[str, list[dict]] = {s.name: [] for s in chosen}
    # Rounds go scenario by scenario, so that a burst of load from elsewhere on the machine
    # spreads over all scenarios instead of spoiling every run of one.
    for round_index in range(repeat):
        for number, scenario in enumerate(chosen):
            path = directory / f"s{number:02d}-r{round_index}.json"
            command = [sys.executable, "-m", "esc_bench.cli", *scenario.args, *COMMON,
                       "--json", str(path)]
            click.echo(f"[{round_index + 1}/{repeat}] {scenario.name}: esc-bench {' '.join(command[3:])}", err=True)
            result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
            if result.returncode != 0:
                click.echo(f"  failed: {result.stderr.strip().splitlines()[-1:]}", err=True)
                continue
            reports[scenario.name].append(json.loads(path.read_text()))
    click.echo("| scenario | runs | events/s | p50 ms | p99 ms | CPU us/event (nodes) | errors |")
    click.echo("|---|---|---|---|---|---|---|")
    for scenario in chosen:
        runs = reports[scenario.name]
        cpu = [r["cpu_us_per_event"] for r in runs if r["cpu_us_per_event"] is not None]
        errors = sum(sum(r["errors"].values()) for r in runs)
        click.echo(f"| {scenario.name} | {len(runs)} | {_cell([r['events_per_s'] for r in runs], ',.0f')} | "
                   f"{_cell([r['latency_ms']['p50'] for r in runs], '.2f')} | "
                   f"{_cell([r['latency_ms']['p99'] for r in runs], '.2f')} | {_cell(cpu, ',.1f')} | {errors} |")


if __name__ == "__main__":
    main()
