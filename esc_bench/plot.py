"""`--plot FILE.png`: throughput over time and the latency distribution of one report.

matplotlib is an optional extra (`pip install 'eventstream-core[bench]'`), imported only here.
"""

from __future__ import annotations

from typing import Any

INSTALL_HINT = "--plot needs matplotlib: pip install 'eventstream-core[bench]' (or: pip install matplotlib)"


class PlotUnavailable(Exception):
    pass


def write_plot(report: dict[str, Any], path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(INSTALL_HINT) from None
    matplotlib.use("Agg")  # files only; no display is needed or wanted
    import matplotlib.pyplot as plt

    figure, (rate_axes, latency_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    timeline = report["timeline"]
    times = [point["t_s"] for point in timeline]
    rate_axes.plot(times, [point["events_per_s"] for point in timeline], color="tab:blue")
    warmup_s = report["params"]["warmup_s"]
    if warmup_s:
        rate_axes.axvspan(0, warmup_s, color="0.9", label="warm-up")
        rate_axes.legend(loc="lower right")
    rate_axes.set_ylim(bottom=0)
    rate_axes.set_xlabel("seconds since start")
    rate_axes.set_ylabel("acknowledged events/s")
    rate_axes.set_title(f"throughput ({report['events_per_s']:,.0f} events/s measured)")
    rate_axes.grid(True, alpha=0.3)

    points = report["latency_distribution_ms"]
    if points:
        # x = 1/(1 - percentile): equal room for 90, 99, 99.9 ... as in HdrHistogram's plots.
        xs = [1 / (1 - min(p, 99.9999) / 100) for p, _ in points]
        latency_axes.plot(xs, [ms for _, ms in points], color="tab:red", marker=".")
        latency_axes.set_xscale("log")
        ticks = [1, 10, 100, 1000, 10000, 100000]
        latency_axes.set_xticks(ticks, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
    latency_axes.set_xlabel("percentile")
    latency_axes.set_ylabel("append latency ms")
    latency_axes.set_title("append latency distribution")
    latency_axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
