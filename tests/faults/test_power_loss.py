"""Power loss on real processes: every node's data dir is on tests/faults/power_loss_fs.py, which
drops whatever was written but not synced when its machine loses power.

With wal_sync on, a node acknowledges an append only once a majority synced it, so no power loss
(of a minority, or of every node at once) loses an acknowledged event. With wal_sync off, writes
are synced in the background: a minority's power loss still loses nothing (the majority holds
every acknowledged event in its page cache and stays up), and a power loss of every node loses
at most the last sync interval's events; the cluster still comes back to one state."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.harness import Writers, check_every_ack_stored_once, wait_until
from tests.faults.power_loss import (
    EVENTS_MAX,
    QUEUES,
    PowerLossCluster,
    grow,
    lost_after_power_loss_of_all,
    power_loss_unavailable_reason,
)

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("replication_mode")]


@pytest.fixture(autouse=True)
def _needs_fuse() -> None:
    reason = power_loss_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def _minority_power_losses(cluster: PowerLossCluster, writers: Writers) -> None:
    """Under load: a follower loses power, then the leader does (one node at a time)."""
    grow(writers, 200)
    leader = cluster.cluster.leader(30)
    follower = min(k for k in cluster.cluster.nodes if k != leader)
    cluster.power_loss([follower])
    grow(writers, 200)
    # One node at a time means the first is whole again before the second goes: without
    # wal_sync two overlapping losses may take an acknowledged entry from a majority (a CI run
    # cut the leader 0.6 s after the follower came back, and the two then elected a leader
    # without it).
    commit = cluster.cluster.nodes[cluster.cluster.leader(30)].status()["commit"]  # type: ignore[index]
    assert wait_until(lambda: (cluster.cluster.nodes[follower].status() or {}).get("applied", 0) >= commit, 30), \
        f"node {follower} did not catch up after its power loss"
    cluster.power_loss([cluster.cluster.leader(30)])
    grow(writers, 200)


def test_power_loss_with_wal_sync_loses_no_acknowledged_event(tmp_path: Path) -> None:
    with PowerLossCluster(tmp_path, 3, queue_count=QUEUES, wal_sync=True) as cluster:
        with Writers(cluster.cluster, count=3, batch=4, events_max=EVENTS_MAX) as writers:
            _minority_power_losses(cluster, writers)
            cluster.power_loss(list(cluster.cluster.nodes))  # every node at once, under load
            cluster.cluster.leader(60)
            grow(writers, 200)
        print(f"{len(writers.acked)} events acknowledged across 3 power losses; failed calls {dict(writers.errors)}")
        check_every_ack_stored_once(cluster.cluster, writers.acked, QUEUES)


def test_power_loss_of_a_minority_without_wal_sync_loses_nothing(tmp_path: Path) -> None:
    with PowerLossCluster(tmp_path, 3, queue_count=QUEUES, wal_sync=False) as cluster:
        with Writers(cluster.cluster, count=3, batch=4, events_max=EVENTS_MAX) as writers:
            _minority_power_losses(cluster, writers)
        check_every_ack_stored_once(cluster.cluster, writers.acked, QUEUES)


def test_power_loss_of_every_node_without_wal_sync_comes_back_consistent(tmp_path: Path) -> None:
    window = lost_after_power_loss_of_all(tmp_path)
    print(f"wal_sync=false, power loss of all 3 nodes under load: {window.lost} of {window.acknowledged} "
          f"acknowledged events lost, the oldest acknowledged {window.oldest_lost_s * 1000:.0f} ms before the power cut")
    assert window.acknowledged >= 600
