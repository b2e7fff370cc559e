"""Partitions: a 3-node cluster in a private network namespace, links cut with iptables there.

The test process enters the namespace itself (setns on its thread), so the nodes it starts
and the clients it opens all live in it; the root namespace's rules are never touched.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from eventstream.client import Client
from eventstream.errors import Unavailable
from eventstream.tls import init_certs
from tests.cluster.harness import LocalCluster, NetNamespace

# Both replication modes: a pool worker's link must be cut by the same rules as the pair's.
pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("replication_mode")]

@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_minority_partition_keeps_serving_and_majority_loss_is_unavailable_until_healed(
    netns: NetNamespace, tmp_path: Path, tls: bool
) -> None:
    options: dict[str, Any] = {}
    if tls:
        init_certs(tmp_path / "tls", 3, [])
        options["tls_dir"] = str(tmp_path / "tls")
    cluster = LocalCluster(tmp_path / "nodes", 3, distinct_hosts=True, **options).start()
    ca = cluster.tls_ca
    try:
        leader = cluster.leader()
        others = [k for k in cluster.nodes if k != leader]
        with Client(cluster.addresses, timeout_s=10.0, tls_ca=ca) as c:
            c.append(b"before", event_id="p-0")
            # Cut one follower off from both others: the majority (leader + one) keeps serving.
            isolated = others[0]
            for k in cluster.nodes:
                if k != isolated:
                    netns.cut(cluster.host_of(isolated), cluster.host_of(k))
            for i in range(1, 21):
                r = c.append(b"minority cut", event_id=f"p-{i}")
                assert not r.duplicate
            assert cluster.leader(exclude=(isolated,)) == leader
            # Now cut the leader from the remaining follower too: no majority anywhere.
            netns.cut(cluster.host_of(leader), cluster.host_of(others[1]))
        with Client(cluster.addresses, timeout_s=4.0, tls_ca=ca) as c:
            started = time.monotonic()
            # check-quorum: the old leader steps down instead of holding writes it cannot
            # commit, and every node then answers Unavailable (no leader known).
            with pytest.raises(Unavailable):
                c.append(b"no quorum", event_id="p-lost")
            assert time.monotonic() - started < 10.0
        netns.heal()
        with Client(cluster.addresses, timeout_s=15.0, tls_ca=ca) as c:
            healed = c.append(b"after heal", event_id="p-21")
            assert not healed.duplicate
            # The write that failed during the partition may or may not have committed; its
            # retry is answered once either way.
            retry = c.append(b"no quorum", event_id="p-lost")
            again = c.append(b"no quorum", event_id="p-lost")
            assert again.duplicate and (again.queue, again.offset) == (retry.queue, retry.offset)
        statuses = cluster.wait_converged(30)
        assert len({s["digest"] for s in statuses.values()}) == 1
    finally:
        cluster.stop()
