"""A follower behind a slow link: a userspace proxy (tests/faults/delay_proxy.py) holds every
byte between node 3 and its peers for DELAY_S each way.

The lower id dials, so nodes 1 and 2 reach node 3 only through the proxy (their --peers name
it), and pool-mode workers dial through it too. Nodes 1 and 2 elect a leader before node 3
starts, so the slow node follows. Checked: appends keep committing while the slow follower
trails and then catches up, with no election (a delay well inside the election timeout must
not unseat anyone); with the fast follower stopped, appends still commit through the slow one;
every acknowledged event is stored once on all three.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import (
    LocalCluster,
    NodeProcess,
    Writers,
    check_every_ack_stored_once,
    wait_until,
)
from tests.faults.delay_proxy import DelayProxy

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("replication_mode")]

DELAY_S = 0.05  # each way; the election timeout is 0.5 to 1 s
QUEUES = 4
SLOW = 3


class _ThroughProxy(NodeProcess):
    """A node whose --peers entry for the slow node is the proxy's address."""

    def __init__(self, cluster: LocalCluster, node_id: int, proxy: DelayProxy) -> None:
        super().__init__(cluster, node_id)
        self.proxy = proxy

    def args(self) -> list[str]:
        args = super().args()
        at = args.index("--peers") + 1
        args[at] = args[at].replace(f"{SLOW}={self.cluster.nodes[SLOW].address}", f"{SLOW}={self.proxy.address}")
        assert self.proxy.address in args[at]
        return args


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path, 3, queue_count=QUEUES)
    host, port = c.nodes[SLOW].address.rsplit(":", 1)
    proxy = DelayProxy((host, int(port)), DELAY_S).start()
    for k in (1, 2):
        c.nodes[k] = _ThroughProxy(c, k, proxy)
    c.root.mkdir(parents=True, exist_ok=True)
    try:
        yield c
    finally:
        c.stop()
        proxy.stop()


def test_a_slow_follower_trails_without_elections_and_carries_commits_when_needed(cluster: LocalCluster) -> None:
    for k in (1, 2):
        cluster.nodes[k].start()
    leader = cluster.leader(timeout=15.0)
    cluster.nodes[SLOW].start()
    fast = 3 - leader  # the other one of nodes 1 and 2
    with Writers(cluster, count=2) as writers:
        time.sleep(3.0)
        status = cluster.nodes[leader].status()
        assert status is not None
        term = status["term"]
        assert str(SLOW) in status["followers"], status["followers"]
        with_both = writers.count()
        # Now a commit needs the slow follower's answer.
        cluster.nodes[fast].stop()
        stopped_at = writers.count()
        carried = wait_until(lambda: writers.count() >= stopped_at + 50, 30.0)
        through_slow = writers.count() - stopped_at
        cluster.nodes[fast].start()
        time.sleep(1.0)
    assert carried, f"only {through_slow} appends committed through the slow follower in 30 s; errors {dict(writers.errors)}"
    assert cluster.leader(timeout=10.0) == leader
    status = cluster.nodes[leader].status()
    assert status is not None and status["term"] == term, "an election happened although every link was up"
    check_every_ack_stored_once(cluster, writers.acked, QUEUES)
    print(f"acked with both followers {with_both}, through the slow one alone {through_slow}, "
          f"in all {len(writers.acked)}; errors {dict(writers.errors)}")
