"""A node loses its disk and comes back empty (`esc node --rejoin`), real processes.

Raft counts a vote as a promise about the voter's log. The events below are acknowledged while
one follower is down, so only the leader and the other follower hold them; that follower then
loses its data and the leader crashes. The two nodes left up are the one that never had the
events and the one that lost them: if the emptied node voted, the first would be elected and
the acknowledged events would be gone. With --rejoin it withholds its vote, so the cluster
waits (unavailable, not wrong) until the old leader is back, then catches the node up and lets
it vote again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eventstream.client import Client
from eventstream.node import REJOIN_MARKER
from tests.cluster.harness import LocalCluster, check_every_ack_stored_once, wait_until

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("replication_mode")]

QUEUES = 4
EVENTS = 300
# Elections time out after 0.5-1 s here (election_ticks 50 x tick_ms 10): several rounds.
NO_LEADER_WATCH_S = 6.0


def test_a_node_that_lost_its_disk_does_not_vote_until_it_has_caught_up(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, 3, queue_count=QUEUES).start()
    try:
        leader_id = cluster.leader(30)
        lost_id, behind_id = sorted(k for k in cluster.nodes if k != leader_id)
        leader, lost, behind = cluster.nodes[leader_id], cluster.nodes[lost_id], cluster.nodes[behind_id]
        behind.kill()
        acked = [b"acked-%d" % i for i in range(EVENTS)]
        with Client([leader.address, lost.address], timeout_s=20) as client:
            for start in range(0, EVENTS, 50):
                client.append_batch([{"payload": b"p", "event_id": i} for i in acked[start:start + 50]])

        lost.kill()
        shutil.rmtree(lost.data_dir)
        leader.kill()
        lost.extra_args = ["--rejoin"]
        lost.start()
        behind.start()
        assert wait_until(lambda: (s := lost.status()) is not None and s["rejoining"], 30), lost.log_text()[-2000:]
        assert (lost.data_dir / REJOIN_MARKER).exists()

        def someone_leads() -> bool:
            return any((s := n.status(0.5)) is not None and s["role"] == "leader" for n in (lost, behind))

        assert not wait_until(someone_leads, NO_LEADER_WATCH_S), (
            "a leader was elected with the vote of the node that lost the acknowledged events")

        leader.start()
        assert cluster.leader(30) == leader_id  # the only log that holds everything
        assert wait_until(lambda: (s := lost.status()) is not None and not s["rejoining"], 30), lost.log_text()[-2000:]
        assert not (lost.data_dir / REJOIN_MARKER).exists()
        assert "votes again" in lost.log_text()
        check_every_ack_stored_once(cluster, acked, QUEUES)
        # It votes again: with the old leader gone once more, the other two elect one of them.
        leader.kill()
        assert cluster.leader(30, exclude=(leader_id,)) in (lost_id, behind_id)
    finally:
        cluster.stop()
