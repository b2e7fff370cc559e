"""One load-generating client: an OS process with its own event loop and one AsyncClient,
keeping `concurrency` requests in flight.

Closed loop (no rate): each slot sends its next request when the previous one is answered, and
latency runs from send to answer. Open loop (a rate): request k is due at start + k * interval
whether or not earlier ones were answered, and latency runs from that due time, not from the
moment a free slot sent it. A stalled cluster then shows as latency, instead of silently
lowering the offered load (coordinated omission, as HdrHistogram's author names it).

A request counts in the measurement when it is due at or after the warm-up ends; the
measurement window runs from there to the answer of the last counted request.
"""

from __future__ import annotations

import asyncio
import multiprocessing.synchronize
import os
import random
import resource
import signal
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.queues import Queue
from typing import Any

from esc_bench import latency
from esc_bench.params import LoadParams
from eventstream.client import AsyncClient
from eventstream.errors import EscError
from eventstream.storage.codec import encode_batch
from eventstream.transport.client_protocol import ProtocolError

EVENT_ID_BYTES = 16
# Batches without ids are encoded once and cycled: encoding per request would make the load
# generator, not the cluster, the bottleneck on a 2-core machine.
TEMPLATE_BATCHES = 16
START_WAIT_S = 120.0


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    index: int
    addresses: tuple[str, ...]
    params: LoadParams
    # Measurement stops issuing at warmup_s + run_s after the start, or after append_requests
    # counted requests when that is set, whichever comes first.
    run_s: float
    append_requests: int | None
    rate_requests_per_s: float | None
    seed: int


@dataclass(slots=True)
class _Ticket:
    due: float
    counted: bool
    read: bool


def run_worker(spec: WorkerSpec, reports: Queue[Any], go: multiprocessing.synchronize.Event,
               start_at: Any) -> None:
    """Process entry point. Every outcome, failure included, ends with one report message."""
    # Ctrl-C reaches the whole process group; the parent alone decides how the run ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            import uvloop
        except ImportError:
            runner = asyncio.run
        else:
            runner = uvloop.run
        runner(_Worker(spec, reports).run(go, start_at))
    except Exception as exc:  # the parent must hear why, or it would wait for a silent child
        reports.put(("failed", spec.index, f"{type(exc).__name__}: {exc}"))


