"""Test-side helpers for real clusters: the process cluster itself lives in
eventstream/local_cluster.py; this adds private network namespaces for partition tests."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable

from eventstream.client import Client
from eventstream.errors import EscError
from eventstream.local_cluster import LocalCluster, NodeProcess, local_cluster

__all__ = [
    "LocalCluster", "NetNamespace", "NodeProcess", "Writers", "check_every_ack_stored_once", "local_cluster",
    "netns_unavailable_reason", "read_all", "scrape", "wait_until",
]


# ------------------------------------------------------------------------------ load and checks
class Writers:
    """Client threads appending unique event ids until stopped (or events_max are sent);
    remembers every acknowledged id. batch > 1 sends append_batch requests of that many."""

    def __init__(self, cluster: LocalCluster, count: int = 3, batch: int = 1, events_max: int | None = None,
                 attempt_timeout_s: float = 3.0) -> None:
        self.acked: list[bytes] = []
        self.acked_at: list[float] = []  # time.monotonic() of each acknowledgement, beside acked
        self.errors: Counter[str] = Counter()
        self._addresses = cluster.addresses
        self._tls_ca, self._token = cluster.tls_ca, cluster.token
        self._batch = batch
        self._events_max = events_max
        self._attempt_timeout_s = attempt_timeout_s
        self._sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(w,)) for w in range(count)]

    def __enter__(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def acknowledged(self) -> list[tuple[bytes, float]]:
        """(event id, when acknowledged) so far, in order."""
        with self._lock:
            return list(zip(self.acked, self.acked_at, strict=True))

    def _run(self, w: int) -> None:
        with Client(self._addresses, timeout_s=15.0, attempt_timeout_s=self._attempt_timeout_s,
                    tls_ca=self._tls_ca, token=self._token) as c:
            k = 0
            while not self._stop.is_set():
                with self._lock:
                    if self._events_max is not None and self._sent >= self._events_max:
                        return
                    self._sent += self._batch
                ids = [f"w{w}-{k + i}".encode() for i in range(self._batch)]
                try:
                    if self._batch == 1:
                        c.append(b"payload-" + ids[0], key=f"key-{k % 11}", event_id=ids[0])
                    else:
                        c.append_batch([{"payload": b"payload-" + i, "event_id": i} for i in ids])
                except EscError as exc:
                    # The next attempt sends the same ids: the dedup table answers what was applied.
                    self.errors[type(exc).__name__] += 1
                    continue
                now = time.monotonic()
                with self._lock:
                    self.acked.extend(ids)
                    self.acked_at.extend(now for _ in ids)
                k += self._batch


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Polls predicate every 0.1 s; whether it held within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def scrape(node: NodeProcess) -> dict[str, float]:
    """A node's /metrics as {series: value}, labels kept in the series name."""
    scheme = "https" if node.cluster.tls_dir else "http"
    with urllib.request.urlopen(f"{scheme}://{node.http}/metrics", timeout=5, context=node.cluster.https_context()) as resp:
        lines = resp.read().decode().splitlines()
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))}


def read_all(client: Client, queue_count: int) -> list:
    return [e for q in range(queue_count) for e in client.read_to_end(q)]


def check_every_ack_stored_once(cluster: LocalCluster, acked: list[bytes], queue_count: int) -> None:
    """Every live node ends on one digest, and each acknowledged id is stored exactly once."""
    statuses = cluster.wait_converged(30)
    assert len({s["digest"] for s in statuses.values()}) == 1
    with Client(cluster.addresses, token=cluster.token, tls_ca=cluster.tls_ca) as c:
        events = read_all(c, queue_count)
    ids = Counter(e.event_id for e in events)
    twice = [i for i, n in ids.items() if n > 1]
    assert not twice, f"ids applied twice: {twice[:5]}"
    lost = [a for a in acked if a not in ids]
    assert not lost, f"{len(lost)} acknowledged events lost, e.g. {lost[:3]}"

CLONE_NEWNET = 0x40000000


# ------------------------------------------------------------------------------ namespaces
def netns_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "partition tests need root to create a network namespace"
    if shutil.which("ip") is None:
        return "partition tests need iproute2's `ip` (apt-get install iproute2)"
    if shutil.which("iptables") is None:
        return "partition tests need `iptables` (apt-get install iptables)"
    return None


class NetNamespace:
    """A private network namespace that the calling thread (and every thread and process it
    starts afterwards) enters; its loopback carries 127.0.0.0/8, so nodes on 127.0.0.(10+k) talk
    over it, and iptables rules here never touch the root namespace's."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._home_fd: int | None = None

    def __enter__(self) -> NetNamespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"], check=True, capture_output=True)
        self._home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            self._setns(fd)
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._home_fd is not None:
            self._setns(self._home_fd)
            os.close(self._home_fd)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def _setns(self, fd: int) -> None:
        if self._libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns failed: {os.strerror(err)}")

    def cut(self, a: str, b: str) -> None:
        """Drop all traffic between hosts a and b, both ways (rules live in this namespace)."""
        for src, dst in ((a, b), (b, a)):
            subprocess.run(["iptables", "-I", "INPUT", "-s", src, "-d", dst, "-j", "DROP"], check=True, capture_output=True)

    def uncut(self, a: str, b: str) -> None:
        """Undo one cut(a, b) (a link cut twice stays cut until both are undone)."""
        for src, dst in ((a, b), (b, a)):
            subprocess.run(["iptables", "-D", "INPUT", "-s", src, "-d", dst, "-j", "DROP"], check=True, capture_output=True)

    def heal(self) -> None:
        subprocess.run(["iptables", "-F", "INPUT"], check=True, capture_output=True)
