"""A worker's TLS link in C (csrc/tls_link.h, WorkerCycle.link_tls): the handshake against the
cluster's CA, the follower's certificate naming the follower, the hello sent through the
session; every refusal says why."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventstream.replication._spsc_ring import TLS_AVAILABLE, TlsClient, TlsLinkError, WorkerCycle
from eventstream.tls import CA_FILE, init_certs, node_files, server_context
from eventstream.transport.frames import HEADER
from eventstream.transport.hello import ROLE_REPLICATION, Hello
from tests.unit.replication.test_worker_cycle import NODE, PEER, make_cycle

pytestmark = pytest.mark.skipif(not TLS_AVAILABLE, reason="this build has no native TLS (no OpenSSL headers)")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    ours, theirs = tmp_path_factory.mktemp("tls"), tmp_path_factory.mktemp("other")
    init_certs(ours, 3, [])
    init_certs(theirs, 3, [])
    return ours, theirs


def _serve_once(context: ssl.SSLContext | None, received: list[bytes]) -> tuple[socket.socket, threading.Thread]:
    """A one-connection server: TLS with `context` (None: accept and stay silent), keeping the
    first frame it reads."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        raw, _ = listener.accept()
        with raw:
            raw.settimeout(5)
            if context is None:
                raw.recv(1 << 16)
                threading.Event().wait(2)
                return
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    data = b""
                    while len(data) < HEADER.size or len(data) < HEADER.size + HEADER.unpack_from(data)[0]:
                        chunk = tls.recv(1 << 16)
                        if not chunk:
                            break
                        data += chunk
                    received.append(data)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def _dial(listener: socket.socket) -> socket.socket:
    sock = socket.create_connection(listener.getsockname(), timeout=5)
    sock.setblocking(False)
    return sock


@pytest.fixture
def cycle() -> Iterator[WorkerCycle]:
    with make_cycle() as c:
        yield c


def _hello() -> bytes:
    from eventstream.storage._crc32c import crc32c

    body = Hello(ROLE_REPLICATION, NODE, PEER).encode()
    return HEADER.pack(len(body), crc32c(body)) + body


def test_a_link_to_the_follower_sends_the_hello_through_the_session(cycle: WorkerCycle,
                                                                      certs: tuple[Path, Path]) -> None:
    ours, _ = certs
    received: list[bytes] = []
    listener, thread = _serve_once(server_context(ours, PEER), received)
    cert, key = node_files(ours, NODE)
    with listener, _dial(listener) as sock:
        cycle.link_tls(sock.fileno(), TlsClient(str(ours / CA_FILE), str(cert), str(key)), PEER, 2000, _hello())
        thread.join(5)
    assert received == [_hello()]
    assert Hello.decode(received[0][HEADER.size:]) == Hello(ROLE_REPLICATION, NODE, PEER)


@pytest.mark.parametrize("case", ["names another node", "another CA", "silent"])
def test_a_link_that_is_not_the_follower_is_refused_with_the_reason(cycle: WorkerCycle, certs: tuple[Path, Path],
                                                                     case: str) -> None:
    ours, theirs = certs
    context = {"names another node": server_context(ours, 3), "another CA": server_context(theirs, PEER),
               "silent": None}[case]
    received: list[bytes] = []
    listener, thread = _serve_once(context, received)
    cert, key = node_files(ours, NODE)
    client = TlsClient(str(ours / CA_FILE), str(cert), str(key))
    with listener, _dial(listener) as sock, pytest.raises(TlsLinkError) as refused:
        cycle.link_tls(sock.fileno(), client, PEER, 500, _hello())
    thread.join(5)
    assert received in ([], [b""])  # no hello reached a stranger
    expected = {"names another node": "names node 3, not node 2", "another CA": "not of this cluster's CA",
                "silent": "not done within 500 ms"}[case]
    assert expected in str(refused.value)


def test_unusable_files_are_named(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    ours, _ = certs
    with pytest.raises(TlsLinkError, match="missing.pem"):
        TlsClient(str(tmp_path / "missing.pem"))
    cert, _ = node_files(ours, NODE)
    with pytest.raises(TlsLinkError, match="node-2.key"):
        TlsClient(str(ours / CA_FILE), str(cert), str(node_files(ours, 2)[1]))  # node 2's key, node 1's certificate
