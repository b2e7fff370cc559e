"""Membership changes on real processes: grow, replace and shrink a cluster under load, and the
refusals an operator sees (docs/operations.md, "Membership")."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from eventstream.client import Client
from eventstream.errors import Refused
from tests.cluster.harness import (
    LocalCluster,
    Writers,
    check_every_ack_stored_once,
    scrape,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

QUEUES = 4


def _voters(client: Client) -> list[int]:
    return list(client.members()["voters"])


def _add_and_promote(cluster: LocalCluster, client: Client, node_id: int, timeout: float = 60.0) -> float:
    """Start node_id with --join, add it as a learner, promote it once caught up; returns the
    seconds from the add to the promotion."""
    node = cluster.add_node(node_id)
    view = client.add_member(node_id, node.address)
    assert view["members"][str(node_id)]["role"] == "learner"
    added = time.monotonic()
    deadline = added + timeout
    while True:
        try:
            client.promote_member(node_id)
            return time.monotonic() - added
        except Refused as exc:  # it lags: it catches up from the leader meanwhile
            if time.monotonic() > deadline:
                raise AssertionError(f"learner {node_id} never caught up: {exc}") from None
            time.sleep(0.2)


def _remove(cluster: LocalCluster, client: Client, node_id: int) -> None:
    client.remove_member(node_id)
    assert node_id not in _voters(client)
    # Its link goes a grace period after the removal commits; stopping it earlier is fine too.
    cluster.retire(node_id)


def _elections(cluster: LocalCluster) -> float:
    return sum(scrape(n)["esc_elections_total"] for n in cluster.nodes.values())


def _rate(writers: Writers, seconds: float) -> float:
    before = writers.count()
    time.sleep(seconds)
    return (writers.count() - before) / seconds


def test_grow_replace_and_shrink_under_load(tmp_path: Path) -> None:
    """3 -> 5 voters, a follower and then the leader replaced by new nodes at new addresses, then
    5 -> 3, all while clients append: every acknowledged event stored once, one digest, the
    membership the same everywhere, and no election beyond the leader's hand-over."""
    cluster = LocalCluster(tmp_path, 3, spare=4, queue_count=QUEUES).start()
    try:
        first_leader = cluster.leader(20)
        rates: dict[str, float] = {}
        with Writers(cluster, count=3) as writers, Client(cluster.addresses, timeout_s=30) as admin:
            assert wait_until(lambda: writers.count() > 200, 30)
            rates["3 voters"] = _rate(writers, 2)
            for node_id in (4, 5):
                _add_and_promote(cluster, admin, node_id)
            assert _voters(admin) == [1, 2, 3, 4, 5]
            rates["5 voters"] = _rate(writers, 2)
            elections_before = _elections(cluster)

            follower = next(k for k in (1, 2, 3) if k != cluster.leader(20))
            _add_and_promote(cluster, admin, 6)
            _remove(cluster, admin, follower)
            leader = cluster.leader(20)
            _add_and_promote(cluster, admin, 7)
            _remove(cluster, admin, leader)  # the leader removes itself and hands over
            new_leader = cluster.leader(20)
            assert new_leader != leader
            rates["replaced"] = _rate(writers, 2)

            for node_id in [k for k in sorted(cluster.nodes) if k != new_leader][:2]:
                _remove(cluster, admin, node_id)
            assert len(_voters(admin)) == 3
            rates["3 voters again"] = _rate(writers, 2)
            elections = _elections(cluster)
        acked = [event_id for event_id, _ in writers.acknowledged()]
        print(f"first leader {first_leader}; events/s by phase: {rates}; acked {len(acked)}; errors {dict(writers.errors)}")
        assert all(rate > 0 for rate in rates.values()), rates
        check_every_ack_stored_once(cluster, acked, QUEUES)
        statuses = cluster.wait_converged(30)
        voters = sorted(cluster.nodes)
        for status in statuses.values():
            membership = status["membership"]
            assert membership["voters"] == voters and membership["learners"] == [] and not membership["pending"]
            assert set(membership["addresses"]) == {str(k) for k in voters}
        # Removed nodes start no elections: the only new leader after growing is the hand-over
        # when the leader removed itself (the survivors' counters; retired nodes took theirs).
        assert elections - elections_before <= 1, (elections_before, elections)
    finally:
        cluster.stop()


def _esc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventstream.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def _membership(cluster: LocalCluster) -> dict[str, Any]:
    with Client(cluster.addresses) as c:
        return c.members()


