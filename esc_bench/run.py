"""One load run: start the client processes, start them together, gather their progress and
results, watch the cluster's leader and the nodes' CPU and memory, and hand back the figures.
"""

from __future__ import annotations

import math
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from esc_bench import latency
from esc_bench.native_worker import run_native_worker
from esc_bench.node_usage import NodeFigures, NodeUsage
from esc_bench.params import LoadParams
from esc_bench.worker import WorkerSpec, run_worker
from eventstream.client import Client
from eventstream.errors import EscError

READY_WAIT_S = 60.0
START_DELAY_S = 0.2
STATUS_POLL_S = 1.0
# A run that overstays its planned end by this much (after the last request's own timeout)
# is stopped: its clients are terminated and the run reports an error instead of hanging.
OVERRUN_GRACE_S = 30.0


class LoadError(Exception):
    """The run could not be carried out; the message says why in one line."""


@dataclass(slots=True)
class Progress:
    """What the live line shows: the last interval's events/s and p99, and the totals so far."""

    elapsed_s: float
    warming_up: bool
    events_per_s: float
    p99_ms: float | None
    events_total: int
    errors_total: int


@dataclass(slots=True)
class LoadOutcome:
    params: LoadParams
    workers: list[dict[str, Any]]
    latency: HdrHistogram
    read_latency: HdrHistogram
    timeline: list[dict[str, float | None]]
    nodes: list[NodeFigures]
    leader_changes_seen: int
    leaders_seen: list[list[int]] = field(default_factory=list)


def split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


def worker_specs(params: LoadParams, addresses: list[str]) -> list[WorkerSpec]:
    requests_split: list[int | None] = [None] * params.clients
    if params.events is not None:
        requests_split = list(split_evenly(math.ceil(params.events / params.batch_size), params.clients))
    rate_requests_per_s = None
    if params.rate_events_per_s is not None:
        rate_requests_per_s = params.rate_events_per_s / params.batch_size / params.clients
    run_s = params.duration_s if params.duration_s is not None else params.time_limit_s
    return [
        WorkerSpec(
            index=k,
            addresses=tuple(addresses[k % len(addresses):] + addresses[:k % len(addresses)]),
            params=params,
            run_s=run_s,
            append_requests=requests_split[k],
            rate_requests_per_s=rate_requests_per_s,
            seed=params.seed + k,
        )
        for k in range(params.clients)
    ]


class LeaderWatch:
    """Polls every node's status on a thread; a leader change is a new (term, leader) pair."""

    def __init__(self, addresses: list[str], usage: NodeUsage, tls_ca: str | None = None,
                 token: str | None = None) -> None:
        self._addresses = addresses
        self._tls_ca, self._token = tls_ca, token
        self._usage = usage
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="esc-bench-leader-watch", daemon=True)
        self.leaders: list[tuple[int, int]] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(STATUS_POLL_S * 5)

    def _run(self) -> None:
        client = Client(self._addresses, timeout_s=STATUS_POLL_S, attempt_timeout_s=STATUS_POLL_S / 2,
                        tls_ca=self._tls_ca, token=self._token)
        try:
            while not self._stop.is_set():
                self._poll(client)
                self._usage.sample()
                self._stop.wait(STATUS_POLL_S)
        finally:
            client.close()

    def _poll(self, client: Client) -> None:
        for address in self._addresses:
            try:
                status = client.status(address)
            except (EscError, OSError):
                continue
            pair = (int(status.get("term") or 0), int(status.get("leader") or 0))
            if pair[1] and pair not in self.leaders:
                self.leaders.append(pair)

    @property
    def changes(self) -> int:
        return max(0, len(self.leaders) - 1)


def run_load(params: LoadParams, addresses: list[str], node_pids: dict[str, int],
             on_progress: Callable[[Progress], None]) -> LoadOutcome:
    ctx = multiprocessing.get_context("spawn")
    reports: Any = ctx.Queue()
    go = ctx.Event()
    start_at: Any = ctx.Value("d", 0.0)
    specs = worker_specs(params, addresses)
    target = run_native_worker if params.engine == "native" else run_worker
    processes = [ctx.Process(target=target, args=(spec, reports, go, start_at),
                             name=f"esc-bench-client-{spec.index}", daemon=True) for spec in specs]
    for process in processes:
        process.start()
    try:
        _wait_ready(reports, len(processes))
        usage = NodeUsage(node_pids)
        watch = LeaderWatch(addresses, usage, params.tls_ca, params.token)
        watch.start()
        start = time.monotonic() + START_DELAY_S
        start_at.value = start
        go.set()
        try:
            done, timeline = _gather(params, reports, len(processes), start, usage, on_progress)
        finally:
            watch.stop()
        nodes = usage.end()
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)
    return LoadOutcome(
        params=params,
        workers=done,
        latency=latency.merged([d["latency"] for d in done]),
        read_latency=latency.merged([d["read_latency"] for d in done]),
        timeline=timeline,
        nodes=nodes,
        leader_changes_seen=watch.changes,
        leaders_seen=[list(pair) for pair in watch.leaders],
    )


