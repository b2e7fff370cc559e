"""The replication pool on real 3-node clusters: a SIGKILLed worker under load, and a leader that
loses its term while its workers still hold its messages."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.cluster.harness import LocalCluster, Writers, check_every_ack_stored_once, local_cluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module", autouse=True)
def replication_mode() -> str:
    """Overrides the conftest's: these tests are about the pool alone."""
    return "pool"


def workers_of(status: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(peer): w for peer, w in status["replication_workers"].items()}


def wait_status(cluster: LocalCluster, node: int, predicate: Any, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = cluster.nodes[node].status()
        if status is not None and predicate(status):
            return status
        time.sleep(0.05)
    raise TimeoutError(f"node {node} status never matched: {status}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path, 3, queue_count=4, replication="pool") as c:
        yield c


def test_sigkilled_worker_under_load_is_restarted_and_its_follower_catches_up(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    before = wait_status(cluster, leader, lambda s: len(s["replication_workers"]) == 2)
    victim_peer, victim = next(iter(workers_of(before).items()))
    # Short attempts: a frozen leader's client moves on to the others quickly.
    with Writers(cluster, attempt_timeout_s=1.0) as writers:
        time.sleep(1.5)
        acked_at_kill = len(writers.acked)
        os.kill(victim["pid"], signal.SIGKILL)
        after = wait_status(cluster, leader, lambda s: workers_of(s).get(victim_peer, {}).get("restarts") == 1)
        time.sleep(1.5)
    restarted = workers_of(after)[victim_peer]
    assert restarted["pid"] != victim["pid"]
    assert len(writers.acked) > acked_at_kill, "writes stopped after the worker was killed"
    # The node kept leading, in the same term: losing a worker is not losing leadership.
    assert cluster.leader() == leader
    now = cluster.nodes[leader].status()
    assert now is not None and now["term"] == before["term"]
    check_every_ack_stored_once(cluster, writers.acked, 4)
    # The restarted worker carried the follower's traffic after the kill.
    final = wait_status(cluster, leader, lambda s: workers_of(s)[victim_peer]["messages_sent"] > 0)
    assert workers_of(final)[victim_peer]["pid"] == restarted["pid"]
    # Entries went to the workers as orders on the shared entry ring, and the followers' acks
    # came back through the workers (the peer links carried none of them).
    for peer, worker in workers_of(final).items():
        assert worker["orders"] > 0 and worker["answers_relayed"] > 0, worker
        # Under load, no worker slept through an order: its doorbell always came.
        assert worker["missed_wakeups"] == 0, worker
        assert peer == victim_peer or worker["orders_timed"] > 0, worker
    # Worker CPU and RSS are on the leader's /metrics, one series per follower.
    with urllib.request.urlopen(f"http://{cluster.nodes[leader].http}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    for peer in workers_of(final):
        assert re.search(rf'esc_replication_worker_rss_bytes{{peer="{peer}"}} [1-9]', metrics), metrics
        assert f'esc_replication_worker_cpu_seconds{{peer="{peer}"}}' in metrics
    assert f'esc_replication_worker_restarts{{peer="{victim_peer}"}} 1.0' in metrics
    assert f'esc_replication_order_wait_seconds_count{{peer="{victim_peer}"}}' in metrics


def test_old_terms_messages_held_by_workers_are_refused_after_a_new_leader(cluster: LocalCluster) -> None:
    old = cluster.leader()
    status = wait_status(cluster, old, lambda s: len(s["replication_workers"]) == 2)
    pids = [w["pid"] for w in workers_of(status).values()]
    leader_proc = cluster.nodes[old].proc
    assert leader_proc is not None
    with Writers(cluster, count=2, attempt_timeout_s=1.0) as writers:
        time.sleep(1.0)
        # Freeze the workers first: the leader keeps filling their rings with its term's
        # appends and heartbeats, which stay there, in flight, undelivered.
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(0.3)
        held = cluster.nodes[old].status()
        os.kill(leader_proc.pid, signal.SIGSTOP)
        try:
            assert held is not None and held["role"] == "leader"
            in_flight = {int(p): s["messages"] - workers_of(held)[int(p)]["messages_sent"] for p, s in held["pipelines"].items()}
            assert all(n > 0 for n in in_flight.values()), f"no messages held by the frozen workers: {in_flight}"
            new = cluster.leader(timeout=15.0, exclude=(old,))
            new_term = cluster.nodes[new].status()["term"]  # type: ignore[index]
            assert new_term > held["term"]
            acked_under_new = len(writers.acked)
            time.sleep(1.0)
            # The old term's messages now reach the followers, after the new term began.
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            time.sleep(1.0)
        finally:
            os.kill(leader_proc.pid, signal.SIGCONT)
            for pid in pids:
                with_suppressed_lookup(os.kill, pid, signal.SIGCONT)
        time.sleep(1.0)
    assert len(writers.acked) > acked_under_new
    # The stale messages changed nothing: the new leader still leads in its term, and the old
    # one learnt the term, stepped down and stopped its workers.
    assert cluster.leader() == new
    statuses = {k: n.status() for k, n in cluster.nodes.items()}
    assert statuses[new]["term"] == new_term  # type: ignore[index]
    stepped = wait_status(cluster, old, lambda s: s["role"] == "follower" and not s["replication_workers"])
    assert stepped["term"] == new_term
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids), "old leader's workers outlived its leadership"
    check_every_ack_stored_once(cluster, writers.acked, 4)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def with_suppressed_lookup(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except ProcessLookupError:
        pass
