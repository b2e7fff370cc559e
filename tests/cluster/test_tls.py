"""TLS on a real cluster (docs/operations.md, "TLS"): set up in two commands, clients check the
nodes against the CA, and a process on the peer port without a certificate of the cluster's CA,
or with one naming another node, is refused and changes nothing."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eventstream.client import Client
from eventstream.errors import Unavailable
from eventstream.storage import crc32c
from eventstream.tls import client_context, init_certs, node_files, peer_context
from eventstream.transport.frames import HEADER
from eventstream.transport.hello import ROLE_PEER, ROLE_REPLICATION, Hello
from tests.cluster.harness import LocalCluster, Writers, check_every_ack_stored_once, wait_until

pytestmark = pytest.mark.timeout(120)


def _frame(body: bytes) -> bytes:
    return HEADER.pack(len(body), crc32c(body)) + body


def _pose_as_peer(address: str, context: ssl.SSLContext, sender: int, target: int, role: int = ROLE_PEER) -> bool:
    """Connect to a node's port over TLS with `context`, send a peer (or replication) hello as
    `sender`; whether the node kept the link open (True) or closed it (False)."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=None) as tls:
            tls.sendall(_frame(Hello(role, sender, target).encode()))
            tls.settimeout(1.5)
            try:
                return tls.recv(1) != b""
            except TimeoutError:
                return True  # still open: taken as a peer
    except (ssl.SSLError, ConnectionError, OSError):
        return False


def test_a_secured_cluster_serves_its_clients_and_refuses_strangers(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    made = subprocess.run([sys.executable, "-m", "eventstream.cli", "certs", "init", str(tls_dir), "--nodes", "3"],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert (tls_dir / "ca.pem").is_file() and all(p.is_file() for p in node_files(tls_dir, 3))
    other_ca = tmp_path / "other"
    init_certs(other_ca, 3, [])
    cluster = LocalCluster(tmp_path / "nodes", 3, queue_count=2, tls_dir=str(tls_dir)).start()
    try:
        leader = cluster.leader(30)
        assert cluster.tls_ca is not None
        with Client(cluster.addresses, tls_ca=cluster.tls_ca) as client:
            acked = [client.append(b"secret", event_id=f"e{i}", queue=i % 2) for i in range(50)]
            assert len(acked) == 50 and client.read(0, 0, 5)[0].payload == b"secret"
        if cluster.options.get("replication") == "pool":
            # The leader's workers carried the entries over their own TLS links (csrc/tls_link.h).
            workers = cluster.nodes[leader].status()["replication_workers"]  # type: ignore[index]
            assert len(workers) == 2 and all(w["orders"] > 0 and w["answers_relayed"] > 0 for w in workers.values()), workers
        with pytest.raises(Unavailable), Client(cluster.addresses, timeout_s=3) as plain:
            plain.append(b"no tls", event_id="p1", queue=0)
        with pytest.raises(Unavailable, match="certificate"), \
                Client(cluster.addresses, timeout_s=3, tls_ca=str(other_ca / "ca.pem")) as wrong:
            wrong.append(b"wrong ca", event_id="w1", queue=0)

        terms = {k: n.status()["term"] for k, n in cluster.nodes.items()}  # type: ignore[index]
        target = cluster.nodes[1].address
        no_cert = client_context(tls_dir / "ca.pem")
        assert not _pose_as_peer(target, no_cert, 2, 1)
        other_cert, other_key = node_files(other_ca, 2)
        assert not _pose_as_peer(target, client_context(tls_dir / "ca.pem", other_cert, other_key), 2, 1)
        assert not _pose_as_peer(target, peer_context(tls_dir, 3), 2, 1)  # node 3's certificate, claiming 2
        # A replication link carries a leader's appends: the same proof is asked of it.
        assert not _pose_as_peer(target, no_cert, 2, 1, ROLE_REPLICATION)
        assert not _pose_as_peer(target, peer_context(tls_dir, 3), 2, 1, ROLE_REPLICATION)
        time.sleep(0.5)
        log = cluster.nodes[1].log_text()
        # Logged once a minute per host: the first refusal names its reason, the rest are counted.
        assert log.count("its certificate names no node") == 1 and "its certificate names node 3" not in log
        # The client in the clear and the one of another CA failed the handshake: logged, once
        # a minute per host (both came from 127.0.0.1).
        assert log.count("TLS handshake failed") == 1, log
        assert cluster.leader(10) == leader
        assert {k: n.status()["term"] for k, n in cluster.nodes.items()} == terms  # type: ignore[index]
        check_every_ack_stored_once(cluster, [f"e{i}".encode() for i in range(50)], 2)
    finally:
        cluster.stop()


def test_failover_with_tls_on_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL of the leader under load, its certificate rotated while it is down, then a
    graceful stop of the next leader: the failover tests' checks, every link over TLS."""
    init_certs(tmp_path / "tls", 3, [])
    cluster = LocalCluster(tmp_path / "nodes", 3, queue_count=4, tls_dir=str(tmp_path / "tls")).start()
    try:
        first = cluster.leader(30)
        with Writers(cluster, count=3) as writers:
            time.sleep(1.5)
            cluster.nodes[first].kill()
            second = cluster.leader(10, exclude=(first,))
            acked_at_kill = writers.count()
            time.sleep(1.5)
            assert writers.count() > acked_at_kill, "clients did not carry on after the failover"
            # Rotate the stopped node's certificate (docs/operations.md, "TLS"): it comes back
            # with the new one and its peers take it, the CA being the same.
            cert = node_files(tmp_path / "tls", first)[0]
            old_cert = cert.read_bytes()
            issued = subprocess.run([sys.executable, "-m", "eventstream.cli", "certs", "issue", str(tmp_path / "tls"),
                                     "--node", str(first)], capture_output=True, text=True, timeout=60)
            assert issued.returncode == 0 and cert.read_bytes() != old_cert, issued.stderr
            cluster.nodes[first].start()
            commit = cluster.nodes[second].status()["commit"]  # type: ignore[index]
            assert wait_until(lambda: (cluster.nodes[first].status() or {}).get("applied", 0) >= commit, 30), \
                "the restarted node did not catch up over TLS"
            assert cluster.nodes[second].stop() == 0
            assert "handing leadership to node" in cluster.nodes[second].log_text()
            cluster.leader(10, exclude=(second,))
            acked_at_stop = writers.count()
            time.sleep(1.5)
            assert writers.count() > acked_at_stop, "clients did not carry on after the hand-over"
        cluster.nodes[second].start()
        check_every_ack_stored_once(cluster, writers.acked, 4)
    finally:
        cluster.stop()
