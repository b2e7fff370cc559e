"""Real 3-node clusters on loopback: one OS process per node, real sockets and fsync."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from eventstream.client import Client
from eventstream.errors import InvalidArgument, OutOfRange, Overloaded
from tests.cluster.harness import (
    LocalCluster,
    Writers,
    check_every_ack_stored_once,
    local_cluster,
    scrape,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)


def test_cluster_elects_one_leader_and_round_trips_appends_and_reads(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, queue_count=4) as cluster:
        leader = cluster.leader()
        with Client(cluster.addresses) as c:
            r1 = c.append(b"first", key="user-1", event_id="id-1")
            r2 = c.append(b"second", key="user-1", event_id="id-2")
            assert (r1.queue, r1.duplicate) == (r2.queue, False)
            assert r2.offset == r1.offset + 1 and r2.index > r1.index
            again = c.append(b"first", key="user-1", event_id="id-1")
            assert again.duplicate and (again.queue, again.offset) == (r1.queue, r1.offset)
            explicit = c.append(b"third", queue=3)
            assert explicit.queue == 3
            batch = c.append_batch([{"payload": b"b%d" % i, "key": b"k"} for i in range(50)])
            assert len({r.index for r in batch}) == 1  # one request, one entry
            events = c.read(r1.queue, r1.offset, 10)
            assert [e.payload for e in events[:2]] == [b"first", b"second"]
            assert events[0].event_id == b"id-1" and events[0].key == b"user-1"
            with pytest.raises(OutOfRange, match="valid|range"):
                c.read(r1.queue, 10_000, 10)
            with pytest.raises(InvalidArgument):
                c.append(b"x", queue=99)
            statuses = cluster.wait_converged()
            assert {s["leader"] for s in statuses.values()} == {leader}
            # Every node counts the entries it saw committed and applied; the leader, those it proposed.
            for node_id, node in cluster.nodes.items():
                samples = scrape(node)
                commits, applies = samples["esc_commits_total"], samples["esc_applies_total"]
                assert commits == applies >= 5 and samples["esc_applied_index"] >= statuses[node_id]["applied"]
                assert (samples["esc_proposals_total"] >= 5) == (node_id == leader)
            # A follower serves a stale read from its own applied state.
            follower = next(n for k, n in cluster.nodes.items() if k != leader)
            with Client([follower.address]) as fc:
                stale = fc.read(r1.queue, r1.offset, 2, consistency="stale")
                assert [e.payload for e in stale] == [b"first", b"second"]
                # A linearizable read sent to a follower is forwarded through ReadIndex.
                linear = fc.read(r1.queue, r1.offset, 2)
                assert [e.payload for e in linear] == [b"first", b"second"]


def test_sigkill_leader_under_load_loses_nothing_and_applies_nothing_twice(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, queue_count=8) as cluster:
        old_leader = cluster.leader()
        with Writers(cluster, count=4) as writers:
            time.sleep(2.0)
            killed_at = time.monotonic()
            cluster.nodes[old_leader].kill()
            new_leader = cluster.leader(timeout=10.0, exclude=(old_leader,))
            failover_s = time.monotonic() - killed_at
            acked_at_kill = writers.count()
            time.sleep(2.0)
        assert new_leader != old_leader
        assert failover_s < 3.0, f"new leader after {failover_s:.2f} s"
        assert len(writers.acked) > acked_at_kill, "clients did not carry on after the failover"
        cluster.nodes[old_leader].start()
        check_every_ack_stored_once(cluster, writers.acked, 8)
        print(f"failover {failover_s:.2f} s, {len(writers.acked)} acked, errors {dict(writers.errors)}")


def test_follower_behind_a_compacted_log_catches_up_by_snapshot(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, snapshot_threshold=20, segment_bytes=64 * 1024, queue_count=2) as cluster:
        leader = cluster.leader()
        lagging = next(k for k in cluster.nodes if k != leader)
        cluster.nodes[lagging].kill()
        with Client(cluster.addresses) as c:
            for i in range(200):
                c.append(b"x" * 200, key=f"k{i}", event_id=f"snap-{i}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = cluster.nodes[leader].status()
            if st and st["first_index"] > 30:
                break
            time.sleep(0.1)
        assert st and st["first_index"] > 30, f"leader did not compact its log: {st}"
        cluster.nodes[lagging].start()
        statuses = cluster.wait_converged(30)
        assert len({s["digest"] for s in statuses.values()}) == 1
        assert "installed snapshot" in cluster.nodes[lagging].log_text()
        # Stale reads are served from the restored node's own state, so this checks its copy.
        with Client([cluster.nodes[lagging].address]) as c:
            local = []
            for q in range(2):
                local += c.read(q, 0, 1000, consistency="stale")
        assert sorted(e.event_id or b"" for e in local) == sorted(f"snap-{i}".encode() for i in range(200))


def test_torn_wal_tail_is_cut_reported_and_the_node_rejoins(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        victim = next(k for k in cluster.nodes if k != leader)
        with Client(cluster.addresses) as c:
            for i in range(30):
                c.append(b"y" * 100, event_id=f"torn-{i}")
        cluster.wait_converged()
        cluster.nodes[victim].kill()
        log_dir = cluster.nodes[victim].data_dir / "log"
        last = sorted(p for p in os.listdir(log_dir) if p.endswith(".wal"))[-1]
        path = log_dir / last
        # A killed wal_sync node leaves zeros written ahead of its records; the records end
        # at the last non-zero byte (the last payload is b"y" * 100).
        data_end = len(path.read_bytes().rstrip(b"\0"))
        with open(path, "r+b") as fh:
            fh.truncate(data_end - 37)  # inside the last record
        cluster.nodes[victim].start()
        statuses = cluster.wait_converged(30)
        assert len({s["digest"] for s in statuses.values()}) == 1
        text = cluster.nodes[victim].log_text()
        assert "recovery cut a torn tail" in text, text[-2000:]


def test_invalid_config_is_refused_at_start_with_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "eventstream.cli", "node", "--batch-size", "0", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["esc: config error: batch_size: must be an integer in [1, 100000], got 0"]
    assert "Traceback" not in proc.stderr


def test_cluster_restart_keeps_log_term_and_vote(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, 3).start()
    try:
        cluster.leader()
        with Client(cluster.addresses) as c:
            first = c.append(b"before restart", event_id="r-1")
        before = cluster.wait_converged()
    finally:
        cluster.stop()
    cluster.start()
    try:
        cluster.leader()
        with Client(cluster.addresses) as c:
            again = c.append(b"before restart", event_id="r-1")
            assert again.duplicate and (again.queue, again.offset) == (first.queue, first.offset)
        after = cluster.wait_converged()
        assert min(s["term"] for s in after.values()) >= max(s["term"] for s in before.values())
    finally:
        cluster.stop()


def test_sigterm_on_the_leader_hands_leadership_over_before_exiting(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        with Client(cluster.addresses) as c:
            c.append(b"before handover", event_id="h-1")
        started = time.monotonic()
        code = cluster.nodes[leader].stop()
        new_leader = cluster.leader(timeout=10.0, exclude=(leader,))
        elapsed = time.monotonic() - started
        assert code == 0 and new_leader != leader
        assert "handing leadership to node" in cluster.nodes[leader].log_text()
        with Client(cluster.addresses) as c:
            again = c.append(b"before handover", event_id="h-1")
            assert again.duplicate
        print(f"graceful stop and new leader in {elapsed:.2f} s")


def test_leader_expires_dedup_ids_on_its_timer(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, dedup_window=1.0, dedup_expire_interval=0.2) as cluster:
        cluster.leader()
        with Client(cluster.addresses) as c:
            first = c.append(b"once", event_id="exp-1")
            assert c.append(b"once", event_id="exp-1").duplicate
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                time.sleep(0.5)
                later = c.append(b"once", event_id="exp-1")
                if not later.duplicate:
                    break
            # Past the window the id is forgotten (the leader proposed DEDUP_EXPIRE with a
            # cutoff from its clock), so the same id is a new event at a new offset.
            assert not later.duplicate and later.offset > first.offset
        cluster.wait_converged()


def test_a_full_dedup_table_answers_overloaded_until_there_is_room(tmp_path: Path) -> None:
    """At dedup_ids_max, events with new ids are not stored (exactly-once would otherwise be
    lost) and their requests are answered OVERLOADED, which the client retries with the same
    ids; once there is room the retry is stored, once."""
    with local_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        with Client(cluster.addresses) as c:
            c.config_update({"dedup_ids_max": 1000})
            for b in range(10):
                c.append_batch([{"payload": b"x", "event_id": f"full-{b}-{i}"} for i in range(100)])
        with Client(cluster.addresses, timeout_s=4.0) as c, pytest.raises(Overloaded, match="dedup table is full"):
            c.append(b"one more", event_id="after-full")
        samples = scrape(cluster.nodes[leader])
        assert samples["esc_dedup_ids"] == 1000
        assert samples['esc_client_errors_total{status="OVERLOADED"}'] >= 1
        assert "appends with new ids are answered OVERLOADED" in cluster.nodes[leader].log_text()
        with Client(cluster.addresses) as c:
            assert c.append(b"x", event_id="full-3-7").duplicate  # remembered ids still answer
            c.config_update({"dedup_ids_max": 2000})
            stored = c.append(b"one more", event_id="after-full")
            again = c.append(b"one more", event_id="after-full")
            assert not stored.duplicate and again.duplicate and again.offset == stored.offset
        cluster.wait_converged()


def test_ids_the_client_generates_are_remembered_in_their_own_class(tmp_path: Path) -> None:
    """Events appended without an id get one from the client library, marked generated: the
    cluster keeps those for dedup_generated_window_ms, apart from the callers' own ids."""
    with local_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        with Client(cluster.addresses) as c:
            c.append_batch([b"no id"] * 30)
            mine = c.append_batch([{"payload": b"mine", "event_id": f"mine-{i}"} for i in range(20)])
            assert c.append(b"mine", event_id="mine-3").duplicate
            assert c.status()["leader"] == leader
            assert c.config_get()["dedup_generated_window_ms"] == 60_000
        assert wait_until(lambda: scrape(cluster.nodes[leader]).get("esc_dedup_ids") == 50, timeout=10)
        assert scrape(cluster.nodes[leader])["esc_dedup_generated_ids"] == 30
        with Client(cluster.addresses) as c:
            # The leader's status: a follower may not have applied the entries yet.
            assert c.status(cluster.nodes[leader].address)["dedup"] == {"ids": 50, "generated_ids": 30, "ids_max": 50_000_000}
        assert mine[3].queue is not None
        cluster.wait_converged()


