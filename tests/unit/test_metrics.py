import struct
from array import array

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from eventstream.metrics import LatencyHistogram, WorkerWakeCollector
from eventstream.replication.worker import STATS_LAYOUT, WakeCounters
from eventstream.storage import crc32c
from eventstream.storage.codec import encode_batch
from eventstream.transport.client_protocol import Op, encode_request

SEEN_US = 1_790_000_000_123_456  # the leader's clock when it takes an entry


def test_latency_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    registry = CollectorRegistry()
    h = LatencyHistogram("x_seconds", "doc", (0.001, 0.01), registry)
    for v in (0.0005, 0.001, 0.002, 0.5):
        h.observe(v)
    text = generate_latest(registry).decode()
    assert 'x_seconds_bucket{le="0.001"} 2.0' in text
    assert 'x_seconds_bucket{le="0.01"} 3.0' in text
    assert 'x_seconds_bucket{le="+Inf"} 4.0' in text
    assert "x_seconds_count 4.0" in text and h.count == 4


def test_latency_histogram_adds_the_native_intake_s_buckets() -> None:
    from eventstream.transport._append_intake import AppendIntake

    registry = CollectorRegistry()
    h = LatencyHistogram("x_seconds", "doc", (0.001, 0.01), registry)
    intake = AppendIntake(1 << 20, 10, 1 << 20, (0.001, 0.01))
    h.native = intake
    h.observe(0.5)
    slot, gen = intake.open_slot(-1)
    for arrival in (10.0, 9.9995, 9.998):  # answered at 10.0: waited 0, 0.5 and 2 ms
        body = encode_request(Op.APPEND, 1, encode_batch([(None, None, None, 1, b"x")]))
        intake.feed(slot, struct.pack("<II", len(body), crc32c(body)) + body, arrival, True)
    taken = intake.take(100, 1 << 20, SEEN_US)
    assert taken is not None
    intake.answer(taken[1], 1, bytes([1, 1, 1]), array("I", [0, 0, 0]), array("Q", [0, 1, 2]), bytes(256), 2, 10.0)
    text = generate_latest(registry).decode()
    assert 'x_seconds_bucket{le="0.001"} 2.0' in text
    assert 'x_seconds_bucket{le="0.01"} 3.0' in text
    assert "x_seconds_count 4.0" in text and h.count == 4
    h.native = AppendIntake(1 << 20, 10, 1 << 20, (0.001,))
    with pytest.raises(ValueError, match="other buckets"):
        generate_latest(registry)


def test_worker_wake_counters_render_per_follower_and_survive_the_status_record_round_trip() -> None:
    wake = WakeCounters(sleeps=7, doorbell_wakes=6)
    for wait_ms in (0.05, 0.3, 3.0, 40.0):
        wake.observe_order_wait(int(wait_ms * 1e6))
    # The node reads what the worker reported through a STATS record.
    record = STATS_LAYOUT.pack(1, 2, 3, 4, *wake.fields())
    reported = WakeCounters.from_fields(STATS_LAYOUT.unpack(record)[4:])
    assert reported.fields() == wake.fields() and reported.orders_timed == 4
    assert reported.order_wait_quantile_s(0.5) == 0.0005 and reported.order_wait_quantile_s(0.99) == 0.05
    registry = CollectorRegistry()
    collector = WorkerWakeCollector(registry)
    assert "esc_replication_order_wait_seconds_count" not in generate_latest(registry).decode()  # not leading
    collector.source = lambda: {3: reported}
    text = generate_latest(registry).decode()
    assert 'esc_replication_order_wait_seconds_bucket{le="0.0001",peer="3"} 1.0' in text
    assert 'esc_replication_order_wait_seconds_bucket{le="0.005",peer="3"} 3.0' in text
    assert 'esc_replication_order_wait_seconds_bucket{le="+Inf",peer="3"} 4.0' in text
    assert 'esc_replication_worker_sleeps_total{peer="3"} 7.0' in text
    assert 'esc_replication_worker_doorbell_wakes_total{peer="3"} 6.0' in text
    assert 'esc_replication_worker_missed_wakeups_total{peer="3"} 0.0' in text
