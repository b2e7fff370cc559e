"""The node's own snapshots racing a snapshot installed from the leader (eventstream/node/snapshots.py):
a local snapshot is written in a worker thread while apply goes on, and the leader's snapshot
can be installed in that time."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from eventstream.config import NodeConfig
from eventstream.node import Node
from eventstream.node.members import encode_addresses
from eventstream.raft.membership import Membership, encode_membership_entry
from eventstream.raft.messages import Entry, SnapshotChunk, SnapshotMeta
from eventstream.state import StateMachine, encode_set_event_at
from eventstream.state import snapshot as snapshot_module
from eventstream.storage.codec import Event

SEEN_US = 1_700_000_000_000_000


def _entries(first: int, last: int) -> list[tuple[int, int, bytes]]:
    return [(i, 1, encode_set_event_at(SEEN_US + i, [Event(b"id-%d" % i, None, None, 0, b"e%d" % i)]))
            for i in range(first, last + 1)]


def test_a_leader_snapshot_installed_while_a_local_one_is_written_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The leader's state at index 50, as a chunk stream.
    leader = StateMachine.open(str(tmp_path / "leader"))
    for index, term, data in _entries(1, 50):
        leader.apply(index, term, data)
    chunks = b"".join(leader.snapshot_chunks(leader.snapshot()))

    node = Node(NodeConfig(id=1, listen="127.0.0.1:7101", peers={1: "127.0.0.1:7101"}, data_dir=str(tmp_path / "node")))
    assert node.seg_log is not None and node.state is not None and node.storage is not None
    node.seg_log.append(_entries(1, 10))
    for index, term, data in _entries(1, 10):
        node.state.apply(index, term, data)

    writing = threading.Event()
    release = threading.Event()
    real_write = snapshot_module.SnapshotCut.write

    def slow_write(cut: snapshot_module.SnapshotCut) -> str:
        writing.set()
        release.wait(10)
        return real_write(cut)

    monkeypatch.setattr(snapshot_module.SnapshotCut, "write", slow_write)

    async def run() -> None:
        local = asyncio.get_running_loop().create_task(node.snapshots.take())
        assert await asyncio.to_thread(writing.wait, 10)
        # Meanwhile the leader's snapshot arrives and is installed.
        node.snapshots.stage([SnapshotChunk(SnapshotMeta(50, 1, (1,)), 0, chunks, True)])
        node.snapshots.install(50, 1)
        release.set()
        await local

    with caplog.at_level(logging.INFO, logger="eventstream.node"):
        asyncio.run(run())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "the leader's snapshot at index 50 was installed meanwhile" in caplog.text
    assert node.snapshots.last_index == 50
    assert node.storage.snapshot().index == 50
    assert node.state.applied_index == 50 and node.seg_log.first_index == 51
    node.seg_log.close()
    node.state.close()
    leader.close()


def test_the_membership_goes_with_the_nodes_snapshot_and_shows_in_its_status(tmp_path: Path) -> None:
    """A membership entry in the log: the state machine applies it as a no-op, the snapshot
    taken after it records that membership, and a restarted node reads it back from there."""
    config = NodeConfig(id=1, listen="127.0.0.1:7101", peers={1: "127.0.0.1:7101"}, data_dir=str(tmp_path))
    grown = Membership.of((1,), (2,), encode_addresses({1: "127.0.0.1:7101", 2: "127.0.0.1:7102"}))
    entries = [*_entries(1, 4), (5, 1, encode_membership_entry(grown)), *_entries(6, 8)]
    node = Node(config)
    assert node.seg_log is not None
    node.seg_log.append(entries)
    node.seg_log.close()
    assert node.state is not None
    node.state.close()

    node = Node(config)  # reads the membership entry back from its log
    assert node.raft.memberships.current == grown and node.state is not None and node.storage is not None
    for index, term, data in entries:
        node.state.apply(index, term, data)
    asyncio.run(node.snapshots.take())
    meta = node.storage.snapshot()
    assert (meta.index, meta.voters, meta.learners, meta.context) == (8, (1,), (2,), grown.context)
    status = node.status_reporter.status()
    assert status["membership"] == {"voters": [1], "learners": [2], "index": 5, "pending": True,
                                    "this_node": "voter",
                                    "addresses": {"1": "127.0.0.1:7101", "2": "127.0.0.1:7102"}}
    assert node.seg_log is not None
    node.seg_log.close()
    node.state.close()

    node = Node(config)
    assert node.storage is not None
    assert node.storage.snapshot().learners == (2,)
    assert node.raft.membership_at(8) == grown
    assert node.seg_log is not None and node.state is not None
    node.seg_log.close()
    node.state.close()


def test_applied_membership_changes_are_counted_in_the_metrics(tmp_path: Path) -> None:
    config = NodeConfig(id=1, listen="127.0.0.1:7101", peers={1: "127.0.0.1:7101"}, data_dir=str(tmp_path))
    node = Node(config)
    rendered = node.metrics.render().decode()
    assert "esc_voters 1.0" in rendered and "esc_membership_changes_total 0.0" in rendered
    grown = Membership.of((1,), (2, 3))
    node.applier.apply([Entry(1, 1, encode_membership_entry(grown))])
    rendered = node.metrics.render().decode()
    assert "esc_membership_changes_total 1.0" in rendered
    assert "esc_voters 1.0" in rendered and "esc_learners 2.0" in rendered
    assert node.seg_log is not None and node.state is not None
    node.seg_log.close()
    node.state.close()
