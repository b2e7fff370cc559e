"""Port choice for local clusters (eventstream/local_cluster.py)."""

from __future__ import annotations

import socket

from eventstream.local_cluster import LocalCluster, ephemeral_port_range, free_port_block


def test_port_blocks_lie_outside_the_ephemeral_range_and_are_free() -> None:
    """Inside the ephemeral range a connection to a node not yet listening can connect to
    itself (source port = destination port): a status poll then read back its own request line
    ('BadStatusLine: GET /status HTTP/1.1' in esc-bench) and the node lost its port."""
    low, high = ephemeral_port_range()
    for _ in range(50):
        base = free_port_block(6)
        assert base + 5 < low or base > high, (base, low, high)
        for port in range(base, base + 6):
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))


def test_a_cluster_takes_its_client_and_http_ports_from_one_block(tmp_path: object) -> None:
    cluster = LocalCluster(tmp_path, 5)  # type: ignore[arg-type]
    ports = {n.address for n in cluster.nodes.values()} | {n.http for n in cluster.nodes.values()}
    assert len(ports) == 10 and cluster.http_port == cluster.port + 5
