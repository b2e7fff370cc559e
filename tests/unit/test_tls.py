"""Certificates and TLS contexts (eventstream/tls.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from eventstream.tls import (
    TlsError,
    certified_node,
    client_context,
    init_certs,
    issue_cert,
    node_files,
    peer_context,
    server_context,
)


def test_init_writes_a_ca_and_one_certificate_per_node_and_never_overwrites_it(tmp_path: Path) -> None:
    written = init_certs(tmp_path, 2, ["127.0.0.1", "node.example"])
    assert {p.name for p in written} == {"ca.pem", "ca.key", "node-1.pem", "node-1.key", "node-2.pem", "node-2.key"}
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0  # secrets are private
    assert isinstance(server_context(tmp_path, 2), ssl.SSLContext)
    assert peer_context(tmp_path, 1).verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(TlsError, match="exists"):
        init_certs(tmp_path, 2, [])


def test_a_missing_or_foreign_file_is_one_clear_error(tmp_path: Path) -> None:
    init_certs(tmp_path, 1, [])
    with pytest.raises(TlsError, match="node-2.pem is missing"):
        server_context(tmp_path, 2)
    cert, _ = node_files(tmp_path, 1)
    with pytest.raises(TlsError, match="cannot load"):
        client_context(tmp_path / "ca.key", cert, cert)  # a key is no CA, a certificate no key


class _Peer:
    def __init__(self, cert: dict) -> None:  # type: ignore[type-arg]
        self._cert = cert

    def getpeercert(self) -> dict:  # type: ignore[type-arg]
        return self._cert


def test_the_node_a_certificate_names() -> None:
    assert certified_node(None) is None
    assert certified_node(_Peer({})) is None
    assert certified_node(_Peer({"subject": ((("commonName", "esc-node-7"),),)})) == 7
    assert certified_node(_Peer({"subject": ((("commonName", "esc-node-x"),),)})) is None
    assert certified_node(_Peer({"subject": ((("organizationName", "esc-node-7"),),)})) is None


def test_issue_replaces_one_node_certificate_from_the_same_ca(tmp_path: Path) -> None:
    init_certs(tmp_path, 2, [])
    cert, key = node_files(tmp_path, 2)
    old = cert.read_bytes(), key.read_bytes()
    assert {p.name for p in issue_cert(tmp_path, 2, ["127.0.0.1"])} == {"node-2.pem", "node-2.key"}
    assert (cert.read_bytes(), key.read_bytes()) != old and key.stat().st_mode & 0o077 == 0
    issue_cert(tmp_path, 9, [])  # a new id: a node that will join
    # Each new pair loads, and a handshake with it is accepted by a peer of the same CA.
    for node_id in (2, 9):
        server = server_context(tmp_path, node_id)
        client = peer_context(tmp_path, 1)
        a, b = ssl.MemoryBIO(), ssl.MemoryBIO()
        c, d = ssl.MemoryBIO(), ssl.MemoryBIO()
        s_obj = server.wrap_bio(a, d, server_side=True)
        c_obj = client.wrap_bio(c, b, server_hostname=None)
        for _ in range(6):
            for obj in (c_obj, s_obj):
                try:
                    obj.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            a.write(b.read())
            c.write(d.read())
        assert certified_node(c_obj) == node_id and certified_node(s_obj) == 1
    (tmp_path / "ca.key").unlink()
    with pytest.raises(TlsError, match="ca.key is missing"):
        issue_cert(tmp_path, 2, [])
