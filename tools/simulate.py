"""Run the deterministic Raft cluster simulator over a range of seeds.

    python tools/simulate.py --seeds 20000 [--start 0] [--nodes 3|5] [--jobs 2]

Prints the count of schedules, steps, violations (must be 0) and the slowest liveness recovery.
Every violation is printed with the one-line command that replays its seed. Exit status 1 when
any violation was found.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eventstream.raft import RaftNode  # noqa: E402
from tests.sim.mutations import MUTATIONS  # noqa: E402
from tests.sim.simulator import DEFAULT_FAULT_TICKS, SimResult, Simulation  # noqa: E402


def run_seed(args: tuple[int, int | None, int, str | None, bool]) -> SimResult:
    seed, nodes, fault_ticks, mutation, disk_loss = args
    node_class = MUTATIONS[mutation] if mutation else RaftNode
    return Simulation(seed, nodes=nodes, fault_ticks=fault_ticks, node_class=node_class, disk_loss=disk_loss).run()


def replay_command(seed: int, args: argparse.Namespace) -> str:
    command = f"python tools/simulate.py --seeds 1 --start {seed}"
    if args.nodes:
        command += f" --nodes {args.nodes}"
    if args.fault_ticks != DEFAULT_FAULT_TICKS:
        command += f" --fault-ticks {args.fault_ticks}"
    if args.mutation:
        command += f" --mutation {args.mutation}"
    if args.disk_loss:
        command += " --disk-loss"
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000, help="number of seeds to run")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--nodes", type=int, choices=(3, 5), default=None)
    parser.add_argument(
        "--fault-ticks", type=int, default=DEFAULT_FAULT_TICKS, help="ticks of faults per seed"
    )
    parser.add_argument(
        "--mutation",
        choices=sorted(MUTATIONS),
        default=None,
        help="run a deliberately broken core (checks that the checker catches it)",
    )
    parser.add_argument(
        "--disk-loss",
        action="store_true",
        help="also replace nodes' disks (they rejoin empty, RaftConfig.rejoining)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--verbose", action="store_true", help="one line per seed")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1 or args.fault_ticks < 0:
        parser.error("--seeds and --jobs must be >= 1, --fault-ticks >= 0")

    seeds = range(args.start, args.start + args.seeds)
    work = [(s, args.nodes, args.fault_ticks, args.mutation, args.disk_loss) for s in seeds]
    started = time.perf_counter()
    schedules = steps = violations = 0
    events: collections.Counter[str] = collections.Counter()
    slowest = (0, args.start)
    results: Iterator[SimResult]
    if args.jobs == 1:
        results = map(run_seed, work)
    else:
        pool = multiprocessing.Pool(args.jobs)
        results = pool.imap_unordered(run_seed, work, chunksize=16)
    for result in results:
        schedules += 1
        steps += result.steps
        events.update(result.events)
        if result.recovery_ticks > slowest[0]:
            slowest = (result.recovery_ticks, result.seed)
        if args.verbose:
            print(
                f"seed {result.seed}: nodes={result.nodes} steps={result.steps} "
                f"committed={result.committed} elections={result.elections} "
                f"recovery={result.recovery_ticks} violations={len(result.violations)}"
            )
        if result.violations:
            violations += len(result.violations)
            for line in result.violations:
                print(f"VIOLATION seed {result.seed}: {line}")
            print(f"  replay: {replay_command(result.seed, args)}")
    elapsed = time.perf_counter() - started
    print("exercised: " + " ".join(f"{k}={v}" for k, v in sorted(events.items())))
    print(
        f"schedules={schedules} steps={steps} violations={violations} "
        f"slowest_recovery_ticks={slowest[0]} (seed {slowest[1]}) elapsed_s={elapsed:.1f}"
    )
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
