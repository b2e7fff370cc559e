"""A snapshot that cannot be written (its folder refuses new files, as a full or read-only disk
would): the leader says so in one line, without a traceback, keeps serving and keeps its log
uncompacted; once the folder takes files again the next snapshot is written.

The folder is made immutable with `chattr +i`, which also stops root (these tests run as root,
for whom permission bits are no obstacle).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from eventstream.client import Client
from tests.cluster.harness import local_cluster, wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("replication_mode")]


def _chattr(flag: str, path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True)


def test_a_snapshot_that_cannot_be_written_is_one_line_and_the_node_keeps_serving(tmp_path: Path) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is not installed: cannot make the snapshot folder refuse files")
    with local_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        folder = cluster.nodes[leader].data_dir / "state" / "snapshots"
        refused = _chattr("+i", folder)
        if refused.returncode != 0:
            pytest.skip(f"chattr +i refused on {folder}: {refused.stderr.decode().strip()}")
        try:
            with Client(cluster.addresses) as c:
                c.append_batch([{"payload": b"x", "event_id": f"before-{i}"} for i in range(100)])
                assert c.snapshot()["started"]
                assert wait_until(lambda: "snapshot at index" in cluster.nodes[leader].log_text()
                                  and "failed" in cluster.nodes[leader].log_text(), timeout=10)
                text = cluster.nodes[leader].log_text()
                assert "Operation not permitted" in text and "Traceback" not in text
                assert c.status()["leader"] == leader  # it keeps leading and serving
                c.append_batch([{"payload": b"x", "event_id": f"during-{i}"} for i in range(100)])
        finally:
            _chattr("-i", folder)
        with Client(cluster.addresses) as c:
            c.append(b"after", event_id="after-0")
            assert c.snapshot()["started"]
            assert wait_until(lambda: "written; log compaction" in cluster.nodes[leader].log_text(), timeout=20)
            assert c.append(b"x", event_id="during-7").duplicate
        cluster.wait_converged()
