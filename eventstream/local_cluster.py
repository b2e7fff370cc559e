"""Local clusters of real `esc node` processes on loopback, for `esc local`, the demo, the
load generator and the cluster tests. Each node is its own OS process with its own data dir.

With distinct_hosts, node k listens on 127.0.0.(10+k) so that a firewall rule naming two
addresses cuts exactly one link (the partition tests); otherwise all nodes share 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from eventstream.config import usable_cores


def ephemeral_port_range() -> tuple[int, int]:
    """The range the kernel picks outgoing source ports from (Linux; a common default elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            low, high = map(int, fh.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """A base port such that base..base+count-1 are free now (best effort, bounded tries).

    The block lies outside the kernel's ephemeral range. Inside it, a connection to a port
    whose owner has not started listening yet (a node dialling a peer, a status poll of a node
    still starting) can be given that very port as its source and connect to itself: the
    caller then reads back its own request, and the port is taken from the node about to bind it.
    """
    low, high = ephemeral_port_range()
    spans = [(lo, hi) for lo, hi in ((10_000, low), (high + 1, 65_536)) if hi - lo > count]
    rng = random.Random()
    for _ in range(200):
        lo, hi = rng.choice(spans) if spans else (10_000, 65_536)
        base = rng.randrange(lo, hi - count)
        ok = True
        for p in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind((host, p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free block of ports found")


class NodeProcess:
    def __init__(self, cluster: LocalCluster, node_id: int) -> None:
        self.cluster = cluster
        self.id = node_id
        self.proc: subprocess.Popen[bytes] | None = None
        self.data_dir = cluster.root / f"node{node_id}"
        self.log_path = cluster.root / f"node{node_id}.log"
        self.extra_args: list[str] = []  # this node's own flags, after the cluster's options
        self.joining = False  # started with --join (LocalCluster.add_node), not --peers

    @property
    def host(self) -> str:
        return self.cluster.host_of(self.id)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.cluster.port + self.id - 1}"

    @property
    def http(self) -> str:
        return f"{self.host}:{self.cluster.http_port + self.id - 1}"

    def args(self) -> list[str]:
        c = self.cluster
        if self.joining:
            members = ["--join", ",".join(c.nodes[k].address for k in sorted(c.nodes) if k != self.id)]
        else:
            members = ["--peers", ",".join(f"{k}={c.nodes[k].address}" for k in sorted(c.nodes))]
        args = [
            sys.executable, "-m", "eventstream.cli", "node",
            "--id", str(self.id), "--listen", self.address, *members,
            "--data-dir", str(self.data_dir), "--http", self.http,
        ]
        for key, value in c.options.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + key.replace("_", "-"))
            else:
                args += [flag, str(value)]
        return args + self.extra_args

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL: the crash case; nothing is flushed or handed over."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets but answers nothing (a long GC pause, a VM stall)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self, timeout: float = 2.0, digest: bool = False) -> dict[str, Any] | None:
        query = "?digest=1" if digest else ""
        c = self.cluster
        scheme = "https" if c.tls_dir else "http"
        request = urllib.request.Request(f"{scheme}://{self.http}/status{query}")
        if c.token:
            request.add_header("Authorization", f"Bearer {c.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=c.https_context()) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError, http.client.HTTPException):
            return None  # not up yet, or not answering: the callers poll

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class LocalCluster:
    """Node k (1-based) listens on port + k - 1 and serves HTTP on http_port + k - 1; free
    ports are picked when none are given. options become `esc node` flags (wal_sync=False
    becomes --no-wal-sync). default_options apply to every cluster unless given explicitly:
    the test suite runs each cluster test once per replication mode through it."""

    default_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, root: Path, size: int = 3, distinct_hosts: bool = False, port: int | None = None,
                 http_port: int | None = None, spare: int = 0, **options: Any) -> None:
        """`spare` reserves ports for that many more nodes (ids size+1...), for add_node."""
        self.root = Path(root)
        self.size = size
        self.distinct_hosts = distinct_hosts
        self.options = {"log_level": "info", **self.default_options, **options}
        if self.options.get("replication", "auto") == "auto" and size > usable_cores():
            # Every node would start a worker per follower on cores the other nodes already
            # need: on a shared machine the pool only adds context switches.
            self.options["replication"] = "inprocess"
        if distinct_hosts:
            self.port = port or 7101
            self.http_port = http_port or 8101
        elif port is None and http_port is None:
            # One block for both, so the two ranges cannot be drawn on top of each other.
            self.port = free_port_block(2 * (size + spare))
            self.http_port = self.port + size + spare
        else:
            self.port = port or free_port_block(size + spare)
            self.http_port = http_port or free_port_block(size + spare)
        self.spare = spare
        self.retired: dict[int, NodeProcess] = {}  # removed from the membership and stopped
        self.token: str | None = None  # an admin token, once the cluster has tokens (the digest needs it)
        self.tls_dir: Path | None = Path(options["tls_dir"]) if options.get("tls_dir") else None
        self.nodes = {k: NodeProcess(self, k) for k in range(1, size + 1)}

    @property
    def tls_ca(self) -> str | None:
        """The CA a client of this cluster checks its nodes against (None without TLS)."""
        return str(self.tls_dir / "ca.pem") if self.tls_dir else None

    def create_token(self, name: str, allow: tuple[str, ...] = ("admin", "append", "read")) -> str:
        """Create a client token on the running cluster and return its secret (the cluster keeps
        only its SHA-256); the first token of a cluster must allow admin."""
        from eventstream.client import Client
        from eventstream.node.auth import new_token, token_digest

        secret = new_token()
        leader = self.nodes[self.leader(30)].address
        # The leader first: it has applied every token made so far, a follower may lag behind.
        with Client([leader] + [a for a in self.addresses if a != leader], tls_ca=self.tls_ca, token=self.token,
                    timeout_s=30) as c:
            c.config_update({"tokens": {name: {"sha256": token_digest(secret), "allow": list(allow)}}})
        if self.token is None and "admin" in allow:
            self.token = secret  # from now on the cluster's own status calls need one
        return secret

    def https_context(self) -> ssl.SSLContext | None:
        if self.tls_dir is None:
            return None
        from eventstream.tls import client_context

        return client_context(self.tls_dir / "ca.pem")

    def host_of(self, node_id: int) -> str:
        # Node k on 127.0.0.(10+k): the test process itself talks from 127.0.0.1, which a cut
        # between nodes must never include.
        return f"127.0.0.{10 + node_id}" if self.distinct_hosts else "127.0.0.1"

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes.values()]

    def add_node(self, node_id: int) -> NodeProcess:
        """Start node `node_id` (one of the spare ids) with --join: it takes part once an
        operator adds it (esc member add)."""
        if not self.size < node_id <= self.size + self.spare or node_id in self.nodes:
            raise ValueError(f"node {node_id} is not a free spare id ({self.size + 1}..{self.size + self.spare})")
        node = NodeProcess(self, node_id)
        node.joining = True
        self.nodes[node_id] = node
        node.start()
        return node

    def retire(self, node_id: int) -> NodeProcess:
        """Stop a node removed from the membership and forget it (addresses, leader, convergence)."""
        node = self.nodes.pop(node_id)
        node.stop()
        self.retired[node_id] = node
        return node

    def start(self) -> LocalCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        for node in self.nodes.values():
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def leader(self, timeout: float = 10.0, exclude: tuple[int, ...] = ()) -> int:
        """Id of the node that all live nodes agree leads (polls; raises on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            views = {k: n.status(0.5) for k, n in self.nodes.items() if n.alive and k not in exclude}
            leaders = {v["leader"] for v in views.values() if v is not None}
            roles = [k for k, v in views.items() if v is not None and v["role"] == "leader"]
            if len(roles) == 1 and leaders == {roles[0]} and all(v is not None for v in views.values()):
                return roles[0]
            time.sleep(0.05)
        raise TimeoutError(f"no agreed leader within {timeout} s; logs in {self.root}")

    def wait_converged(self, timeout: float = 20.0) -> dict[int, dict[str, Any]]:
        """Wait until every live node applied the same index with the same digest."""
        deadline = time.monotonic() + timeout
        last: dict[int, Any] = {}
        while time.monotonic() < deadline:
            last = {k: n.status(1.0, digest=True) for k, n in self.nodes.items() if n.alive}
            if all(v is not None for v in last.values()):
                applied = {v["applied"] for v in last.values()}
                commits = {v["commit"] for v in last.values()}
                digests = {v.get("digest") for v in last.values()}
                digest_at = {v.get("digest_index") for v in last.values()}
                if len(applied) == 1 and len(digests) == 1 and None not in digests and applied == commits == digest_at:
                    return last
            time.sleep(0.1)
        raise TimeoutError(f"nodes did not converge within {timeout} s: "
                           + json.dumps({k: v and {f: v.get(f) for f in ('applied', 'commit', 'digest', 'role')} for k, v in last.items()}))


@contextlib.contextmanager
def local_cluster(root: Path, size: int = 3, **options: Any) -> Iterator[LocalCluster]:
    cluster = LocalCluster(root, size, **options).start()
    try:
        yield cluster
    finally:
        cluster.stop()
