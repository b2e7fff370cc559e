"""Mounts of tests/faults/power_loss_fs.py for real node processes, and the power cut itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventstream.client import Client
from tests.cluster.harness import LocalCluster, NodeProcess, Writers, read_all, wait_until

QUEUES = 4
# A bound on the load of one run (the writers stop there).
EVENTS_MAX = 40_000


def power_loss_unavailable_reason() -> str | None:
    """Why this machine cannot run the power-loss tests, or None when it can."""
    if os.geteuid() != 0:
        return "power-loss tests mount FUSE filesystems, which needs root"
    if not os.path.exists("/dev/fuse"):
        return "power-loss tests need /dev/fuse (a kernel with FUSE)"
    if shutil.which("umount") is None:
        return "power-loss tests need umount (util-linux)"
    try:
        import mfusepy  # noqa: F401  (loads libfuse when imported)
    except (ImportError, OSError) as exc:
        return f"power-loss tests need mfusepy and libfuse3 (apt-get install fuse3): {exc}"
    return None


class PowerLossMount:
    """One data dir on the forgetful filesystem: `backing` plays the disk, `mount` is the dir the
    node uses. power_cut() loses every write not yet synced; mount() brings the disk back."""

    def __init__(self, backing: Path, mount: Path, log: Path) -> None:
        self.backing = backing
        self.mount_point = mount
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def mount(self) -> None:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount_point.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.power_loss_fs", str(self.backing), str(self.mount_point)],
                stdout=log, stderr=subprocess.STDOUT)
        proc = self.proc
        if not wait_until(lambda: self.mounted() or proc.poll() is not None, 10) or not self.mounted():
            raise RuntimeError(f"power-loss filesystem did not mount on {self.mount_point}: "
                               f"{self.log.read_text(errors='replace')[-1000:]}")

    def power_cut(self) -> None:
        """The filesystem dies with everything it had not synced (callers stop the node first:
        its open files would answer ENOTCONN)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        self.unmount()

    def mounted(self) -> bool:
        # Not os.path.ismount: a mount whose filesystem died answers ENOTCONN, which it reads as
        # "not a mount point".
        target = os.path.realpath(self.mount_point)
        with open("/proc/self/mounts") as mounts:
            return any(line.split()[1] == target for line in mounts)

    def unmount(self) -> None:
        deadline = time.monotonic() + 10
        while self.mounted() and time.monotonic() < deadline:
            subprocess.run(["umount", "-l", str(self.mount_point)], check=False, capture_output=True)
            time.sleep(0.05)
        if self.mounted():
            raise RuntimeError(f"could not unmount {self.mount_point}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        self.unmount()


class PowerLossCluster:
    """A LocalCluster whose every data dir is on its own PowerLossMount."""

    def __init__(self, root: Path, size: int = 3, **options: Any) -> None:
        self.cluster = LocalCluster(root, size, **options)
        root.mkdir(parents=True, exist_ok=True)
        self.mounts = {k: PowerLossMount(root / f"disk{k}", node.data_dir, root / f"fs{k}.log")
                       for k, node in self.cluster.nodes.items()}

    def start(self) -> PowerLossCluster:
        for mount in self.mounts.values():
            mount.mount()
        self.cluster.start()
        return self

    def __enter__(self) -> PowerLossCluster:
        try:
            self.start()
            self.cluster.leader(30)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def power_loss(self, node_ids: list[int]) -> float:
        """These machines lose power at once: processes gone (SIGKILL), unsynced writes gone;
        then they boot again. Returns when (time.monotonic()) the last of them had stopped."""
        for k in node_ids:
            self.cluster.nodes[k].kill()
        down_at = time.monotonic()
        for k in node_ids:
            self.mounts[k].power_cut()
        for k in node_ids:
            self.mounts[k].mount()
            self.cluster.nodes[k].start()
        return down_at

    def node(self, k: int) -> NodeProcess:
        return self.cluster.nodes[k]

    def stop(self) -> None:
        try:
            self.cluster.stop()
        finally:
            for mount in self.mounts.values():
                mount.close()


def grow(writers: Writers, by: int, timeout: float = 60) -> None:
    """Wait until `by` more events are acknowledged."""
    target = writers.count() + by
    assert wait_until(lambda: writers.count() >= target, timeout), (
        f"acknowledged {writers.count()} of {target} events; failed calls {dict(writers.errors)}")


@dataclass(frozen=True, slots=True)
class LossWindow:
    acknowledged: int
    lost: int
    # How long before the last node lost power the oldest lost event had been acknowledged
    # (0: none lost).
    oldest_lost_s: float


def lost_after_power_loss_of_all(root: Path, events_before: int = 600) -> LossWindow:
    """Load a wal_sync=false cluster, cut every node's power under load, bring it back. The
    cluster must come back to one state and store no event twice; losing the last unsynced
    writes is what wal_sync=false allows, and the figures say how many."""
    with PowerLossCluster(root, 3, queue_count=QUEUES, wal_sync=False) as cluster:
        with Writers(cluster.cluster, count=3, batch=4, events_max=EVENTS_MAX) as writers:
            grow(writers, events_before)
            down_at = cluster.power_loss(list(cluster.cluster.nodes))
            acked = writers.acknowledged()
        cluster.cluster.leader(60)
        statuses = cluster.cluster.wait_converged(30)
        assert len({s["digest"] for s in statuses.values()}) == 1
        with Client(cluster.cluster.addresses) as c:
            ids = [e.event_id for e in read_all(c, QUEUES)]
    assert len(ids) == len(set(ids)), "an event is stored twice after the power loss"
    stored = set(ids)
    lost_at = [at for event_id, at in acked if event_id not in stored]
    return LossWindow(len(acked), len(lost_at), down_at - min(lost_at) if lost_at else 0.0)
