"""The deterministic cluster simulation (see simulator.py for the fault model and checks)."""

from __future__ import annotations

import collections
import os
import random
import time
from pathlib import Path

import pytest

from eventstream.node.ready import ReadyExecutor
from tests.sim import run
from tests.sim.mutations import EXECUTOR_MUTATIONS, MUTATIONS
from tests.sim.simulator import DEFAULT_FAULT_TICKS, LIVENESS_CAP_TICKS, Simulation
from tests.unit.node_on_disk import close_node, open_node

# The fast suite runs this many seeds per cluster size (about a minute on one core);
# python -m tests.sim.run runs any number.
CI_SEEDS = 1000

# Seeds on which the simulator catches the Figure 8 mutation, found with
#   python -m tests.sim.run --seeds 80000 --start 40000 --mutation old-term-commit
# The bug needs a rare schedule (an old-term entry on a bare majority, then a leader change
# that overwrites it), so a random seed range catches it only now and then: 1 seed in 120,000
# with the current core (0 in seeds 0-39999). Any change to the simulator's draws or to the
# core's behaviour under faults moves them; the same command finds new ones (keep those clean
# with the real core).
OLD_TERM_COMMIT_SEEDS = [82847]

# Seeds on which the cluster once failed to apply a fresh proposal everywhere within the
# liveness budget after the heal: a leader's uncommitted tail far longer than its pipeline,
# followers rejecting reordered pipelined appends, a leader whose frequent snapshots restarted
# the stream to a lagging follower (docs/raft.md). (seed, nodes).
LIVENESS_REGRESSION_SEEDS = [
    (510888872, 3), (777000172, 3), (777000240, 3), (777000388, 3), (777000894, 3),
    (777002540, 3), (511666808, 5),
    # A follower far behind that held one far-ahead reordered append kept it, and so rejected
    # every nearer one (RaftNode._hold_early_append now gives up the farthest).
    (3277816824, 3), (3277856382, 3), (2240443412, 5), (2240460404, 5),
    # One entry per append and one append in flight: a follower hundreds of entries behind
    # catches up at one entry a round trip, just past LIVENESS_BUDGET_TICKS (a slow catch-up
    # that advances, not a stall).
    (3277860704, 3),
]

# Membership schedules (Simulation(membership=True)). Seeds that found a bug while the
# membership changes were built: a restart that forgot the membership of its own snapshot, a
# leader that removed itself and went down leaving voters that could not elect (a node whose
# removal is uncommitted may stand), a leader outside the voters serving reads unconfirmed.
MEMBERSHIP_REGRESSION_SEEDS = [73, 128, 164, 167, 1433, 2601, 2768, 2890, 3911,
                               # a voter added 190 entries behind, at one entry per round trip
                               1569301905]
MEMBERSHIP_CI_SEEDS = 600
# Seeds on which the simulator catches a leader taking a second membership change while one is
# uncommitted (mutation two-changes-in-flight), from
#   python -m tests.sim.run --seeds 300 --membership --mutation two-changes-in-flight
TWO_CHANGES_SEEDS = [45, 100, 256]
# A fresh leader taking a change before it committed an entry of its term (mutation
# change-before-term-commit) needs a deposed leader's uncommitted change beside it: 1 seed in
# 30,000 from  python -m tests.sim.run --seeds 30000 --start 3000 --membership \
#   --mutation change-before-term-commit  (tests/unit/raft/test_membership.py builds it by hand).
CHANGE_BEFORE_TERM_COMMIT_SEEDS = [19327]

# Each run also tries seeds nobody ran before, from a random start it prints, for about this
# much CPU time per cluster size (and at most FRESH_SEEDS_MAX seeds). ESC_SIM_FRESH_START=N
# replays a run from start N.
FRESH_SEEDS_CPU_S = 8.0
FRESH_SEEDS_MAX = 1000

# Disk loss (Simulation(disk_loss=True)): seeds on which a rejoining node that votes at once
# (mutation rejoin-votes) elects a leader without committed entries, found with
#   python -m tests.sim.run --seeds 200 --disk-loss --mutation rejoin-votes
REJOIN_VOTES_SEEDS = [6, 69, 101]
# Seeds on which the simulator catches followers that ack before their sync (mutation
# ack-before-sync of the node's Ready executor), found by running seeds 0-399 with it.
ACK_BEFORE_SYNC_SEEDS = [153, 257, 303]
DISK_LOSS_CI_SEEDS = 400


def _run(seeds: range, nodes: int | None = None, node_class=None):
    results = []
    for seed in seeds:
        sim = (
            Simulation(seed, nodes=nodes)
            if node_class is None
            else Simulation(seed, nodes=nodes, node_class=node_class)
        )
        results.append(sim.run())
    return results