class _Worker:
    def __init__(self, spec: WorkerSpec, reports: Queue[Any]) -> None:
        self.spec = spec
        self.params = spec.params
        self.reports = reports
        self.rng = random.Random(spec.seed)
        self.payload = random.Random(spec.seed).randbytes(spec.params.payload_bytes)
        self.keys = [b"key-%d" % k for k in range(spec.params.keys)]
        self.templates = [] if spec.params.ids else [self._encode(None) for _ in range(TEMPLATE_BATCHES)]
        self.template_index = 0
        self.total = latency.new_histogram()
        self.read_total = latency.new_histogram()
        self.interval = latency.new_histogram()
        # Answers of this interval, by what they count toward (see _report_interval).
        self.warmup_tally = latency.LatencyTally()
        self.append_tally = latency.LatencyTally()
        self.read_tally = latency.LatencyTally()
        self.ids = b""
        self.ids_at = 0
        self.interval_events = 0
        self.errors: Counter[str] = Counter()
        self.interval_errors = 0
        self.events = 0
        self.requests = 0
        self.reads = 0
        self.read_events = 0
        self.duplicates = 0
        self.last_answer = 0.0
        self.last_appended: tuple[int, int] | None = None
        self.next_due_index = 0
        self.appends_left = spec.append_requests
        self.start = self.warmup_end = self.deadline = 0.0

    def _encode(self, ids: bytes | None) -> bytes:
        n, keys, payload = self.params.batch_size, self.keys, self.payload
        base = self.rng.randrange(len(keys))
        now_us = time.time_ns() // 1000
        width = EVENT_ID_BYTES
        # Random ids, marked as generated the way the client library marks its own.
        return encode_batch([
            (ids[width * i: width * (i + 1)] if ids is not None else None,
             keys[(base + i) % len(keys)], None, now_us, payload, ids is not None)
            for i in range(n)
        ])

    def _next_batch(self) -> bytes:
        if self.params.ids:
            need = EVENT_ID_BYTES * self.params.batch_size
            at = self.ids_at
            if len(self.ids) - at < need:
                # Random ids drawn in blocks: one getrandom call per request would be a syscall
                # per event at batch size 1.
                self.ids = os.urandom(max(need, 64 * 1024))
                at = 0
            self.ids_at = at + need
            return self._encode(self.ids[at:at + need])
        self.template_index = (self.template_index + 1) % len(self.templates)
        return self.templates[self.template_index]

    def _next_ticket(self) -> _Ticket | None:
        if self.spec.rate_requests_per_s is None:
            due = time.monotonic()
        else:
            due = self.start + self.next_due_index / self.spec.rate_requests_per_s
            self.next_due_index += 1
        if due >= self.deadline:
            return None
        read = (self.params.read_ratio > 0 and self.last_appended is not None
                and self.rng.random() < self.params.read_ratio)
        counted = due >= self.warmup_end
        if counted and not read and self.appends_left is not None:
            if self.appends_left <= 0:
                return None
            self.appends_left -= 1
        return _Ticket(due, counted, read)

    async def run(self, go: multiprocessing.synchronize.Event, start_at: Any) -> None:
        spec = self.spec
        client = AsyncClient(list(spec.addresses), timeout_s=spec.params.request_timeout_s,
                             tls_ca=spec.params.tls_ca, token=spec.params.token)
        self.reports.put(("ready", spec.index))
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, go.wait, START_WAIT_S):
            raise RuntimeError(f"no start signal within {START_WAIT_S:.0f} s")
        self.start = start_at.value
        self.warmup_end = self.start + spec.params.warmup_s
        self.deadline = self.warmup_end + spec.run_s
        await asyncio.sleep(max(0.0, self.start - time.monotonic()))
        reporter = asyncio.create_task(self._report_periodically())
        try:
            await asyncio.gather(*(self._slot(client) for _ in range(spec.params.concurrency)))
        finally:
            reporter.cancel()
            await client.close()
        self._report_interval(int((time.monotonic() - self.start) / spec.params.report_interval_s))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.reports.put(("done", spec.index, {
            "events": self.events,
            "requests": self.requests,
            "reads": self.reads,
            "read_events": self.read_events,
            "duplicates": self.duplicates,
            "errors": dict(self.errors),
            "window_s": max(0.0, self.last_answer - self.warmup_end),
            "latency": latency.encode(self.total),
            "read_latency": latency.encode(self.read_total),
            "leader_redirects": client.leader_changes_seen,
            "retries": client.retries,
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }))

    async def _slot(self, client: AsyncClient) -> None:
        batch_size = self.params.batch_size
        while (ticket := self._next_ticket()) is not None:
            wait_s = ticket.due - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            sent = time.monotonic() if self.spec.rate_requests_per_s is None else ticket.due
            try:
                if ticket.read:
                    assert self.last_appended is not None
                    queue, offset = self.last_appended
                    events = await client.read(queue, max(0, offset - batch_size + 1), limit=batch_size)
                    appended = 0
                else:
                    ok = await client.append_encoded(self._next_batch())
                    appended = len(ok.offsets)
                    if appended != batch_size:
                        raise EscError(f"append answered {appended} results for {batch_size} events")
                    self.last_appended = (ok.queues[-1], ok.offsets[-1])
            except (EscError, ProtocolError, OSError) as exc:
                self.errors[type(exc).__name__] += 1
                self.interval_errors += 1
                continue
            answered = time.monotonic()
            elapsed = answered - sent
            self.interval_events += appended
            if not ticket.counted:
                self.warmup_tally.record_seconds(elapsed)
                continue
            self.last_answer = max(self.last_answer, answered)
            self.requests += 1
            if ticket.read:
                self.reads += 1
                self.read_events += len(events)
                self.read_tally.record_seconds(elapsed)
            else:
                self.events += appended
                self.duplicates += ok.duplicates.count(1)
                self.append_tally.record_seconds(elapsed)

    async def _report_periodically(self) -> None:
        # Reports fall on start + k * interval in every client, so the parent can add up
        # slot k of all clients into one point of the timeline.
        interval = self.params.report_interval_s
        slot = 0
        while True:
            await asyncio.sleep(max(0.0, self.start + (slot + 1) * interval - time.monotonic()))
            self._report_interval(slot)
            slot += 1

    def pour_latencies(self) -> None:
        """Move the answers counted since the last report into the histograms."""
        self.warmup_tally.pour_into(self.interval)
        self.append_tally.pour_into(self.interval, self.total)
        self.read_tally.pour_into(self.interval, self.read_total)

    def _report_interval(self, slot: int) -> None:
        self.pour_latencies()
        self.reports.put(("progress", self.spec.index, slot, time.monotonic() - self.start,
                          self.interval_events, latency.encode(self.interval), self.interval_errors))
        self.interval.reset()
        self.interval_events = 0
        self.interval_errors = 0
