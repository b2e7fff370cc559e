"""Test-side helpers for real clusters: the process cluster itself lives in
eventstream/local_cluster.py; this adds private network namespaces for partition tests."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

from eventstream.local_cluster import LocalCluster, NodeProcess, local_cluster

__all__ = ["LocalCluster", "NetNamespace", "NodeProcess", "local_cluster", "netns_unavailable_reason"]

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

    def heal(self) -> None:
        subprocess.run(["iptables", "-F", "INPUT"], check=True, capture_output=True)
