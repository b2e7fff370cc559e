"""`esc node --rejoin` (eventstream/node/files.py): which starts withhold the node's vote, and that
the mark survives a restart until the catch-up is durable (the protocol side:
tests/unit/raft/test_features.py; real processes: tests/faults/test_disk_loss.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from eventstream.node import REJOIN_MARKER, Node
from eventstream.raft.messages import HardState
from tests.unit.node_on_disk import close_node, open_node


def _open(data: Path, rejoin: bool | None) -> Node:
    return open_node(data, rejoin=rejoin)


def test_an_empty_data_dir_with_rejoin_withholds_the_vote_across_restarts(tmp_path: Path) -> None:
    node = _open(tmp_path, rejoin=True)
    assert node.raft is not None and node.raft.withholding_votes
    assert (tmp_path / REJOIN_MARKER).exists() and node.status()["rejoining"]
    # Restarted before it caught up, even without the flag: the log it has now is not all.
    node.storage.save_hard_state(HardState(4, 0, 0))  # type: ignore[union-attr]
    close_node(node)
    again = _open(tmp_path, rejoin=None)
    assert again.raft is not None and again.raft.withholding_votes
    close_node(again)


def test_rejoin_on_a_data_dir_with_a_log_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = _open(tmp_path, rejoin=None)
    assert first.raft is not None and not first.raft.withholding_votes and not first.status()["rejoining"]
    first.storage.save_hard_state(HardState(3, 2, 0))  # type: ignore[union-attr]  # it voted in term 3
    close_node(first)
    with caplog.at_level(logging.INFO, logger="eventstream.node"):
        node = _open(tmp_path, rejoin=True)
    assert node.raft is not None and not node.raft.withholding_votes
    assert not (tmp_path / REJOIN_MARKER).exists()
    assert "--rejoin has no effect" in caplog.text
    close_node(node)


def test_the_mark_goes_once_the_core_votes_again(tmp_path: Path) -> None:
    node = _open(tmp_path, rejoin=True)
    assert node.raft is not None
    node.raft.withholding_votes = False  # as advance() sets it once the catch-up is durable
    node._after_advance()
    assert not (tmp_path / REJOIN_MARKER).exists() and not node.status()["rejoining"]
    close_node(node)
    again = _open(tmp_path, rejoin=None)
    assert again.raft is not None and not again.raft.withholding_votes
    close_node(again)
