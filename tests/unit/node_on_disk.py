"""A Node with its storage open and no network: for tests of what a node does with its files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eventstream.config import load_config
from eventstream.node import Node

PEERS = "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103"


def open_node(data: Path, **overrides: Any) -> Node:
    """Node 1 of a three-node configuration, its storage opened in `data`."""
    node = Node(load_config(overrides={"id": 1, "listen": "127.0.0.1:7101", "peers": PEERS,
                                       "data_dir": str(data), **overrides}))
    return node


def close_node(node: Node) -> None:
    assert node.seg_log is not None and node.state is not None
    node.seg_log.close()
    node.state.close()
