"""esc-bench without a cluster: parameter checks, latency summaries, the open loop's clock,
node CPU and memory readings, the JSON report's keys, compare, and the plot."""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import queue
import socket
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from esc_bench import latency
from esc_bench.cli import main
from esc_bench.node_usage import NodeFigures, NodeUsage, local_listener_pids
from esc_bench.params import LoadParams
from esc_bench.report import build_report, compare_reports, render_table
from esc_bench.run import LoadOutcome, split_evenly, worker_specs
from esc_bench.worker import WorkerSpec, _Worker
from eventstream.errors import Unavailable
from eventstream.transport.client_protocol import AppendOk


def params(**changes: Any) -> LoadParams:
    values: dict[str, Any] = dict(
        clients=2, concurrency=4, batch_size=100, payload_bytes=100, keys=10, ids=True,
        read_ratio=0.0, duration_s=5.0, events=None, warmup_s=1.0, rate_events_per_s=None,
        time_limit_s=300.0, request_timeout_s=10.0, report_interval_s=1.0, seed=1,
    )
    values.update(changes)
    return LoadParams(**values)


@pytest.mark.parametrize(("args", "named"), [
    (["--local", "3", "--clients", "0"], "--clients"),
    (["--local", "3", "--concurrency", "0"], "--concurrency"),
    (["--local", "3", "--batch-size", "-1"], "--batch-size"),
    (["--local", "3", "--payload-bytes", "-5"], "--payload-bytes"),
    (["--local", "3", "--keys", "0"], "--keys"),
    (["--local", "3", "--read-ratio", "1.5"], "--read-ratio"),
    (["--local", "3", "--duration", "0"], "--duration"),
    (["--local", "3", "--events", "0"], "--events"),
    (["--local", "3", "--duration", "1", "--events", "10"], "not both"),
    (["--local", "3", "--rate", "-1"], "--rate"),
    (["--local", "0"], "--local"),
    (["--local", "3", "--cluster", "127.0.0.1:7101"], "exactly one target"),
    ([], "exactly one target"),
    (["--cluster", "127.0.0.1:7101", "--no-wal-sync"], "--wal-sync"),
    (["--cluster", "no-port-here"], "bad address"),
    (["--local", "3", "--batch-size", "60000", "--payload-bytes", "60000"], "batch limit"),
    (["--local", "3", "--clients", "many"], "--clients"),
    (["--local", "3", "--no-such-option"], "--no-such-option"),
])
def test_bad_parameters_give_one_line_and_exit_2(args: list[str], named: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esc-bench: error: ")
    assert named in lines[0]


def test_unreachable_cluster_is_one_line_and_exit_1() -> None:
    with socket.socket() as s:  # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(main, ["--cluster", f"127.0.0.1:{port}", "--duration", "1"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the cluster" in lines[0]


def test_latency_summary_is_within_the_histogram_precision() -> None:
    histogram = latency.new_histogram()
    for ms in range(1, 1001):
        latency.record_seconds(histogram, ms / 1000)
    summary = latency.summary_ms(latency.merged([latency.encode(histogram), b""]))
    assert summary["count"] == 1000
    for key, expected in (("p50", 500), ("p90", 900), ("p99", 990), ("p999", 999), ("max", 1000)):
        assert summary[key] == pytest.approx(expected, rel=2e-3), key
    points = latency.distribution_ms(histogram)
    assert points[0][0] == 0.0 and points[-1] == [100.0, summary["max"]]
    assert [p for p, _ in points] == sorted(p for p, _ in points)


def test_empty_histogram_summary_says_none() -> None:
    summary = latency.summary_ms(latency.new_histogram())
    assert summary["count"] == 0 and summary["p99"] is None
    assert latency.distribution_ms(latency.new_histogram()) == []


def test_events_and_rate_are_split_over_clients() -> None:
    assert split_evenly(10, 3) == [4, 3, 3]
    specs = worker_specs(params(clients=3, events=1001, duration_s=None, rate_events_per_s=3000.0),
                         ["a:1", "b:2"])
    assert [s.append_requests for s in specs] == [4, 4, 3]  # ceil(1001 / 100) = 11 requests
    assert all(s.rate_requests_per_s == pytest.approx(10.0) for s in specs)
    assert specs[0].run_s == 300.0  # an --events run is bounded by --time-limit
    assert [s.addresses[0] for s in specs] == ["a:1", "b:2", "a:1"]  # clients spread their first try


class SlowCluster:
    """Answers every append after service_s, one at a time, like a server with one worker."""

    def __init__(self, service_s: float) -> None:
        self.service_s = service_s
        self.lock = asyncio.Lock()
        self.leader_changes_seen = 0
        self.retries = 0

    async def append_encoded(self, batch: bytes) -> AppendOk:
        async with self.lock:
            await asyncio.sleep(self.service_s)
        return AppendOk(1, array("I", [0]), array("Q", [0]), b"\0")


def run_slots(rate_requests_per_s: float | None, run_s: float, service_s: float) -> _Worker:
    spec = WorkerSpec(index=0, addresses=("127.0.0.1:1",),
                      params=params(concurrency=4, batch_size=1, warmup_s=0.0),
                      run_s=run_s, append_requests=None, rate_requests_per_s=rate_requests_per_s, seed=1)
    worker = _Worker(spec, queue.Queue())  # type: ignore[arg-type]
    worker.start = worker.warmup_end = time.monotonic()
    worker.deadline = worker.start + run_s
    cluster = SlowCluster(service_s)

    async def slots() -> None:
        await asyncio.gather(*(worker._slot(cluster) for _ in range(spec.params.concurrency)))  # type: ignore[arg-type]

    asyncio.run(slots())
    worker.pour_latencies()
    return worker


def test_open_loop_counts_the_wait_for_a_free_slot_as_latency() -> None:
    """Offered 100 requests/s to a server that does 50/s: the backlog grows for the whole run,
    so the late requests waited for most of it. A closed loop with the same server reports
    only the service and queue time of the 4 in flight, never the growing backlog."""
    open_loop = run_slots(rate_requests_per_s=100.0, run_s=0.8, service_s=0.02)
    closed_loop = run_slots(rate_requests_per_s=None, run_s=0.8, service_s=0.02)
    open_max = latency.summary_ms(open_loop.total)["max"]
    closed_max = latency.summary_ms(closed_loop.total)["max"]
    assert open_loop.events == 80  # every due request was sent and counted
    assert open_max is not None and closed_max is not None
    assert open_max > 300  # the 80th request was due at 0.79 s and answered at about 1.6 s
    assert closed_max < open_max / 2


def test_errors_are_counted_by_type_and_the_run_goes_on() -> None:
    spec = WorkerSpec(index=0, addresses=("127.0.0.1:1",),
                      params=params(concurrency=1, batch_size=1, ids=False, warmup_s=0.0),
                      run_s=5.0, append_requests=3, rate_requests_per_s=None, seed=1)
    worker = _Worker(spec, queue.Queue())  # type: ignore[arg-type]
    worker.start = worker.warmup_end = time.monotonic()
    worker.deadline = worker.start + 5.0

    class Failing:
        async def append_encoded(self, batch: bytes) -> AppendOk:
            raise Unavailable("no leader")

    asyncio.run(worker._slot(Failing()))  # type: ignore[arg-type]
    assert dict(worker.errors) == {"Unavailable": 3}
    assert worker.events == 0


def test_node_usage_reads_cpu_and_peak_rss_of_a_process() -> None:
    usage = NodeUsage({"self": os.getpid()})
    usage.begin()
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    [row] = usage.end()
    assert row.node == "self" and row.alive
    assert row.cpu_s is not None and row.cpu_s >= 0.04
    assert row.peak_rss_bytes is not None and row.peak_rss_bytes > 1 << 20


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task"), reason="needs Linux /proc task status")
def test_node_usage_counts_wake_ups_over_all_threads() -> None:
    usage = NodeUsage({"self": os.getpid()})
    usage.begin()
    wake = threading.Event()
    done = threading.Event()

    def sleeper() -> None:  # each wait is a sleep and each set() wakes it: one switch per turn
        for _ in range(50):
            wake.wait()
            wake.clear()
            done.set()

    thread = threading.Thread(target=sleeper)
    thread.start()
    for _ in range(50):
        done.clear()
        wake.set()
        done.wait()
    [row] = usage.end()
    thread.join()
    assert row.wakeups is not None and row.wakeups >= 50
    assert row.preemptions is not None and row.preemptions >= 0


def test_listener_pids_finds_this_process_and_skips_what_does_not_listen() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        assert local_listener_pids([address]) == {address: os.getpid()}
    assert local_listener_pids([address]) == {}


def outcome(events_per_worker: int = 1000, window_s: float = 2.0) -> LoadOutcome:
    histogram = latency.new_histogram()
    for ms in (1, 2, 3, 40):
        latency.record_seconds(histogram, ms / 1000)
    worker = {"events": events_per_worker, "requests": events_per_worker // 100, "reads": 0,
              "read_events": 0, "duplicates": 0, "errors": {"Timeout": 1}, "window_s": window_s,
              "latency": latency.encode(histogram), "read_latency": b"", "leader_redirects": 1,
              "retries": 2, "cpu_s": 0.5}
    return LoadOutcome(
        params=params(), workers=[worker, dict(worker, errors={"Timeout": 2, "Overloaded": 1})],
        latency=latency.merged([worker["latency"], worker["latency"]]),  # type: ignore[list-item]
        read_latency=latency.new_histogram(),
        timeline=[{"t_s": 1.0, "warmup": True, "events_per_s": 900.0, "p99_ms": 40.0, "errors": 0}],
        nodes=[NodeFigures("1", 11, 0.25, 50 << 20, True, wakeups=400, preemptions=10),
               NodeFigures("2", 12, 0.75, 60 << 20, True, wakeups=600, preemptions=20)],
        leader_changes_seen=1,
    )


def test_report_has_the_keys_the_issue_names_with_derived_figures() -> None:
    report = build_report(outcome(), {"description": "local 3 nodes"})
    for key in ("events_per_s", "mb_per_s", "latency_ms", "errors", "cpu_us_per_event", "params"):
        assert key in report
    assert set(report["latency_ms"]) >= {"p50", "p90", "p99", "p999", "max"}
    assert report["events_per_s"] == 1000.0  # 2000 events in a 2 s window
    assert report["mb_per_s"] == 0.1
    assert report["errors"] == {"Overloaded": 1, "Timeout": 3}
    assert report["cpu_us_per_event"] == 500.0  # 1.0 node CPU second / 2000 events
    assert report["wakeups_per_event"] == 0.5 and report["preemptions_per_event"] == 0.015
    assert report["params"]["batch_size"] == 100 and report["params"]["target"]["description"]
    assert report["versions"]["eventstream"] and report["versions"]["hdrhistogram"]
    json.dumps(report)  # every value is plain JSON
    table = render_table(report)
    assert "1,000" in table and "Timeout 3" in table and "500.00" in table
    assert "wake-ups per event (nodes)" in table and "0.500" in table


def test_cpu_per_event_is_absent_when_a_node_could_not_be_read() -> None:
    o = outcome()
    o.nodes[1].cpu_s = None
    report = build_report(o, {"description": "x"})
    assert report["node_cpu_s"] is None and report["cpu_us_per_event"] is None
    o.nodes[1].wakeups = None
    report = build_report(o, {"description": "x"})
    assert report["wakeups_per_event"] is None and report["preemptions_per_event"] == 0.015


def test_compare_names_direction_and_fails_beyond_tolerance(tmp_path: Path) -> None:
    before = build_report(outcome(), {"description": "x"})
    after = build_report(outcome(events_per_worker=500), {"description": "x"})
    deltas = {d.metric: d for d in compare_reports(before, after)}
    assert deltas["events_per_s"].change_pct == pytest.approx(-50.0) and deltas["events_per_s"].worse
    assert deltas["cpu_us_per_event"].worse  # same CPU over half the events
    assert not deltas["latency_ms.p99"].worse
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(before))
    b.write_text(json.dumps(after))
    shown = CliRunner().invoke(main, ["compare", str(a), str(b)])
    assert shown.exit_code == 0, shown.output
    assert "events_per_s" in shown.output and "-50.0%" in shown.output
    failed = CliRunner().invoke(main, ["compare", str(a), str(b), "--fail-worse", "10"])
    assert failed.exit_code == 1 and "events_per_s -50.0%" in failed.output
    within = CliRunner().invoke(main, ["compare", str(a), str(a), "--fail-worse", "10"])
    assert within.exit_code == 0


def test_compare_refuses_a_file_that_is_not_a_report(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"benchmarks": []}')
    result = CliRunner().invoke(main, ["compare", str(other), str(other)])
    assert result.exit_code == 2
    assert "not an esc-bench --json report" in result.output


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs the bench extra (matplotlib)")
    from esc_bench.plot import write_plot

    report = build_report(outcome(), {"description": "x"})
    path = tmp_path / "run.png"
    write_plot(report, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = CliRunner().invoke(main, ["--local", "3", "--plot", "x.png"])
    assert result.exit_code == 2
    assert "pip install 'eventstream-core[bench]'" in result.output
