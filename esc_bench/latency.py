"""Latency histograms (HdrHistogram) that travel between processes as compact encoded bytes.

Values are recorded in microseconds, 1 us to 10 minutes, 3 significant digits: a percentile is
exact to 0.1 % whatever the spread, which a fixed-bucket histogram cannot promise.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

LATENCY_US_LOWEST = 1
LATENCY_US_HIGHEST = 600_000_000
SIGNIFICANT_DIGITS = 3

# The percentiles of the summary, by the key they get in the JSON report (p999 = 99.9th).
SUMMARY_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LATENCY_US_LOWEST, LATENCY_US_HIGHEST, SIGNIFICANT_DIGITS)


def record_seconds(histogram: HdrHistogram, seconds: float) -> None:
    # Values beyond the range are clamped, not dropped: a 20-minute stall still counts as a
    # (very) slow request rather than vanishing from the tail.
    us = min(max(int(seconds * 1e6), LATENCY_US_LOWEST), LATENCY_US_HIGHEST)
    histogram.record_value(us)


class LatencyTally:
    """Latencies counted per microsecond value, poured into histograms in bulk.

    HdrHistogram.record_value() is Python code; a load generator answering tens of thousands
    of requests a second on a shared core spends less by counting equal values in a dict and
    recording each distinct value once, with its count, when a report is due.
    """

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def record_seconds(self, seconds: float) -> None:
        us = min(max(int(seconds * 1e6), LATENCY_US_LOWEST), LATENCY_US_HIGHEST)
        counts = self.counts
        counts[us] = counts.get(us, 0) + 1

    def pour_into(self, *histograms: HdrHistogram) -> None:
        """Record every counted value into each histogram, then start counting afresh."""
        for us, n in self.counts.items():
            for histogram in histograms:
                histogram.record_value(us, n)
        self.counts = {}


def merged(encoded: list[bytes]) -> HdrHistogram:
    total = new_histogram()
    for blob in encoded:
        if blob:
            total.decode_and_add(blob)
    return total


def encode(histogram: HdrHistogram) -> bytes:
    return histogram.encode() if histogram.get_total_count() else b""


def summary_ms(histogram: HdrHistogram) -> dict[str, float | int | None]:
    """p50/p90/p99/p999/max/mean in milliseconds and the count; None when nothing was recorded."""
    count = histogram.get_total_count()
    if not count:
        empty: dict[str, float | int | None] = {key: None for key, _ in SUMMARY_PERCENTILES}
        return empty | {"max": None, "mean": None, "count": 0}
    out: dict[str, float | int | None] = {
        key: round(histogram.get_value_at_percentile(p) / 1000, 3) for key, p in SUMMARY_PERCENTILES
    }
    out["max"] = round(histogram.get_max_value() / 1000, 3)
    out["mean"] = round(histogram.get_mean_value() / 1000, 3)
    out["count"] = count
    return out


def distribution_ms(histogram: HdrHistogram) -> list[list[float]]:
    """[percentile, latency ms] pairs on a log scale of 1/(1-p), for the latency plot."""
    if not histogram.get_total_count():
        return []
    points: list[list[float]] = []
    for percentile in _log_percentiles():
        points.append([percentile, round(histogram.get_value_at_percentile(percentile) / 1000, 3)])
    points.append([100.0, round(histogram.get_max_value() / 1000, 3)])
    return points


def _log_percentiles() -> list[float]:
    # 0, 50, 75, 87.5 ... halving the remainder each step, to 99.999: the HdrHistogram way of
    # showing a tail without drowning it in the body.
    out = []
    remainder = 100.0
    while remainder > 0.001:
        out.append(round(100.0 - remainder, 6))
        remainder /= 2
    return out

