"""A full disk: a node's data directory fills up under load (a real filesystem, not a mock).

Each node's data directory is its own tmpfs, so the test can shrink one node's to just above
what it holds once the roles are known. The node whose disk is full can neither log nor apply
what the leader sends, and acknowledging anything would be a lie: it stops with one line that
names the error. The majority keeps serving and every acknowledged event stays readable, once.
Restarted while still full, the node stops again with the same kind of line instead of a
traceback; given room, it rejoins and ends on the same state digest as the others.

tmpfs makes fsync a no-op; durability itself is tested on the real disk elsewhere.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import LocalCluster, Writers, check_every_ack_stored_once, wait_until

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("replication_mode")]

ROOMY = "512m"
# What a node is left once shrunk: some segment and queue-file writes, then ENOSPC.
HEADROOM_BYTES = 6 * 1024 * 1024
QUEUES = 4
EVENTS_MAX = 400_000  # bound on the load; the shrunk disk fills after a small fraction of it
LOAD_SECONDS_MAX = 60.0


def _mount(path: Path, size: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)


def _remount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def _tmpfs_unavailable_reason(probe: Path) -> str | None:
    if os.geteuid() != 0:
        return "full-disk tests need root to mount a small tmpfs per node"
    probe.mkdir()
    done = _mount(probe, "1m")
    if done.returncode != 0:
        return f"full-disk tests could not mount a tmpfs: {done.stderr.decode(errors='replace').strip()}"
    subprocess.run(["umount", str(probe)], capture_output=True)
    return None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    reason = _tmpfs_unavailable_reason(tmp_path / "probe")
    if reason is not None:
        pytest.skip(reason)
    c = LocalCluster(tmp_path, 3, queue_count=QUEUES, segment_bytes=4 * 1024 * 1024)
    mounted = []
    try:
        for node in c.nodes.values():
            node.data_dir.mkdir()
            assert _mount(node.data_dir, ROOMY).returncode == 0
            mounted.append(node.data_dir)
        c.start()
        yield c
    finally:
        c.stop()
        for path in mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _shrink_to_nearly_full(path: Path) -> None:
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    _remount(path, str(used + HEADROOM_BYTES))


def _fill_victim_and_check(cluster: LocalCluster, victim: int) -> None:
    node = cluster.nodes[victim]
    _shrink_to_nearly_full(node.data_dir)
    with Writers(cluster, count=2, batch=200, events_max=EVENTS_MAX) as writers:
        assert wait_until(lambda: not node.alive, LOAD_SECONDS_MAX), \
            f"node {victim} still running with a full disk after {writers.count()} events acked"
        stopped_at = writers.count()
        # The majority carries on (after an election when the victim led).
        assert cluster.leader(timeout=10.0, exclude=(victim,)) != victim
        assert wait_until(lambda: writers.count() > stopped_at + 1000, 30.0), \
            f"no appends acked after node {victim} stopped; errors {dict(writers.errors)}"
    text = node.log_text()
    assert node.proc is not None and node.proc.returncode != 0
    assert "No space left on device" in text and "CRITICAL" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]

    # Still full: the restarted node stops again, with a line, not a traceback.
    lines_before = len(text.splitlines())
    node.start()
    assert wait_until(lambda: not node.alive, 30.0), "restarted on a full disk and kept running"
    again = "\n".join(node.log_text().splitlines()[lines_before:])
    assert "No space left on device" in again and "Traceback" not in again, again[-3000:]

    # Room again: it rejoins and converges; nothing acknowledged is lost or stored twice.
    _remount(node.data_dir, ROOMY)
    node.start()
    check_every_ack_stored_once(cluster, writers.acked, QUEUES)
    print(f"node {victim}: stopped after {stopped_at} acked; {len(writers.acked)} acked in all; errors {dict(writers.errors)}")


def test_follower_with_a_full_disk_stops_with_one_line_and_rejoins_with_room(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    _fill_victim_and_check(cluster, next(k for k in cluster.nodes if k != leader))


def test_leader_with_a_full_disk_stops_and_the_majority_elects_another(cluster: LocalCluster) -> None:
    _fill_victim_and_check(cluster, cluster.leader())
