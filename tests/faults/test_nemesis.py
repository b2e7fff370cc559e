"""Randomized faults against a real cluster under load (tests/faults/nemesis.py): the safety
guarantees hold whatever the schedule did. Replay a failure's schedule with
ESC_NEMESIS_SEED=<seed printed> and the same test id."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from eventstream.local_cluster import LocalCluster
from eventstream.tls import init_certs
from tests.cluster.harness import NetNamespace, wait_until
from tests.faults.nemesis import (
    NODE_OPTIONS,
    SEED_ENV,
    History,
    Nemesis,
    Reader,
    Writer,
    check_history,
    nemesis_seed,
)

pytestmark = pytest.mark.usefixtures("replication_mode")

QUEUE_COUNT = 16  # the node's default


def _run(netns: NetNamespace, tmp_path: Path, nodes: int, seconds: float, tls: bool = False) -> None:
    seed = nemesis_seed()
    print(f"nemesis seed {seed} ({SEED_ENV}={seed} replays this schedule)")
    rng = random.Random(seed)
    options: dict[str, Any] = dict(NODE_OPTIONS)
    if tls:
        init_certs(tmp_path / "tls", nodes + 20, [])
        options["tls_dir"] = str(tmp_path / "tls")
    # Spare ids for the turns that replace a node by a new one.
    cluster = LocalCluster(tmp_path / "nodes", nodes, distinct_hosts=True, spare=20, **options).start()
    nemesis = Nemesis(cluster, netns, rng.randrange(2**32), pool=cluster.options.get("replication") == "pool")
    history = History()
    stop = threading.Event()
    threads: list[threading.Thread] = [
        # Short call timeouts make calls fail mid-fault, so their retries exercise the dedup table.
        Writer(w, cluster.addresses, history, stop, rng.randrange(2**32), batch_max, timeout_s, own_ids,
               cluster.tls_ca)
        for w, (batch_max, timeout_s, own_ids) in enumerate(((1, 1.5, True), (1, 8.0, False), (8, 2.0, True), (40, 8.0, True)))
    ]
    threads.append(Reader(cluster.addresses, history, stop, rng.randrange(2**32), cluster.tls_ca))
    problems: list[str] = []
    try:
        cluster.leader(30)
        for t in threads:
            t.start()
        assert wait_until(lambda: len(history.acks) > 0, 30), "no append acknowledged before any fault"
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            nemesis.run_turn(hold_s=nemesis.rng.uniform(0.8, 2.5))
            time.sleep(nemesis.rng.uniform(0.5, 1.5))
        nemesis.restore()
        healed_at = time.monotonic()
        writers = [t for t in threads if isinstance(t, Writer)]
        # Liveness once healed: every writer gets an answer again within the bound.
        if not wait_until(lambda: {a.writer for a in list(history.acks) if a.acked_at > healed_at} >= {w.number for w in writers}, 45):
            problems.append("some writer had no append acknowledged within 45 s of healing")
        stop.set()
        for t in threads:
            t.join(30)
        problems += check_history(cluster, history, QUEUE_COUNT)
    finally:
        stop.set()
        minority = [t for t in nemesis.turns if t.minority]
        served = sum(1 for t in minority if history.acks_between(t.started, t.ended) > 0)
        summary = (f"seed {seed}; {len(history.acks)} events acknowledged, {dict(history.errors)} failed calls "
                   f"(retried with the same ids); {history.reads_checked} linearizable reads checked, "
                   f"{dict(history.read_errors)} failed; {len(nemesis.turns)} fault turns, appends acknowledged "
                   f"during {served} of the {len(minority)} that left a majority up")
        print(summary)
        print("\n".join(nemesis.log))
        nemesis.continue_all()  # a stopped process would not see SIGTERM
        cluster.stop()
        left = nemesis.surviving_workers(5.0)
        if left:
            problems.append(f"pool workers {left} outlived their nodes by 5 s")
    assert not problems, f"{summary}\n" + "\n".join(problems) + "\nschedule:\n" + "\n".join(nemesis.log)
    # A run that did nothing would prove nothing.
    assert len(history.acks) >= 200 and history.reads_checked >= 20 and len(nemesis.turns) >= 3, summary


@pytest.mark.timeout(240)
def test_random_faults_lose_and_duplicate_nothing(netns: NetNamespace, tmp_path: Path) -> None:
    _run(netns, tmp_path, nodes=3, seconds=20)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_random_faults_on_five_nodes_for_minutes(netns: NetNamespace, tmp_path: Path) -> None:
    _run(netns, tmp_path, nodes=5, seconds=150)


@pytest.mark.timeout(240)
def test_random_faults_with_tls_on(netns: NetNamespace, tmp_path: Path) -> None:
    _run(netns, tmp_path, nodes=3, seconds=20, tls=True)
