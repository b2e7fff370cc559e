"""Bad bytes sent to a live node: that connection is closed and logged, the node keeps serving."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventstream.client import Client
from eventstream.errors import InvalidArgument
from eventstream.storage import crc32c
from eventstream.transport.client_protocol import (
    Op,
    Status,
    decode_error,
    decode_response,
    encode_request,
)
from eventstream.transport.hello import ROLE_CLIENT, Hello
from tests.cluster.harness import LocalCluster

pytestmark = pytest.mark.timeout(120)


def frame(body: bytes) -> bytes:
    return struct.pack("<II", len(body), crc32c(body)) + body


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(Path(tmp_path_factory.mktemp("bad-input")), 3).start()
    try:
        c.leader()
        yield c
    finally:
        c.stop()


def exchange(address: str, data: bytes, half_close: bool = True) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            got = sock.recv(65536)
            if not got:
                return data
            data += got
            # Without a half-close the node keeps the connection open: stop after one frame.
            if not half_close and len(data) >= 8 and len(data) >= 8 + struct.unpack_from("<I", data)[0]:
                return data


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(os.urandom(4096), id="random-bytes"),
        pytest.param(struct.pack("<II", 0xFFFFFFFF, 0) + b"x" * 100, id="huge-length-prefix"),
        pytest.param(frame(Hello(ROLE_CLIENT).encode())[:-5], id="truncated-frame"),
        pytest.param(struct.pack("<II", 21, 0xDEADBEEF) + Hello(ROLE_CLIENT).encode(), id="bad-crc"),
    ],
)
def test_garbage_closes_the_connection_and_the_cluster_keeps_serving(cluster: LocalCluster, garbage: bytes) -> None:
    leader = cluster.leader()
    node = cluster.nodes[leader]
    assert exchange(node.address, garbage) == b""  # closed without an answer
    with Client(cluster.addresses) as c:
        r = c.append(b"still serving", event_id=os.urandom(8))
        assert not r.duplicate
    assert node.alive


def test_unknown_op_closes_that_connection_and_bad_batch_is_invalid_argument(cluster: LocalCluster) -> None:
    node = cluster.nodes[cluster.leader()]
    hello = frame(Hello(ROLE_CLIENT).encode())
    # An op the protocol does not define: the node cannot trust the stream and closes it.
    assert exchange(node.address, hello + frame(bytes([250]) + struct.pack("<Q", 1))) == b""
    # An APPEND too short to hold its request id cannot be answered: the connection is closed.
    assert exchange(node.address, hello + frame(bytes([Op.APPEND]) + b"\x07\x00")) == b""
    # A well-framed APPEND whose batch is malformed is refused with a clear error, not logged.
    reply = exchange(node.address, hello + frame(encode_request(Op.APPEND, 7, b"\x01not a batch")), half_close=False)
    resp = decode_response(reply[8:])
    assert resp.status is Status.INVALID_ARGUMENT and resp.request_id == 7
    assert "bad append" in decode_error(resp.body).message
    with Client(cluster.addresses) as c, pytest.raises(InvalidArgument, match="queue"):
        c.append(b"x", queue=1 << 20)
    assert "closing client" in node.log_text() or "closing connection" in node.log_text()
