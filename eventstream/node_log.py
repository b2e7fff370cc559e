"""The one format of a node's log lines, shared by the node process and its replication
workers (whose stderr goes to the same log), so every line carries a time, the node and a level."""

from __future__ import annotations

import logging
import sys


def configure_node_log(level: str, node_id: int) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s node{node_id} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
