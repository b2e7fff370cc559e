"""The node's Prometheus metrics: one registry per node, rendered by GET /metrics."""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import psutil
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from eventstream.replication.worker_stats import ORDER_WAIT_BOUNDS_S

# The *_created series double the scrape size and say nothing an operator uses.
disable_created_metrics()

LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)


class NativeLatency(Protocol):
    """Per-bucket counts (the last: above every bound) and their sum, kept in native code."""

    latency_sum: float

    def latency_counts(self) -> list[int]: ...


class LatencyHistogram(Collector):
    """A Prometheus histogram observed once per client request on the node's hot path.

    prometheus_client's Histogram takes a lock and walks its buckets in Python on every
    observe(); this one is a bisect into a list, and the exposition is built only on scrape.
    Only the event loop thread observes, so no lock is needed.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self._name = name
        self._doc = documentation
        self._bounds = list(buckets)
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0
        # Observations made in native code (AppendIntake) over the same buckets, added on scrape.
        self.native: NativeLatency | None = None
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def _totals(self) -> tuple[list[int], float]:
        native = self.native
        if native is None:
            return self._counts, self._sum
        counts = native.latency_counts()
        if len(counts) != len(self._counts):
            raise ValueError("native latency histogram has other buckets")
        return [a + b for a, b in zip(self._counts, counts)], self._sum + native.latency_sum

    @property
    def count(self) -> int:
        return sum(self._totals()[0])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts, total = self._totals()
        family = HistogramMetricFamily(self._name, self._doc)
        family.add_metric([], _cumulative_buckets(tuple(self._bounds), counts), total)
        yield family


class _LoopValue(Collector):
    """One unlabelled number that only the node's event-loop thread changes, kept as a plain
    attribute and rendered on scrape.

    prometheus_client's Counter and Gauge take a lock and check their labels on every call; the
    node counts several things per Raft entry on every replica, so that was a measurable part of
    a follower's work per AppendEntries.
    """

    family: type[CounterMetricFamily] | type[GaugeMetricFamily]

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self._name = name
        self._doc = documentation
        self.value: float = 0
        registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield self.family(self._name, self._doc, value=self.value)


class LoopCounter(_LoopValue):
    family = CounterMetricFamily

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class LoopGauge(_LoopValue):
    family = GaugeMetricFamily

    def set(self, value: float) -> None:
        self.value = value


def _cumulative_buckets(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus buckets from per-bucket counts (the last count: above every bound)."""
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, n in zip(bounds, counts):
        cumulative += n
        buckets.append((repr(bound), cumulative))
    buckets.append(("+Inf", cumulative + counts[-1]))
    return buckets


