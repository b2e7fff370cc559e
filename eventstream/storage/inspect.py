"""Offline inspection of a SegmentLog directory: segments, index ranges, terms, CRC status.

Read-only and lock-free, so it can look at the log of a running node; it reads each segment
once and checks every record's CRC, index sequence and term order with the native scanner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from eventstream._wal import scan_records
from eventstream.storage.segment_log import SEGMENT_SUFFIX
from eventstream.storage.wal_reference import scan as reference_scan


@dataclass
class LogReport:
    lines: list[str] = field(default_factory=list)
    ok: bool = True
    records: int = 0


def _segment_first_index(name: str) -> int | None:
    stem = name[: -len(SEGMENT_SUFFIX)]
    return int(stem) if name.endswith(SEGMENT_SUFFIX) and stem.isdigit() else None


def inspect_log(directory: str, list_records: bool = False) -> LogReport:
    report = LogReport()
    segments = sorted(
        (first, name) for name in os.listdir(directory) if (first := _segment_first_index(name)) is not None
    )
    if not segments:
        report.lines.append(f"{directory}: no segment files")
        return report
    report.lines.append(f"{'segment':<28} {'first':>10} {'last':>10} {'records':>8} {'bytes':>12}  terms  status")
    prev_term = 0
    for k, (first, name) in enumerate(segments):
        path = os.path.join(directory, name)
        with open(path, "rb") as fh:
            data = fh.read()
        count, valid_bytes, last_term, term_starts, _sparse, status, reason = scan_records(data, first, prev_term)
        last = first + count - 1
        terms = ",".join(str(t) for _, t in term_starts) or "-"
        if valid_bytes == len(data):
            verdict = "ok"
        else:
            where = "torn/corrupt tail" if k == len(segments) - 1 else "DAMAGED (not the last segment)"
            verdict = f"{where} at offset {valid_bytes}: {reason}; {len(data) - valid_bytes} bytes after it"
            report.ok = False
        report.lines.append(f"{name:<28} {first:>10} {last:>10} {count:>8} {len(data):>12}  {terms:<5}  {verdict}")
        report.records += count
        if list_records:
            for rec in reference_scan(data[:valid_bytes], first, prev_term).records:
                report.lines.append(f"    index {rec.log_index} term {rec.term} payload {len(rec.payload)} bytes")
        prev_term = last_term
    report.lines.append(f"{len(segments)} segments, {report.records} records, {'all CRCs ok' if report.ok else 'DAMAGE FOUND'}")
    return report
