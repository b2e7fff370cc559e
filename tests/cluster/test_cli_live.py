"""The `esc` command line against a live cluster: one line and a non-zero exit on any failure."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import LocalCluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, replication_mode: str) -> Iterator[LocalCluster]:
    c = LocalCluster(Path(tmp_path_factory.mktemp("cli")), 3, queue_count=4, replication=replication_mode).start()
    try:
        c.leader()
        yield c
    finally:
        c.stop()


def esc(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventstream.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=60)


def test_append_read_tail_config_status_snapshot_and_wal_inspect(cluster: LocalCluster) -> None:
    target = ",".join(cluster.addresses)
    first = esc("append", "--cluster", target, "hello", "--key", "k1", "--id", "cli-1")
    assert first.returncode == 0, first.stderr
    r = json.loads(first.stdout)
    dup = json.loads(esc("append", "--cluster", target, "hello", "--key", "k1", "--id", "cli-1").stdout)
    assert dup["duplicate"] is True and (dup["queue"], dup["offset"]) == (r["queue"], r["offset"])
    piped = esc("append", "--cluster", target, "-", "--queue", str(r["queue"]), stdin="from stdin")
    assert piped.returncode == 0, piped.stderr
    lines = esc("read", "--cluster", target, "--queue", str(r["queue"])).stdout.splitlines()
    assert [json.loads(x)["payload"] for x in lines] == ["hello", "from stdin"]
    tail = esc("tail", "--cluster", target, "--queue", str(r["queue"]), "--offset", "1").stdout.splitlines()
    assert [json.loads(x)["offset"] for x in tail] == [1]
    changed = esc("config", "set", "--cluster", target, "queue_count=6")
    assert changed.returncode == 0 and json.loads(changed.stdout)["queue_count"] == 6
    assert json.loads(esc("config", "get", "--cluster", target).stdout)["queue_count"] == 6
    status = json.loads(esc("status", "--cluster", target).stdout)
    for key in ("id", "role", "term", "leader", "commit", "applied", "last_index", "queues", "followers"):
        assert key in status
    # The digest reads all retained data, so only a request that asks for it gets it.
    assert "digest" not in status
    digested = json.loads(esc("status", "--digest", "--cluster", target).stdout)
    assert len(digested["digest"]) == 64 and digested["digest_index"] <= digested["applied"]
    everyone = json.loads(esc("status", "--all", "--cluster", target).stdout)
    assert len(everyone) == 3
    snap = esc("snapshot", "--cluster", target)
    assert snap.returncode == 0 and "applied" in json.loads(snap.stdout)
    # A snapshot may compact the whole log away; one more append gives node 1 a segment again.
    assert esc("append", "--cluster", target, "after snapshot").returncode == 0
    cluster.wait_converged()
    inspect = esc("wal", "inspect", str(cluster.nodes[1].data_dir))
    assert inspect.returncode == 0, inspect.stdout + inspect.stderr
    assert "all CRCs ok" in inspect.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("status", "--cluster", "no-port-here"), "bad address"),
        (("status", "--cluster", "127.0.0.1:1", "--timeout", "1"), "Unavailable"),
        (("config", "set", "--cluster", "{leader}", "queue_count=0"), "queue_count"),
        (("config", "set", "--cluster", "{leader}", "no_such_key=1"), "no_such_key"),
        (("read", "--cluster", "{leader}", "--queue", "0", "--offset", "999999"), "OutOfRange"),
        (("wal", "inspect", "/nonexistent/dir"), "does not exist"),
    ],
)
def test_failures_are_one_line_and_non_zero(cluster: LocalCluster, args: tuple[str, ...], fragment: str) -> None:
    leader = cluster.nodes[cluster.leader()].address
    proc = esc(*(a.replace("{leader}", leader) for a in args))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    # One line of ours; click's usage errors add their usage line and a hint above it.
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) <= 3 and fragment in proc.stderr, proc.stderr