def _wait_ready(reports: Any, count: int) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    ready = 0
    while ready < count:
        try:
            message = reports.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise LoadError(f"only {ready} of {count} client processes started within {READY_WAIT_S:.0f} s") from None
        if message[0] == "failed":
            raise LoadError(f"client {message[1]} failed to start: {message[2]}")
        if message[0] == "ready":
            ready += 1


def _gather(params: LoadParams, reports: Any, count: int, start: float, usage: NodeUsage,
            on_progress: Callable[[Progress], None]) -> tuple[list[dict[str, Any]], list[dict[str, float | None]]]:
    warmup_end = start + params.warmup_s
    run_s = params.duration_s if params.duration_s is not None else params.time_limit_s
    hard_stop = warmup_end + run_s + params.request_timeout_s + OVERRUN_GRACE_S
    interval = params.report_interval_s
    done: dict[int, dict[str, Any]] = {}
    buckets: dict[int, _Slot] = {}
    live_events, live_errors, live_hists = 0, 0, []
    events_total, errors_total = 0, 0
    last_shown = start
    began = False
    while len(done) < count:
        now = time.monotonic()
        if not began and now >= warmup_end:
            usage.begin()
            began = True
        if now > hard_stop:
            raise LoadError(f"the run overran its planned end by {OVERRUN_GRACE_S:.0f} s; clients stopped")
        try:
            message = reports.get(timeout=0.05)
        except queue.Empty:
            message = None
        if message is not None:
            kind, index = message[0], message[1]
            if kind == "failed":
                raise LoadError(f"client {index} failed: {message[2]}")
            if kind == "progress":
                _, _, slot, at_s, events, hist, errors = message
                bucket = buckets.setdefault(slot, _Slot())
                bucket.events += events
                bucket.histograms.append(hist)
                bucket.errors += errors
                bucket.end_s = max(bucket.end_s, min((slot + 1) * interval, at_s))
                live_events += events
                live_errors += errors
                live_hists.append(hist)
                events_total += events
                errors_total += errors
            elif kind == "done":
                done[index] = message[2]
        now = time.monotonic()
        if now - last_shown >= interval:
            p99 = latency.merged(live_hists)
            on_progress(Progress(
                elapsed_s=now - start,
                warming_up=last_shown < warmup_end,
                events_per_s=live_events / (now - last_shown),
                p99_ms=latency.summary_ms(p99)["p99"],  # type: ignore[arg-type]
                events_total=events_total,
                errors_total=errors_total,
            ))
            last_shown, live_events, live_errors, live_hists = now, 0, 0, []
    if not began:
        usage.begin()
    # A last report a few milliseconds into a new interval would make a wild point of its
    # own; it joins the interval before it.
    spans: list[tuple[float, float, _Slot]] = []
    for slot in sorted(buckets):
        bucket = buckets[slot]
        begin_s = slot * interval
        if spans and bucket.end_s - begin_s < interval / 2:
            first_s, _, earlier = spans[-1]
            earlier.events += bucket.events
            earlier.errors += bucket.errors
            earlier.histograms += bucket.histograms
            spans[-1] = (first_s, max(bucket.end_s, earlier.end_s), earlier)
        elif bucket.end_s > begin_s:
            spans.append((begin_s, bucket.end_s, bucket))
    timeline = [
        {
            "t_s": round(end_s, 3),
            "warmup": end_s <= params.warmup_s,
            "events_per_s": round(bucket.events / (end_s - begin_s), 1),
            "p99_ms": latency.summary_ms(latency.merged(bucket.histograms))["p99"],
            "errors": bucket.errors,
        }
        for begin_s, end_s, bucket in spans
    ]
    return [done[k] for k in sorted(done)], timeline  # type: ignore[return-value]


@dataclass(slots=True)
class _Slot:
    """One point of the timeline: every client's report for the same interval."""

    events: int = 0
    errors: int = 0
    end_s: float = 0.0
    histograms: list[bytes] = field(default_factory=list)