class WorkerWakeCollector(Collector):
    """Per follower, from the pool's latest worker reports: how long APPEND orders waited for
    the worker (node writes, worker takes) and how often the worker slept, was woken by its
    doorbell, or missed a wake-up. Built only on scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Set by the node in replication = "pool" mode: peer id -> WakeCounters of live workers.
        self.source: Callable[[], dict[int, Any]] | None = None
        registry.register(self)

    def collect(self) -> Iterator[HistogramMetricFamily | CounterMetricFamily]:
        waits = HistogramMetricFamily(
            "esc_replication_order_wait_seconds",
            "Time from the leader writing an AppendEntries order to its follower's worker taking it", labels=["peer"])
        counters = {
            "sleeps": CounterMetricFamily("esc_replication_worker_sleeps",
                                          "Times the worker slept on an empty control ring", labels=["peer"]),
            "doorbell_wakes": CounterMetricFamily("esc_replication_worker_doorbell_wakes",
                                                  "Times a sleeping worker was woken by its doorbell", labels=["peer"]),
            "missed_wakeups": CounterMetricFamily(
                "esc_replication_worker_missed_wakeups",
                "Sleeps that ran to their timeout while orders waited (a lost wake-up; expected 0)", labels=["peer"]),
        }
        for peer, wake in (self.source() if self.source is not None else {}).items():
            waits.add_metric([str(peer)], _cumulative_buckets(ORDER_WAIT_BOUNDS_S, wake.order_wait_buckets),
                             wake.order_wait_ns / 1e9)
            for field, family in counters.items():
                family.add_metric([str(peer)], getattr(wake, field))
        yield waits
        yield from counters.values()

    def describe(self) -> Iterator[HistogramMetricFamily | CounterMetricFamily]:
        return iter(())


class NodeMetrics:
    def __init__(self, node_id: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Counted on the event-loop thread, several times per entry: LoopCounter, no lock.
        self.proposals = LoopCounter("esc_proposals", "Raft entries proposed by this node as leader", r)
        self.events_proposed = LoopCounter("esc_events_proposed", "Events carried by proposed entries", r)
        self.commits = LoopCounter("esc_commits", "Raft entries seen committed", r)
        self.applies = LoopCounter("esc_applies", "Raft entries applied to the state machine", r)
        self.events_applied = LoopCounter("esc_events_applied", "Events applied (duplicates included)", r)
        self.duplicates = LoopCounter("esc_duplicates", "Appends answered as duplicates of an earlier id", r)
        self.elections = Counter("esc_elections", "Times this node became leader", registry=r)
        self.snapshots_taken = Counter("esc_snapshots_taken", "Snapshots taken by this node", registry=r)
        self.snapshots_installed = Counter("esc_snapshots_installed", "Snapshots installed from a leader", registry=r)
        self.membership_changes = Counter("esc_membership_changes", "Membership changes applied (committed)", registry=r)
        self.voters = LoopGauge("esc_voters", "Voters in the last committed membership this node applied", r)
        self.learners = LoopGauge("esc_learners", "Learners in the last committed membership this node applied", r)
        self.fsyncs = LoopCounter("esc_fsyncs", "fdatasync calls on the Raft log", r)
        self.ready_cycles = LoopCounter("esc_ready_cycles", "Ready cycles the node carried out (persist, send, apply)", r)
        self.peer_messages = LoopCounter("esc_peer_messages_received", "Raft messages received from peers", r)
        self.fsync_seconds = LatencyHistogram(
            "esc_fsync_seconds", "Latency of one fdatasync of the Raft log", LATENCY_BUCKETS_S, r
        )
        self.append_seconds = LatencyHistogram(
            "esc_append_seconds", "Client append latency on the leader, receipt to answer", LATENCY_BUCKETS_S, r
        )
        self.client_errors = Counter("esc_client_errors", "Client requests answered with an error", ["status"], registry=r)
        self.peer_frames_dropped = Counter("esc_peer_messages_dropped", "Peer messages dropped (link down or congested)", registry=r)
        self.term = LoopGauge("esc_term", "Current Raft term", r)
        self.commit_index = LoopGauge("esc_commit_index", "Commit index", r)
        self.applied_index = LoopGauge("esc_applied_index", "Applied index", r)
        self.dedup_ids = LoopGauge("esc_dedup_ids", "Event ids the dedup table remembers (cap: config dedup_ids_max)", r)
        self.log_clock_offset = LoopGauge(
            "esc_log_clock_offset_seconds",
            "On the leader: its wall clock minus the time it writes into the log (a step during the term)", r)
        self.dedup_generated_ids = LoopGauge(
            "esc_dedup_generated_ids",
            "Of esc_dedup_ids, those the client library generated (kept for dedup_generated_window_ms)", r)
        self.is_leader = Gauge("esc_is_leader", "1 when this node leads", registry=r)
        self.cpu_seconds = Gauge("esc_process_cpu_seconds", "Process CPU seconds (user+system)", registry=r)
        self.rss_bytes = Gauge("esc_process_rss_bytes", "Process resident set size", registry=r)
        self.worker_cpu_seconds = Gauge(
            "esc_replication_worker_cpu_seconds", "CPU seconds (user+system) of the replication worker for a follower",
            ["peer"], registry=r,
        )
        self.worker_rss_bytes = Gauge(
            "esc_replication_worker_rss_bytes", "Resident set size of the replication worker for a follower",
            ["peer"], registry=r,
        )
        self.worker_restarts = Gauge(
            "esc_replication_worker_restarts", "Times the replication worker for a follower was restarted",
            ["peer"], registry=r,
        )
        # Set by the node in replication = "pool" mode: peer id -> WorkerUsage of live workers.
        self.replication_usage: Callable[[], dict[int, Any]] | None = None
        self.worker_wake = WorkerWakeCollector(r)
        self._process = psutil.Process(os.getpid())

    def render(self) -> bytes:
        times = self._process.cpu_times()
        self.cpu_seconds.set(times.user + times.system)
        self.rss_bytes.set(self._process.memory_info().rss)
        if self.replication_usage is not None:
            # Only live workers are shown: a follower's series vanishes when this node stops leading.
            for gauge in (self.worker_cpu_seconds, self.worker_rss_bytes, self.worker_restarts):
                gauge.clear()
            for peer, usage in self.replication_usage().items():
                self.worker_cpu_seconds.labels(str(peer)).set(usage.cpu_seconds)
                self.worker_rss_bytes.labels(str(peer)).set(usage.rss_bytes)
                self.worker_restarts.labels(str(peer)).set(usage.restarts)
        return generate_latest(self.registry)
