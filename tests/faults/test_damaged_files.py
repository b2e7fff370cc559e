"""A follower's files are damaged while the cluster runs (a flipped byte or a cut in the middle of
a WAL segment, in the hard state, in its newest snapshot); across its restart the node must see
it, refuse to start on it and name the file, `esc wal check` must say what to do, and
`esc node --repair` must bring it back by catching up from the leader, with nothing acknowledged
lost (eventstream/node/damage.py)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from eventstream.client import Client
from tests.cluster.harness import LocalCluster, check_every_ack_stored_once, wait_until
from tests.faults.file_damage import TARGETS, damage, damageable

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("replication_mode")]

QUEUES = 4
BATCHES = 60
BATCH = 10
PAYLOAD = b"x" * 300


def _append(cluster: LocalCluster, tag: str, batches: int = BATCHES) -> list[bytes]:
    ids = [f"{tag}-{i}".encode() for i in range(batches * BATCH)]
    with Client(cluster.addresses, timeout_s=20) as client:
        for start in range(0, len(ids), BATCH):
            client.append_batch([{"payload": PAYLOAD, "event_id": i} for i in ids[start:start + BATCH]])
    return ids


def _esc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventstream.cli", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("target", TARGETS)
def test_damaged_follower_is_refused_then_repaired(tmp_path: Path, target: str) -> None:
    # Small segments, so the log has sealed ones; for the snapshot case a low threshold.
    threshold = 40 if target == "snapshot" else 100_000
    cluster = LocalCluster(tmp_path, 3, queue_count=QUEUES, segment_bytes=64 * 1024,
                           snapshot_threshold=threshold).start()
    try:
        leader_id = cluster.leader(30)
        acked = _append(cluster, "before")
        follower = cluster.nodes[min(k for k in cluster.nodes if k != leader_id)]
        cluster.wait_converged(30)
        acked += _append(cluster, "during", 10)
        follower.kill()
        assert target in damageable(follower.data_dir), list(follower.data_dir.rglob("*"))
        victim, done = damage(follower.data_dir, target, random.Random(7))
        print(done)
        follower.start()
        assert follower.proc is not None
        code = follower.proc.wait(60)
        text = follower.log_text()
        assert code != 0, "a node started on damaged files"
        assert victim.name in text and "--repair" in text, text[-2000:]
        assert "Traceback" not in text, text[-3000:]

        check = _esc("wal", "check", str(follower.data_dir))
        assert check.returncode == 1, check.stdout + check.stderr
        assert "DAMAGED" in check.stdout and victim.name in check.stdout and "--repair" in check.stdout, check.stdout
        assert "Traceback" not in check.stderr

        acked += _append(cluster, "while-down", 10)
        follower.extra_args = ["--repair"]
        follower.start()
        assert wait_until(lambda: (s := follower.status()) is not None and not s["rejoining"], 60), (
            follower.log_text()[-3000:])
        assert (follower.data_dir / "damaged-1").is_dir()
        assert "damaged data" in follower.log_text()
        acked += _append(cluster, "after", 10)
        check_every_ack_stored_once(cluster, acked, QUEUES)
        assert _esc("wal", "check", str(follower.data_dir)).returncode == 0
        # It votes again: with the leader gone, the two others elect one of them.
        cluster.nodes[leader_id].kill()
        assert cluster.leader(30, exclude=(leader_id,)) != leader_id
    finally:
        cluster.stop()
