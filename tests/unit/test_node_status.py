"""Node.status: what a plain status request costs (eventstream/node.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventstream.config import load_config
from eventstream.node import Node

PEERS = "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103"


def test_only_a_status_that_asks_for_the_digest_reads_the_state(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The digest reads every retained event on the node's one thread: a monitor polling
    # /status must not pay that (seconds per few GB, with no heartbeats meanwhile).
    node = Node(load_config(overrides={"id": 1, "listen": "127.0.0.1:7101", "peers": PEERS,
                                       "data_dir": str(tmp_path)}))
    node.open_storage()
    assert node.state is not None and node.seg_log is not None
    digests: list[int] = []
    real = node.state.digest
    monkeypatch.setattr(node.state, "digest", lambda: digests.append(1) or real())
    try:
        plain = node.status()
        assert "digest" not in plain and "digest_index" not in plain and digests == []
        asked = node.status(digest=True)
        assert digests == [1] and len(asked["digest"]) == 64 and asked["digest_index"] == asked["applied"]
        assert asked.keys() - plain.keys() == {"digest", "digest_index"}
    finally:
        node.seg_log.close()
        node.state.close()
