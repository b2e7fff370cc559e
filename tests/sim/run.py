"""Run the deterministic Raft cluster simulator over a range of seeds.

    python -m tests.sim.run --seeds 20000 [--start 0] [--nodes 3|5] [--jobs 2] [--max-seconds S]
                            [--membership] [--disk-loss] [--mutation NAME]

Prints the count of schedules, steps, violations (must be 0), how long the cluster took to commit
and to apply everywhere a fresh proposal once the faults stopped (median, p99, max ticks), and the
slowest recovery. Every violation is printed with the one-line command that replays its seed.
Exit status 1 when any violation was found. --max-seconds bounds a long run: it stops taking new
seeds after that many seconds and says how many it ran.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import sys
import time
from collections.abc import Iterator, Sequence

from eventstream.raft import RaftNode
from tests.sim.mutations import EXECUTOR_MUTATIONS, MUTATIONS
from tests.sim.simulator import DEFAULT_FAULT_TICKS, SimResult, Simulation


def run_seed(args: tuple[int, int | None, int, str | None, bool, bool]) -> SimResult:
    seed, nodes, fault_ticks, mutation, disk_loss, membership = args
    node_class = MUTATIONS.get(mutation or "", RaftNode)
    executor = EXECUTOR_MUTATIONS.get(mutation or "")
    extra = {"executor_class": executor} if executor else {}
    return Simulation(
        seed, nodes=nodes, fault_ticks=fault_ticks, node_class=node_class, disk_loss=disk_loss,
        membership=membership, **extra
    ).run()


def replay_command(seed: int, args: argparse.Namespace) -> str:
    command = f"python -m tests.sim.run --seeds 1 --start {seed}"
    if args.nodes:
        command += f" --nodes {args.nodes}"
    if args.fault_ticks != DEFAULT_FAULT_TICKS:
        command += f" --fault-ticks {args.fault_ticks}"
    if args.mutation:
        command += f" --mutation {args.mutation}"
    if args.disk_loss:
        command += " --disk-loss"
    if args.membership:
        command += " --membership"
    return command


def _spread(ticks: Sequence[int]) -> str:
    ordered = sorted(ticks)
    if not ordered:
        return "none"
    median = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, (len(ordered) * 99) // 100)]
    return f"median/p99/max {median}/{p99}/{ordered[-1]}"


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
        choices=sorted(MUTATIONS) + sorted(EXECUTOR_MUTATIONS),
        default=None,
        help="run a deliberately broken core or Ready executor (checks that the checker catches it)",
    )
    parser.add_argument(
        "--disk-loss",
        action="store_true",
        help="also replace nodes' disks (they rejoin empty, RaftConfig.rejoining)",
    )
    parser.add_argument(
        "--membership",
        action="store_true",
        help="the schedules with membership changes (learners added, promoted, nodes removed)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--verbose", action="store_true", help="one line per seed")
    parser.add_argument(
        "--max-seconds", type=float, default=None, help="stop taking new seeds after this long"
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1 or args.fault_ticks < 0:
        parser.error("--seeds and --jobs must be >= 1, --fault-ticks >= 0")
    if args.max_seconds is not None and args.max_seconds <= 0:
        parser.error("--max-seconds must be > 0")

    seeds = range(args.start, args.start + args.seeds)
    work = [(s, args.nodes, args.fault_ticks, args.mutation, args.disk_loss, args.membership) for s in seeds]
    started = time.perf_counter()
    schedules = steps = violations = 0
    events: collections.Counter[str] = collections.Counter()
    slowest = (0, args.start)
    commit_ticks: list[int] = []
    applied_ticks: list[int] = []
    results: Iterator[SimResult]
    pool = None
    if args.jobs == 1:
        results = map(run_seed, work)
    else:
        pool = multiprocessing.Pool(args.jobs)
        results = pool.imap_unordered(run_seed, work, chunksize=16)
    for result in results:
        schedules += 1
        steps += result.steps
        events.update(result.events)
        commit_ticks.append(result.commit_ticks)
        applied_ticks.append(result.recovery_ticks)
        if result.recovery_ticks > slowest[0]:
            slowest = (result.recovery_ticks, result.seed)
        if args.verbose:
            print(
                f"seed {result.seed}: nodes={result.nodes} steps={result.steps} "
                f"committed={result.committed} elections={result.elections} "
                f"commit={result.commit_ticks} recovery={result.recovery_ticks} "
                f"violations={len(result.violations)}"
            )
        if result.violations:
            violations += len(result.violations)
            for line in result.violations:
                print(f"VIOLATION seed {result.seed}: {line}")
            print(f"  replay: {replay_command(result.seed, args)}")
        if args.max_seconds is not None and time.perf_counter() - started > args.max_seconds:
            print(f"stopped after {args.max_seconds:g} s (--max-seconds): ran {schedules} of "
                  f"{args.seeds} seeds")
            break
    if pool is not None:
        pool.terminate()
    elapsed = time.perf_counter() - started
    print("exercised: " + " ".join(f"{k}={v}" for k, v in sorted(events.items())))
    print(f"commit_ticks {_spread(commit_ticks)}  all_applied_ticks {_spread(applied_ticks)}")
    print(
        f"schedules={schedules} steps={steps} violations={violations} "
        f"slowest_recovery_ticks={slowest[0]} (seed {slowest[1]}) elapsed_s={elapsed:.1f}"
    )
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
