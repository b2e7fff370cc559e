"""The figures of a load run: the JSON document (`--json`), the final table, and `compare`.

Throughput and MB/s count acknowledged appends only, payload bytes only, over the
measurement window (end of warm-up to the last counted answer). CPU per event sums every
node's CPU seconds over that window and divides by the acknowledged events: the figure that
carries across machines better than events/s.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import sys
from collections import Counter
from importlib import metadata
from typing import Any

from esc_bench import latency
from esc_bench.run import LoadOutcome
from eventstream import __version__

REPORT_FORMAT = 1


def build_report(outcome: LoadOutcome, target: dict[str, Any]) -> dict[str, Any]:
    params = outcome.params
    workers = outcome.workers
    events = sum(w["events"] for w in workers)
    window_s = max((w["window_s"] for w in workers), default=0.0)
    payload_bytes = events * params.payload_bytes
    errors: Counter[str] = Counter()
    for w in workers:
        errors.update(w["errors"])
    node_cpu = [n.cpu_s for n in outcome.nodes]
    node_cpu_s = round(sum(c for c in node_cpu if c is not None), 3) if node_cpu and None not in node_cpu else None
    return {
        "format": REPORT_FORMAT,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "params": dataclasses.asdict(params) | {"target": target},
        "versions": versions(),
        "events": events,
        "requests": sum(w["requests"] for w in workers),
        "window_s": round(window_s, 3),
        "events_per_s": round(events / window_s, 1) if window_s > 0 else 0.0,
        "mb_per_s": round(payload_bytes / window_s / 1e6, 3) if window_s > 0 else 0.0,
        "latency_ms": latency.summary_ms(outcome.latency),
        "latency_distribution_ms": latency.distribution_ms(outcome.latency),
        "reads": sum(w["reads"] for w in workers),
        "read_events": sum(w["read_events"] for w in workers),
        "read_latency_ms": latency.summary_ms(outcome.read_latency),
        "errors": dict(sorted(errors.items())),
        "duplicates": sum(w["duplicates"] for w in workers),
        "leader_changes_seen": outcome.leader_changes_seen,
        "leaders_seen": outcome.leaders_seen,
        "client_leader_redirects": sum(w["leader_redirects"] for w in workers),
        "client_retries": sum(w["retries"] for w in workers),
        "nodes": [dataclasses.asdict(n) for n in outcome.nodes],
        "node_cpu_s": node_cpu_s,
        "cpu_us_per_event": round(node_cpu_s * 1e6 / events, 3) if node_cpu_s is not None and events else None,
        **{f"{name}_per_event": _per_event(outcome.nodes, name, events)
           for name in ("wakeups", "preemptions")},
        "loadgen_cpu_s": round(sum(w["cpu_s"] for w in workers), 3),
        "timeline": outcome.timeline,
    }


def _per_event(nodes: list[Any], name: str, events: int) -> float | None:
    """A /proc counter summed over the nodes, per acknowledged event; None if any node lacks it."""
    values = [getattr(n, name) for n in nodes]
    if not values or None in values or not events:
        return None
    return round(sum(values) / events, 3)


def versions() -> dict[str, str]:
    out = {
        "eventstream": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": str(os.cpu_count()),
    }
    for package in ("hdrhistogram", "psutil", "uvloop"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3f}"


def render_table(report: dict[str, Any]) -> str:
    p = report["params"]
    lat = report["latency_ms"]
    lines = [
        f"target {p['target']['description']}  clients {p['clients']} x concurrency {p['concurrency']}"
        f"  batch {p['batch_size']}  payload {p['payload_bytes']} B  ids {'on' if p['ids'] else 'off'}"
        f"  engine {p.get('engine', 'client')}"
        + (f"  rate {p['rate_events_per_s']:,.0f} events/s (open loop)" if p["rate_events_per_s"] else "  closed loop"),
        "",
        f"{'events/s':<28}{report['events_per_s']:>16,.0f}",
        f"{'MB/s (payload)':<28}{report['mb_per_s']:>16,.2f}",
        f"{'events acknowledged':<28}{report['events']:>16,}   in {report['window_s']:.2f} s",
        f"{'append latency ms':<28}{'p50':>10}{'p90':>10}{'p99':>10}{'p99.9':>10}{'max':>10}",
        f"{'':<28}{_ms(lat['p50']):>10}{_ms(lat['p90']):>10}{_ms(lat['p99']):>10}"
        f"{_ms(lat['p999']):>10}{_ms(lat['max']):>10}",
    ]
    if report["reads"]:
        rl = report["read_latency_ms"]
        lines.append(f"{'read latency ms':<28}{_ms(rl['p50']):>10}{_ms(rl['p90']):>10}{_ms(rl['p99']):>10}"
                     f"{_ms(rl['p999']):>10}{_ms(rl['max']):>10}   ({report['reads']:,} reads)")
    errors = ", ".join(f"{name} {count}" for name, count in report["errors"].items()) or "none"
    lines += [
        f"{'errors':<28}{errors}",
        f"{'duplicates answered':<28}{report['duplicates']:>16,}",
        f"{'leader changes seen':<28}{report['leader_changes_seen']:>16}"
        f"   (client redirects {report['client_leader_redirects']})",
    ]
    for node in report["nodes"]:
        cpu = "-" if node["cpu_s"] is None else f"{node['cpu_s']:.2f}"
        rss = "-" if node["peak_rss_bytes"] is None else f"{node['peak_rss_bytes'] / 2**20:.0f} MiB"
        lines.append(f"{'node ' + node['node']:<28}{'cpu s ' + cpu:>16}   peak RSS {rss}"
                     + ("" if node["alive"] else "   (exited)"))
    cpu_per_event = report["cpu_us_per_event"]
    lines.append(f"{'CPU us per event (nodes)':<28}{'-' if cpu_per_event is None else f'{cpu_per_event:,.2f}':>16}"
                 + ("" if report["nodes"] else "   (no node process on this machine)"))
    per_event = [(label, report.get(f"{name}_per_event")) for label, name in (
        ("wake-ups per event (nodes)", "wakeups"), ("preemptions per event (nodes)", "preemptions"))]
    if any(value is not None for _, value in per_event):
        lines += [f"{label:<28}{'-' if value is None else f'{value:,.3f}':>16}" for label, value in per_event]
    lines.append(f"{'load generator CPU s':<28}{report['loadgen_cpu_s']:>16.2f}")
    return "\n".join(lines)


# (path in the report, True when a higher value is better)
COMPARED = (
    ("events_per_s", True),
    ("mb_per_s", True),
    ("latency_ms.p50", False),
    ("latency_ms.p90", False),
    ("latency_ms.p99", False),
    ("latency_ms.p999", False),
    ("latency_ms.max", False),
    ("cpu_us_per_event", False),
    ("errors_total", False),
    ("leader_changes_seen", False),
)


def _lookup(report: dict[str, Any], path: str) -> float | None:
    if path == "errors_total":
        errors = report.get("errors")
        return float(sum(errors.values())) if isinstance(errors, dict) else None
    value: Any = report
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclasses.dataclass(frozen=True, slots=True)
class Delta:
    metric: str
    before: float | None
    after: float | None
    change_pct: float | None
    worse: bool


def compare_reports(before: dict[str, Any], after: dict[str, Any]) -> list[Delta]:
    deltas = []
    for path, higher_is_better in COMPARED:
        a, b = _lookup(before, path), _lookup(after, path)
        change = None
        worse = False
        if a is not None and b is not None:
            if a != 0:
                change = (b - a) / abs(a) * 100
            worse = b < a if higher_is_better else b > a
        deltas.append(Delta(path, a, b, change, worse))
    return deltas


def params_differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    pa, pb = before.get("params", {}), after.get("params", {})
    return [f"{key}: {pa.get(key)!r} -> {pb.get(key)!r}"
            for key in sorted(set(pa) | set(pb)) if pa.get(key) != pb.get(key)]


def render_comparison(deltas: list[Delta], differences: list[str]) -> str:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:,.3f}"

    lines = [f"{'metric':<22}{'A':>16}{'B':>16}{'change':>10}"]
    for d in deltas:
        change = "-" if d.change_pct is None else f"{d.change_pct:+.1f}%"
        verdict = "  worse" if d.worse else ("  better" if d.change_pct else "")
        lines.append(f"{d.metric:<22}{fmt(d.before):>16}{fmt(d.after):>16}{change:>10}{verdict}")
    if differences:
        lines.append("parameters differ: " + "; ".join(differences))
    return "\n".join(lines)