def _failures(results) -> list[str]:
    return [
        f"seed {r.seed}: {v}  (replay: python -m tests.sim.run --seeds 1 --start {r.seed}"
        f" --nodes {r.nodes})"
        for r in results
        for v in r.violations
    ]


@pytest.mark.parametrize("nodes", [3, 5])
def test_no_violations(nodes: int) -> None:
    results = _run(range(CI_SEEDS), nodes=nodes)
    failures = _failures(results)
    assert not failures, "\n".join(failures[:10])
    assert all(r.committed > 0 for r in results)


@pytest.mark.parametrize("seed,nodes", LIVENESS_REGRESSION_SEEDS)
def test_liveness_regressions(seed: int, nodes: int) -> None:
    result = Simulation(seed, nodes=nodes).run()
    assert not _failures([result])
    assert result.commit_ticks <= result.recovery_ticks


def test_a_follower_left_behind_is_a_liveness_violation() -> None:
    """Past the budget, a slow catch-up gets time while it advances (up to LIVENESS_CAP_TICKS);
    one that stops is caught within CATCH_UP_STALL_ELECTIONS election timeouts, not at the cap."""
    results = [Simulation(seed, node_class=MUTATIONS["abandons-laggards"]).run() for seed in range(20)]
    stalls = [v for r in results for v in r.violations if "then the members behind stopped advancing" in v]
    assert stalls, "\n".join(_failures(results)[:5])
    assert all(r.ticks < DEFAULT_FAULT_TICKS + LIVENESS_CAP_TICKS for r in results if r.violations)


def _fresh_results(what: str, **options: object) -> tuple[int, list]:
    """Seeds from a start drawn now: the fixed ranges are a regression set, these look for what
    they miss. The start is printed, and in the failure message, so a failure replays."""
    start = int(os.environ.get("ESC_SIM_FRESH_START") or random.SystemRandom().randrange(10**9, 2 * 10**9))
    print(f"fresh {what} from {start}; replay with ESC_SIM_FRESH_START={start}")
    began = time.process_time()
    results = []
    for seed in range(start, start + FRESH_SEEDS_MAX):
        results.append(Simulation(seed, **options).run())  # type: ignore[arg-type]
        if time.process_time() - began > FRESH_SEEDS_CPU_S:
            break
    return start, results


@pytest.mark.parametrize("nodes", [3, 5])
def test_fresh_seeds(nodes: int) -> None:
    start, results = _fresh_results(f"simulator seeds ({nodes} nodes)", nodes=nodes)
    failures = _failures(results)
    assert not failures, f"fresh seeds from {start}:\n" + "\n".join(failures[:10])
    assert len(results) >= 1 and all(r.committed > 0 for r in results)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_no_violations_many_seeds() -> None:
    """The long run (4 to 5 minutes on one core, near the suite's default timeout of 300 s);
    python -m tests.sim.run runs it in parallel."""
    results = _run(range(CI_SEEDS, CI_SEEDS + 10_000))
    failures = _failures(results)
    assert not failures, "\n".join(failures[:10])


def test_no_violations_when_disks_are_lost() -> None:
    results = [Simulation(seed, disk_loss=True).run() for seed in range(DISK_LOSS_CI_SEEDS)]
    failures = _failures(results)
    assert not failures, "\n".join(f + " --disk-loss" for f in failures[:10])
    assert sum(r.events["lose_disk"] for r in results) >= DISK_LOSS_CI_SEEDS // 2


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_no_violations_when_disks_are_lost_many_seeds() -> None:
    results = [Simulation(seed, disk_loss=True).run() for seed in range(DISK_LOSS_CI_SEEDS, DISK_LOSS_CI_SEEDS + 8000)]
    failures = _failures(results)
    assert not failures, "\n".join(f + " --disk-loss" for f in failures[:10])


def test_checker_catches_a_rejoining_node_that_votes_at_once() -> None:
    for seed in REJOIN_VOTES_SEEDS:
        result = Simulation(seed, node_class=MUTATIONS["rejoin-votes"], disk_loss=True).run()
        assert result.violations, f"seed {seed} no longer catches rejoin-votes"
        assert not Simulation(seed, disk_loss=True).run().violations


def test_fault_model_is_exercised() -> None:
    """A green run means something only if the faults and features actually happened."""
    events: collections.Counter[str] = collections.Counter()
    for result in _run(range(200)):
        events.update(result.events)
    for kind in (
        "drop",
        "duplicate",
        "partitioned",
        "crash",
        "crash_in_ready",
        "pause",
        "skipped_tick",
        "snapshot_install",
        "compact",
        "read_served",
        "transfer",
        "proposal_refused",
        "proposal_committed",
        "proposal_superseded",
        "batched_ready",
    ):
        assert events[kind] > 0, f"{kind} never happened in 200 seeds: {dict(events)}"


