"""Strangers on the client port of a real node: a thousand idle connections, a sender of one
byte a second, a 4 GiB length prefix, a flood of bad hellos. The node keeps serving a real
client throughout, loses nothing it acknowledged, logs the strangers once a minute per host,
and its memory stays within HOSTILE_RSS_GROWTH_MAX (docs/operations.md, "Strangers")."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

from eventstream.client import Client
from eventstream.errors import EscError
from eventstream.storage import crc32c
from eventstream.transport.frames import HEADER
from eventstream.transport.hello import ROLE_CLIENT, Hello
from tests.cluster.harness import local_cluster, read_all

pytestmark = pytest.mark.timeout(120)

# The stated bound: what the strangers below may add to the node's resident memory.
HOSTILE_RSS_GROWTH_MAX = 64 * 1024 * 1024
IDLE = 1000
FLOOD = 2000


def _frame(body: bytes) -> bytes:
    return HEADER.pack(len(body), crc32c(body)) + body


class Appender(threading.Thread):
    """A real client appending one event at a time until stopped; counts its answers."""

    def __init__(self, addresses: list[str]) -> None:
        super().__init__()
        self.addresses = addresses
        self.acked: list[bytes] = []
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with Client(self.addresses, timeout_s=10.0) as c:
            k = 0
            while not self.stop.is_set():
                event_id = f"real-{k}".encode()
                try:
                    c.append(b"served", event_id=event_id)
                    self.acked.append(event_id)
                    k += 1
                except EscError:
                    self.failed += 1  # retried with the same id


def _acked_during(appender: Appender, seconds: float) -> int:
    before = len(appender.acked)
    time.sleep(seconds)
    return len(appender.acked) - before


def test_strangers_neither_stop_the_node_nor_grow_its_memory(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 1, queue_count=1) as cluster:
        cluster.leader(20)
        node = cluster.nodes[1]
        host, port = node.address.rsplit(":", 1)
        target = (host, int(port))
        assert node.proc is not None
        proc = psutil.Process(node.proc.pid)
        appender = Appender(cluster.addresses)
        appender.start()
        served: dict[str, int] = {}
        sockets: list[socket.socket] = []
        try:
            served["alone"] = _acked_during(appender, 1.0)
            baseline = proc.memory_info().rss

            # A thousand connections that never say hello.
            for _ in range(IDLE):
                sockets.append(socket.create_connection(target))
            served["1000 idle"] = _acked_during(appender, 1.0)

            # One sender of a byte a second, one 4 GiB length prefix after a client hello.
            slow = socket.create_connection(target)
            prefix = socket.create_connection(target)
            prefix.sendall(_frame(Hello(ROLE_CLIENT).encode()) + HEADER.pack(0xFFFFFFFF, 0))
            hello = _frame(Hello(ROLE_CLIENT).encode())
            for i in range(3):
                slow.sendall(hello[i:i + 1])
                served[f"slow byte {i}"] = _acked_during(appender, 1.0)
            prefix.settimeout(5)
            assert prefix.recv(1) == b""  # the node closed it
            # A flood of bad hellos.
            for i in range(FLOOD):
                with socket.create_connection(target) as s:
                    s.sendall(_frame(b"GET / HTTP/1.1\r\n\r\n" + bytes([i % 256])))
            served["flood"] = _acked_during(appender, 1.0)
            peak = proc.memory_info().rss
            # The idle ones and the trickle are closed once they owe their hello too long.
            time.sleep(6)
            closed = 0
            for s in [*sockets, slow]:
                s.settimeout(0.01)
                try:
                    closed += s.recv(1) == b""
                except (TimeoutError, BlockingIOError):
                    pass
                except ConnectionResetError:
                    closed += 1
            served["after"] = _acked_during(appender, 1.0)
        finally:
            appender.stop.set()
            appender.join(30)
            for s in sockets:
                s.close()
        print(f"acks per second by phase: {served}; rss baseline {baseline >> 20} MiB, peak {peak >> 20} MiB; "
              f"closed {closed} of {IDLE + 1} strangers; {appender.failed} failed calls")
        assert all(n > 0 for n in served.values()), served
        assert peak - baseline <= HOSTILE_RSS_GROWTH_MAX, (baseline, peak)
        assert closed == IDLE + 1
        with Client(cluster.addresses) as c:
            stored = {e.event_id for e in read_all(c, 1)}
        assert set(appender.acked) <= stored
        refusals = [line for line in node.log_text().splitlines() if "refused a connection" in line]
        assert 1 <= len(refusals) <= 5, refusals[:10]
        assert "Traceback" not in node.log_text()