@pytest.mark.slow
def test_generated_ids_leave_after_their_window_and_callers_ids_stay(tmp_path: Path) -> None:
    """The leader's expiry rounds forget ids the client library generated once
    dedup_generated_window_ms (its floor, 60 s) has passed since the cluster first saw them,
    and keep the callers' ids for dedup_window_ms (120 s here). About 70 s (make test-slow)."""
    with local_cluster(tmp_path, 3, dedup_window=120.0, dedup_expire_interval=1.0) as cluster:
        leader = cluster.leader()
        with Client(cluster.addresses) as c:
            c.append_batch([b"no id"] * 40)
            mine = c.append(b"mine", event_id="kept-1")
        assert wait_until(lambda: scrape(cluster.nodes[leader]).get("esc_dedup_generated_ids") == 40, timeout=10)
        seen = time.monotonic()
        assert wait_until(lambda: scrape(cluster.nodes[leader]).get("esc_dedup_generated_ids") == 0, timeout=90)
        gone_after = time.monotonic() - seen
        assert gone_after >= 50  # not before their window (less the sampling slack)
        samples = scrape(cluster.nodes[leader])
        assert samples["esc_dedup_ids"] == 1
        with Client(cluster.addresses) as c:
            again = c.append(b"mine", event_id="kept-1")
            assert again.duplicate and again.offset == mine.offset
        print(f"generated ids forgotten {gone_after:.0f} s after they were seen")
        cluster.wait_converged()


def test_a_retried_backfill_is_stored_once_whatever_its_timestamps(tmp_path: Path) -> None:
    """Events stamped long before the dedup window (a backfill, a client clock behind) keep
    their ids for the window from when the cluster first saw them: the leader's expiry rounds
    must not forget them within seconds."""
    with local_cluster(tmp_path, 3, dedup_window=60.0, dedup_expire_interval=0.2) as cluster:
        cluster.leader()
        with Client(cluster.addresses) as c:
            two_hours_ago = time.time_ns() // 1000 - 2 * 3600 * 1_000_000
            first = c.append(b"backfilled", event_id="backfill-1", timestamp_us=two_hours_ago)
            time.sleep(1.5)  # several DEDUP_EXPIRE rounds
            retry = c.append(b"backfilled", event_id="backfill-1", timestamp_us=two_hours_ago)
            assert retry.duplicate and (retry.queue, retry.offset) == (first.queue, first.offset)
        cluster.wait_converged()
