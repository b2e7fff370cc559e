"""TLS for the node's port and its HTTP endpoint: a cluster CA, one certificate per node, and
the contexts each side uses (docs/operations.md, "TLS").

    esc certs init DIR --nodes 3     DIR/ca.pem, DIR/ca.key, DIR/node-<id>.pem, DIR/node-<id>.key

A node's certificate names it: subject common name `esc-node-<id>`. Peers must present one of
the cluster's CA, and the id in it must be the id their hello claims (and a member's); clients
check the node's certificate against the CA and may present none (they hold tokens). Both
directions skip host-name checks: the CA is the cluster's own, and every certificate it signs
is a node of this cluster, whatever address it is reached at.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
from pathlib import Path
from typing import Any

from eventstream.config import ConfigError

NODE_CN = re.compile(r"esc-node-(\d{1,19})")
CA_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CERT_DAYS = 825


class TlsError(ConfigError):
    """A TLS directory or file the node cannot use; the message names it."""


def node_files(tls_dir: str | Path, node_id: int) -> tuple[Path, Path]:
    base = Path(tls_dir)
    return base / f"node-{node_id}.pem", base / f"node-{node_id}.key"


def _require(*paths: Path) -> None:
    for path in paths:
        if not path.is_file():
            raise TlsError(f"tls: {path} is missing (`esc certs init DIR --nodes N` writes it)")


def server_context(tls_dir: str | Path, node_id: int) -> ssl.SSLContext:
    """For the node's listen port and HTTP endpoint: its own certificate; a certificate from
    the peer is checked against the CA when presented (peers must, clients need not)."""
    cert, key = node_files(tls_dir, node_id)
    ca = Path(tls_dir) / CA_FILE
    _require(cert, key, ca)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        context.load_verify_locations(ca)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"tls: cannot load {cert}, {key} or {ca}: {exc}") from None
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def peer_context(tls_dir: str | Path, node_id: int) -> ssl.SSLContext:
    """For dialling a peer: present this node's certificate, require one of the CA back."""
    cert, key = node_files(tls_dir, node_id)
    return client_context(Path(tls_dir) / CA_FILE, cert, key)


def client_context(ca: str | Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    _require(Path(ca))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # any certificate of the cluster's CA is a node (module doc)
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(ca)
        if cert is not None and key is not None:
            _require(cert, key)
            context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"tls: cannot load {ca}: {exc}") from None
    return context


def certified_node(ssl_object: Any) -> int | None:
    """The node id in the certificate the other side presented (verified against the CA by
    the handshake), or None when it presented none or one that names no node."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            match = NODE_CN.fullmatch(value) if name == "commonName" else None
            if match:
                return int(match.group(1))
    return None


def init_certs(directory: str | Path, nodes: int, hosts: list[str]) -> list[Path]:
    """Write a CA and `nodes` node certificates (ids 1..nodes) into `directory`; refuses to
    overwrite an existing CA. Returns the files written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    base = Path(directory)
    if (base / CA_FILE).exists():
        raise TlsError(f"certs: {base / CA_FILE} exists; keep it, or move it aside to make a new CA")
    base.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "esc-cluster-ca")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    written = [_write(base / CA_FILE, ca_cert.public_bytes(serialization.Encoding.PEM)),
               _write(base / CA_KEY_FILE, _key_pem(ca_key), secret=True)]
    for node_id in range(1, nodes + 1):
        written += _issue(base, ca_cert, ca_key, node_id, hosts)
    return written


def issue_cert(directory: str | Path, node_id: int, hosts: list[str]) -> list[Path]:
    """A new certificate and key for node `node_id`, signed by the CA in `directory` (its
    ca.key is needed), written over any the node had: to rotate one, or for a new id."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    base = Path(directory)
    _require(base / CA_FILE, base / CA_KEY_FILE)
    try:
        ca_cert = x509.load_pem_x509_certificate((base / CA_FILE).read_bytes())
        ca_key = serialization.load_pem_private_key((base / CA_KEY_FILE).read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise TlsError(f"certs: cannot load the CA in {base}: {exc}") from None
    return _issue(base, ca_cert, ca_key, node_id, hosts)


def _issue(base: Path, ca_cert: Any, ca_key: Any, node_id: int, hosts: list[str]) -> list[Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"esc-node-{node_id}")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = node_files(base, node_id)
    # The key first: a node restarted between the two writes finds a mismatched pair and says so
    # (TlsError at start) rather than running with the old key under a new certificate.
    return [_write(key_path, _key_pem(key), secret=True),
            _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))]


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def _write(path: Path, data: bytes, secret: bool = False) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path
