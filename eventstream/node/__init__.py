"""The node process: node.py wires the parts, ready.py carries out what the core decides."""

from eventstream.node.files import REJOIN_MARKER
from eventstream.node.node import Node
from eventstream.node.run import run_node

__all__ = ["REJOIN_MARKER", "Node", "run_node"]
