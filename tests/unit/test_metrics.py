from prometheus_client import CollectorRegistry, generate_latest

from eventstream.metrics import LatencyHistogram


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