def test_replay_is_deterministic() -> None:
    first = Simulation(1234).run()
    second = Simulation(1234).run()
    assert (first.steps, first.committed, first.elections, first.recovery_ticks) == (
        second.steps,
        second.committed,
        second.elections,
        second.recovery_ticks,
    )
    assert first.events == second.events


@pytest.mark.parametrize("mutation", ["vote-ignores-log", "vote-twice"])
def test_checker_catches_mutation(mutation: str) -> None:
    """Mutation check: a core that breaks one rule must make the simulator report violations."""
    results = _run(range(60), node_class=MUTATIONS[mutation])
    caught = [r for r in results if r.violations]
    assert caught, f"the simulator missed the {mutation} mutation in 60 seeds"


def test_checker_catches_old_term_commit() -> None:
    """Figure 8 mutation: commit on a previous-term majority; caught on the recorded seeds."""
    assert OLD_TERM_COMMIT_SEEDS, "no recorded seeds"
    for seed in OLD_TERM_COMMIT_SEEDS:
        result = Simulation(seed, node_class=MUTATIONS["old-term-commit"]).run()
        assert result.violations, f"seed {seed} no longer catches old-term-commit"
        # The same seed is clean with the real core, so the violation is the mutation's doing.
        assert not Simulation(seed).run().violations


@pytest.mark.parametrize("seed", MEMBERSHIP_REGRESSION_SEEDS)
def test_membership_regressions(seed: int) -> None:
    result = Simulation(seed, membership=True).run()
    assert not _failures([result]), _failures([result])


def test_no_violations_while_membership_changes() -> None:
    results = [Simulation(seed, membership=True).run() for seed in range(MEMBERSHIP_CI_SEEDS)]
    failures = _failures(results)
    assert not failures, "\n".join(f + " --membership" for f in failures[:10])
    events: collections.Counter[str] = collections.Counter()
    for result in results:
        events.update(result.events)
    for kind in ("add-learner", "add-voter", "promote", "remove", "remove_leader", "refused"):
        assert events[f"membership_{kind}"] > 0, f"membership_{kind} never happened: {dict(events)}"


def test_fresh_membership_seeds() -> None:
    start, results = _fresh_results("membership seeds", membership=True)
    failures = _failures(results)
    assert not failures, f"fresh membership seeds from {start}:\n" + "\n".join(f + " --membership" for f in failures[:10])
    assert len(results) >= 1


def test_checker_catches_two_membership_changes_in_flight() -> None:
    for seed in TWO_CHANGES_SEEDS:
        result = Simulation(seed, membership=True, node_class=MUTATIONS["two-changes-in-flight"]).run()
        assert result.violations, f"seed {seed} no longer catches two-changes-in-flight"
        assert not Simulation(seed, membership=True).run().violations


def test_checker_catches_a_change_before_the_leaders_first_commit() -> None:
    for seed in CHANGE_BEFORE_TERM_COMMIT_SEEDS:
        result = Simulation(seed, membership=True, node_class=MUTATIONS["change-before-term-commit"]).run()
        assert result.violations, f"seed {seed} no longer catches change-before-term-commit"
        assert not Simulation(seed, membership=True).run().violations


def test_runner_reports_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--seeds", "3", "--start", "7"]) == 0
    out = capsys.readouterr().out
    assert "schedules=3 " in out and "violations=0" in out and "slowest_recovery_ticks=" in out
    assert "commit_ticks median/p99/max " in out


def test_runner_prints_replay_command_on_violation(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--seeds", "30", "--mutation", "vote-twice"]) == 1
    out = capsys.readouterr().out
    assert "VIOLATION seed" in out
    assert "replay: python -m tests.sim.run --seeds 1 --start" in out


def test_the_simulator_runs_the_nodes_ready_executor(tmp_path: Path) -> None:
    """The Ready order and sync rules the simulator proves are the node's own, not a copy."""
    host = Simulation(0).hosts[1]
    assert type(host.executor) is ReadyExecutor
    node = open_node(tmp_path)
    try:
        assert type(node.executor) is ReadyExecutor
    finally:
        close_node(node)


def test_checker_catches_acks_before_sync() -> None:
    """A follower that acks entries before they are durable: caught on the recorded seeds."""
    for seed in ACK_BEFORE_SYNC_SEEDS:
        result = Simulation(seed, executor_class=EXECUTOR_MUTATIONS["ack-before-sync"]).run()
        assert result.violations, f"seed {seed} no longer catches ack-before-sync"
        assert not Simulation(seed).run().violations
