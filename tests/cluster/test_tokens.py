"""Client tokens on a real cluster (docs/operations.md, "Tokens"): without a token, with a
revoked one, or with one lacking the permission, a request is refused with its own error and
changes nothing; the right token appends and reads."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import mmh3
import pytest

from eventstream.client import Client
from eventstream.client import Client as ClientOf
from eventstream.errors import PermissionDenied, Unauthenticated
from eventstream.tls import init_certs
from tests.cluster.harness import LocalCluster, scrape

pytestmark = pytest.mark.timeout(120)


def _esc_cli(*args: str, token: str | None = None, ca: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"ESC_TOKEN": token} if token else {}), **({"ESC_CA": ca} if ca else {})}
    return subprocess.run([sys.executable, "-m", "eventstream.cli", *args], capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "tls"])
def test_tokens_refuse_what_they_do_not_allow_and_change_nothing(tmp_path: Path, secure: bool) -> None:
    """On a cluster with tokens, and on a secured one (TLS on every link as well)."""
    options: dict[str, Any] = {}
    if secure:
        init_certs(tmp_path / "tls", 3, ["127.0.0.1"])
        options["tls_dir"] = str(tmp_path / "tls")
    cluster = LocalCluster(tmp_path / "nodes", 3, queue_count=4, **options).start()
    Client = functools.partial(ClientOf, tls_ca=cluster.tls_ca)  # noqa: N806 - stands in for the class
    _esc = functools.partial(_esc_cli, ca=cluster.tls_ca)
    try:
        cluster.leader(20)
        where = ",".join(cluster.addresses)
        with Client(cluster.addresses) as open_client:
            open_client.append(b"before tokens", event_id="e0", queue=0)

        # The first token must allow admin: otherwise no one could manage tokens.
        lockout = _esc("token", "create", "--name", "app", "--allow", "append", "--cluster", where)
        assert lockout.returncode != 0 and "admin" in lockout.stderr.strip().splitlines()[-1]
        made = _esc("token", "create", "--name", "ops", "--allow", "admin,read", "--cluster", where)
        assert made.returncode == 0, made.stderr
        admin = made.stdout.strip()
        cluster.token = admin
        writer_token = _esc("token", "create", "--name", "writer", "--allow", "append,read:0", "--cluster", where,
                            token=admin).stdout.strip()
        reader_token = _esc("token", "create", "--name", "reader", "--allow", "read:1", "--cluster", where,
                            token=admin).stdout.strip()
        assert writer_token.startswith("esc_") and reader_token.startswith("esc_")

        with Client(cluster.addresses, timeout_s=5) as anonymous:
            with pytest.raises(Unauthenticated, match="requires a token"):
                anonymous.append(b"no token", event_id="a1", queue=0)
            with pytest.raises(Unauthenticated):
                anonymous.read(0, 0)
        with pytest.raises(Unauthenticated, match="unknown or revoked"), \
                Client(cluster.addresses, timeout_s=5, token="esc_guessed") as guessed:
            guessed.append(b"guessed", event_id="g1", queue=0)
        with Client(cluster.addresses, timeout_s=5, token=reader_token) as reader:
            with pytest.raises(PermissionDenied, match="does not allow append"):
                reader.append(b"reader writes", event_id="r1", queue=1)
            with pytest.raises(PermissionDenied, match="reading queue 0"):
                reader.read(0, 0)
            with pytest.raises(PermissionDenied, match="needs admin"):
                reader.config_update({"queue_count": 8})
            with pytest.raises(PermissionDenied, match="needs admin"):
                reader.status(digest=True)
            assert reader.read(1, 0) == []
        with Client(cluster.addresses, timeout_s=5, token=writer_token) as writer:
            result = writer.append(b"allowed", event_id="w1", queue=0)
            assert [e.payload for e in writer.read(0, 0)] == [b"before tokens", b"allowed"]
            with pytest.raises(PermissionDenied, match="needs admin"):
                writer.snapshot()
            assert result.offset == 1
            # Revoked while its connection is open: the next request is refused.
            revoked = _esc("token", "revoke", "writer", "--cluster", where, token=admin)
            assert revoked.returncode == 0, revoked.stderr
            with pytest.raises(Unauthenticated, match="revoked"):
                writer.append(b"after revoke", event_id="w2", queue=0)
        with pytest.raises(Unauthenticated), Client(cluster.addresses, timeout_s=5, token=writer_token) as again:
            again.append(b"after revoke", event_id="w3", queue=0)

        # The digest over HTTP needs the admin token too; nothing refused was stored.
        node = cluster.nodes[1]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{'https' if secure else 'http'}://{node.http}/status?digest=1", timeout=5,
                                   context=cluster.https_context())
        assert refused.value.code == 401
        statuses = cluster.wait_converged(20)
        assert len({s["digest"] for s in statuses.values()}) == 1
        with Client(cluster.addresses, token=admin) as ops:
            assert [e.event_id for e in ops.read(0, 0)] == [b"e0", b"w1"]
            assert ops.read(1, 0) == [] and ops.config_get()["queue_count"] == 4
            assert sorted(ops.config_get()["tokens"]) == ["ops", "reader"]
        listed = _esc("token", "list", "--cluster", where, token=admin)
        assert listed.stdout.split() == ["ops", "admin,read", "reader", "read:1"]
        # Each refusal is counted on the node that answered it.
        refusals = sum(v for node in cluster.nodes.values() for k, v in scrape(node).items()
                       if k.startswith("esc_client_errors_total") and ("UNAUTHENTICATED" in k or "PERMISSION" in k))
        assert refusals >= 9
    finally:
        cluster.stop()


def test_a_token_for_one_queue_appends_there_only(tmp_path: Path) -> None:
    """`append:<q>`: each event must go to q, by its explicit queue or by where its key routes
    (mmh3(key) mod queue_count); a request with any event bound elsewhere is refused whole."""
    queues = 4
    cluster = LocalCluster(tmp_path, 3, queue_count=queues).start()
    try:
        cluster.create_token("ops")
        billing = cluster.create_token("billing", ("append:2", "read:2"))
        keys = [f"k{i}".encode() for i in range(40)]
        to_two = next(k for k in keys if mmh3.hash(k, signed=False) % queues == 2)
        elsewhere = next(k for k in keys if mmh3.hash(k, signed=False) % queues != 2)
        with Client(cluster.addresses, timeout_s=5, token=billing) as client:
            client.append(b"explicit", event_id="b1", queue=2)
            client.append(b"by key", event_id="b2", key=to_two)
            with pytest.raises(PermissionDenied, match="queue 1"):
                client.append(b"other queue", event_id="b3", queue=1)
            with pytest.raises(PermissionDenied, match="appending to queue"):
                client.append(b"key elsewhere", event_id="b4", key=elsewhere)
            with pytest.raises(PermissionDenied, match="queue 3"):
                client.append_batch([{"payload": b"ok part", "event_id": "b5", "queue": 2},
                                     {"payload": b"bad part", "event_id": "b6", "queue": 3}])
            assert [e.event_id for e in client.read(2, 0)] == [b"b1", b"b2"]
        with Client(cluster.addresses, token=cluster.token) as ops:
            assert [len(ops.read(q, 0)) for q in range(queues)] == [0, 0, 2, 0]
            assert sorted(ops.config_get()["tokens"]["billing"]["allow"]) == ["append:2", "read:2"]
    finally:
        cluster.stop()