def test_refusals_are_one_line_and_change_nothing(tmp_path: Path) -> None:
    # Election timeouts of 2 s leave room to act while a paused voter still counts as live.
    cluster = LocalCluster(tmp_path, 3, spare=2, queue_count=QUEUES, max_promotion_lag=5, election_ticks=200).start()
    try:
        leader = cluster.leader(30)
        where = ",".join(cluster.addresses)
        host = cluster.nodes[1].host
        with Client(cluster.addresses) as c:
            for i in range(30):
                c.append(b"x", event_id=f"e{i}")
        before = _membership(cluster)

        _refused(_esc("member", "add", f"2={host}:1", "--cluster", where), "node id 2 is in use")
        _refused(_esc("member", "add", f"4={cluster.nodes[3].address}", "--cluster", where), "in use by node 3")
        _refused(_esc("member", "add", "4=nowhere", "--cluster", where), "host:port")
        _refused(_esc("member", "add", "four=1.2.3.4:5", "--cluster", where), "ID=HOST:PORT")
        _refused(_esc("member", "remove", "9", "--cluster", where), "not a member")
        same = ("voters", "learners", "index")
        assert {k: before[k] for k in same} == {k: v for k, v in _membership(cluster).items() if k in same}

        # A learner that is not running lags: its promotion is refused.
        spare4, spare5 = f"{host}:{cluster.port + 3}", f"{host}:{cluster.port + 4}"
        added = _esc("member", "add", f"4={spare4}", "--cluster", where)
        assert added.returncode == 0, added.stderr
        _refused(_esc("member", "promote", "4", "--cluster", where), "behind", "max_promotion_lag=5")

        # With one voter down, removing another would leave no live majority: refused unless forced.
        down, other = [k for k in (1, 2, 3) if k != leader]
        cluster.nodes[down].stop()
        time.sleep(4.5)  # two election timeouts: the leader no longer counts it live
        _refused(_esc("member", "remove", str(other), "--cluster", where), "live", "--force")
        assert _voters_of(cluster) == [1, 2, 3]
        cluster.nodes[down].start()
        assert wait_until(lambda: _caught_up(cluster), 30)

        # One change at a time: with both followers paused, a change is appended but cannot
        # commit, and the next is refused until it does.
        followers = [cluster.nodes[k] for k in (1, 2, 3) if k != leader]
        result: dict[str, Any] = {}

        def add_voter() -> None:
            with Client([cluster.nodes[leader].address], timeout_s=30) as c:
                result["view"] = c.add_member(5, spare5, learner=False)

        for node in followers:
            node.pause()
        try:
            thread = threading.Thread(target=add_voter)
            thread.start()
            assert wait_until(lambda: _membership_at(cluster.nodes[leader])["pending"], 5)
            _refused(_esc("member", "remove", "4", "--cluster", cluster.nodes[leader].address),
                     "not yet committed", "one change at a time")
        finally:
            for node in followers:
                node.resume()
        thread.join(40)
        assert result["view"]["members"]["5"]["role"] == "voter"
        listed = _esc("member", "list", "--cluster", where)
        assert listed.returncode == 0, listed.stderr
        assert [line.split()[:2] for line in listed.stdout.strip().splitlines()] == \
            [["1", "voter"], ["2", "voter"], ["3", "voter"], ["4", "learner"], ["5", "voter"]], listed.stdout
    finally:
        cluster.stop()


def _voters_of(cluster: LocalCluster) -> list[int]:
    return list(_membership(cluster)["voters"])


def _membership_at(node: Any) -> dict[str, Any]:
    with Client([node.address]) as c:
        return c.members()


def _caught_up(cluster: LocalCluster) -> bool:
    views = [n.status() for n in cluster.nodes.values()]
    return all(v is not None for v in views) and len({v["applied"] for v in views if v}) == 1


def test_a_joined_node_that_loses_its_disk_rejoins(tmp_path: Path) -> None:
    """A node that joined (no --peers) and lost its data dir comes back with --rejoin: it joins
    again, withholds its vote until caught up, and ends on the cluster's digest."""
    cluster = LocalCluster(tmp_path, 3, spare=1, queue_count=QUEUES).start()
    try:
        cluster.leader(20)
        with Client(cluster.addresses) as c:
            _add_and_promote(cluster, c, 4)
            for i in range(200):
                c.append(b"before", event_id=f"b{i}")
            node = cluster.nodes[4]
            # A short log lets the promotion come before node 4 has even started: wait until it
            # holds the log, so that there is a disk to lose.
            assert wait_until(lambda: (st := node.status()) is not None and st["applied"] >= 200, 30)
            node.kill()
            shutil.rmtree(node.data_dir)
            for i in range(200):
                c.append(b"while down", event_id=f"d{i}")
            node.extra_args = ["--rejoin"]
            node.start()
            assert wait_until(lambda: (st := node.status()) is not None and not st["rejoining"]
                              and st["membership"]["this_node"] == "voter", 30)
            assert "rejoining with an empty data dir" in node.log_text()
        statuses = cluster.wait_converged(30)
        assert len({s["digest"] for s in statuses.values()}) == 1 and len(statuses) == 4
    finally:
        cluster.stop()
