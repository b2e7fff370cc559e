"""Raft core figures: entries committed per second through a 3-node cluster simulated
in one process with no faults, so the figure is the consensus core's own cost (no disk, no
network, no codec). Entry sizes 100 B and 64 KiB; the core never copies entry data, so the two
should be close. Run with `make bench`; figures in bench/RESULTS.md.

Each round proposes WINDOW entries on the leader, then lets every node carry out its Ready
(persist to MemoryStorage, send, apply) and delivers messages until the cluster is idle.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from eventstream.raft import MemoryStorage, Message, RaftConfig, RaftNode, Role

WINDOW = 64
IDS = (1, 2, 3)


class Cluster3:
    def __init__(self) -> None:
        self.storages = {i: MemoryStorage() for i in IDS}
        self.nodes = {
            i: RaftNode(RaftConfig(id=i, voters=IDS), self.storages[i], random.Random(i))
            for i in IDS
        }
        self.queue: list[Message] = []
        self.applied = dict.fromkeys(IDS, 0)
        self.nodes[1].campaign()
        self.settle()
        assert self.nodes[1].role == Role.LEADER

    def settle(self) -> None:
        nodes = self.nodes
        while True:
            moved = False
            for node_id, node in nodes.items():
                if not node.has_ready():
                    continue
                moved = True
                rd = node.ready()
                self.queue += rd.messages
                storage = self.storages[node_id]
                storage.append(rd.entries)
                if rd.hard_state is not None:
                    storage.set_hard_state(rd.hard_state)
                self.queue += rd.persisted_messages
                if rd.committed_entries:
                    self.applied[node_id] = rd.committed_entries[-1].index
                node.advance(rd)
            if not self.queue and not moved:
                return
            queue, self.queue = self.queue, []
            for m in queue:
                nodes[m.to].step(m)


def commit_entries(count: int, payload: bytes) -> Cluster3:
    cluster = Cluster3()
    leader = cluster.nodes[1]
    target = leader.log.last_index() + count
    while leader.log.last_index() < target:
        for _ in range(min(WINDOW, target - leader.log.last_index())):
            leader.propose(payload)
        cluster.settle()
    assert min(cluster.applied.values()) == target
    return cluster


@pytest.mark.parametrize(
    ("entry_bytes", "count"),
    [(100, 20_000), (64 * 1024, 5_000)],
    ids=["100B", "64KiB"],
)
def test_bench_core_commit_throughput(benchmark: Any, entry_bytes: int, count: int) -> None:
    payload = b"x" * entry_bytes
    benchmark.pedantic(commit_entries, args=(count, payload), rounds=5, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info["entries"] = count
    benchmark.extra_info["entries_per_s"] = round(count / median)
    benchmark.extra_info["payload_mb_per_s"] = round(count * entry_bytes / median / 1e6, 1)
