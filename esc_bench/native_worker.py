"""One load process of `esc-bench --engine native`: the native engine (csrc/load_engine.h) over
`concurrency` connections to the leader, each connection one client with one request at a time.

The engine builds, sends and checks every request in C without the GIL; this module does what
happens once per report interval or once per leader change: it finds the leader, hands the
engine its address and the run's schedule, pours the engine's latency counts into HdrHistograms
and sends the parent the same messages as worker.py, so run.py and the report do not know which
engine ran.

Semantics shared with worker.py's closed loop: a request counts when it is sent at or after the
warm-up's end; none is sent at or after warm-up + run_s; with --events, at most append_requests
counted requests go out. What differs: a request that fails (an error status, a broken or
damaged connection, no answer within --timeout) is counted as an error of its kind and not
retried; its slot reconnects after a short backoff (20 ms doubling to 0.5 s) and carries on with
a new request with fresh ids. So a run's figures never include retries' duplicates.
"""

from __future__ import annotations

import multiprocessing.synchronize
import random
import resource
import signal
import socket
import time
from multiprocessing.queues import Queue
from typing import Any

from esc_bench import latency
from esc_bench._load_engine import RUN_DONE, RUN_LOOKUP, LoadEngine
from esc_bench.worker import START_WAIT_S, WorkerSpec
from eventstream.client import Client, parse_address
from eventstream.errors import EscError, InvalidArgument

# Asking every node for its status is slower than a failed request; a burst of failures
# (a leader change fails every slot at once) triggers at most one sweep per this interval.
LOOKUP_INTERVAL_S = 0.1
LOOKUP_TIMEOUT_S = 1.0
# File descriptors the process needs beside its connections (multiprocessing, status client).
SPARE_FDS = 64


def run_native_worker(spec: WorkerSpec, reports: Queue[Any], go: multiprocessing.synchronize.Event,
                      start_at: Any) -> None:
    """Process entry point. Every outcome, failure included, ends with one report message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        worker = _NativeWorker(spec, reports)
        try:
            worker.run(go, start_at)
        finally:
            worker.close()
    except Exception as exc:  # the parent must hear why, or it would wait for a silent child
        reports.put(("failed", spec.index, f"{type(exc).__name__}: {exc}"))


def resolve(address: str) -> tuple[str, int]:
    """host:port as the numeric IP and port the engine connects to; InvalidArgument if neither
    the address parses nor the host resolves."""
    host, port = parse_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidArgument(f"cannot resolve {host}: {exc}") from None
    return str(infos[0][4][0]), port


def _ensure_fds(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + SPARE_FDS
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise RuntimeError(f"{count} connections need {need} file descriptors; the limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


class _NativeWorker:
    def __init__(self, spec: WorkerSpec, reports: Queue[Any]) -> None:
        params = spec.params
        self.spec = spec
        self.reports = reports
        rng = random.Random(spec.seed)
        _ensure_fds(params.concurrency)
        self.engine = LoadEngine(
            params.concurrency, params.batch_size, random.Random(spec.seed).randbytes(params.payload_bytes),
            params.keys, rng.randrange(params.keys), params.ids, params.request_timeout_s,
        )
        if params.tls_ca is not None:
            self.engine.set_tls(params.tls_ca)  # OSError naming the CA file, or a build without native TLS
        if params.token is not None:
            self.engine.set_token(params.token)
        self.total = latency.new_histogram()
        self.interval = latency.new_histogram()
        self.target: str | None = None
        self.leader_redirects = 0
        self.last_lookup = -LOOKUP_INTERVAL_S
        self._status_client: Client | None = None
        self.start = 0.0

    def close(self) -> None:
        if self._status_client is not None:
            self._status_client.close()
            self._status_client = None

    def run(self, go: multiprocessing.synchronize.Event, start_at: Any) -> None:
        spec, params, engine = self.spec, self.spec.params, self.engine
        deadline = time.monotonic() + params.request_timeout_s
        while self.target is None:
            self._follow("")
            if self.target is None:
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"no node of {','.join(spec.addresses)} names a leader")
                time.sleep(LOOKUP_INTERVAL_S)
        self.reports.put(("ready", spec.index))
        if not go.wait(START_WAIT_S):
            raise RuntimeError(f"no start signal within {START_WAIT_S:.0f} s")
        self.start = start_at.value
        warmup_end = self.start + params.warmup_s
        engine.set_schedule(warmup_end, warmup_end + spec.run_s, spec.append_requests)
        time.sleep(max(0.0, self.start - time.monotonic()))
        interval = params.report_interval_s
        slot = 0
        while True:
            # Reports fall on start + k * interval in every client process (as in worker.py),
            # so the parent adds up slot k of all of them into one point of the timeline.
            outcome = engine.run(self.start + (slot + 1) * interval)
            if outcome == RUN_LOOKUP:
                self._follow(engine.take_hint())
                continue
            if outcome == RUN_DONE:
                break
            self._report_interval(slot)
            slot += 1
        self._report_interval(int((time.monotonic() - self.start) / interval))
        figures = engine.figures()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        last_answer = figures["last_answer_s"]
        self.reports.put(("done", spec.index, {
            "events": figures["events"],
            "requests": figures["requests"],
            "reads": 0,
            "read_events": 0,
            "duplicates": figures["duplicates"],
            "errors": figures["errors"],
            "window_s": max(0.0, last_answer - warmup_end) if last_answer else 0.0,
            "latency": latency.encode(self.total),
            "read_latency": b"",
            "leader_redirects": self.leader_redirects,
            "retries": max(0, figures["connects"] - params.concurrency),
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "events_acked": figures["events_acked"],
            "latency_clamped": figures["latency_clamped"],
        }))

    def _follow(self, hint: str) -> None:
        """Point the engine at the leader: the NotLeader hint when it names an address other
        than the current target, else whatever the nodes' status says (at most once per
        LOOKUP_INTERVAL_S). No leader found: the target stays and the slots keep retrying it."""
        address: str | None = None
        try:
            parse_address(hint)
            address = hint if hint != self.target else None
        except InvalidArgument:
            pass
        if address is None:
            now = time.monotonic()
            if now - self.last_lookup < LOOKUP_INTERVAL_S:
                return
            self.last_lookup = now
            address = self._leader_from_status()
        if address is None or address == self.target:
            return
        try:
            ip, port = resolve(address)
        except InvalidArgument:
            return
        self.engine.set_target(ip, port)
        if self.target is not None:
            self.leader_redirects += 1
        self.target = address

    def _leader_from_status(self) -> str | None:
        if self._status_client is None:
            self._status_client = Client(list(self.spec.addresses), timeout_s=LOOKUP_TIMEOUT_S,
                                         attempt_timeout_s=LOOKUP_TIMEOUT_S / 2, tls_ca=self.spec.params.tls_ca,
                                         token=self.spec.params.token)
        named: str | None = None
        for address in self.spec.addresses:
            try:
                status = self._status_client.status(address)
            except (EscError, OSError):
                continue
            if status.get("role") == "leader":
                return address
            leader_address = status.get("leader_address")
            if isinstance(leader_address, str) and named is None:
                named = leader_address
        return named

    def _report_interval(self, slot: int) -> None:
        warmup_pairs, counted_pairs = self.engine.take_latencies()
        for us, count in warmup_pairs:
            self.interval.record_value(us, count)
        for us, count in counted_pairs:
            self.interval.record_value(us, count)
            self.total.record_value(us, count)
        events, errors = self.engine.take_interval()
        self.reports.put(("progress", self.spec.index, slot, time.monotonic() - self.start,
                          events, latency.encode(self.interval), errors))
        self.interval.reset()
