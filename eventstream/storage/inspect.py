"""Offline inspection of a SegmentLog directory: segments, index ranges, terms, CRC status.

Read-only and lock-free, so it can look at the log of a running node (and never repairs
anything); it reads each segment once and checks every record's CRC, index sequence and term
order with the native scanner, or with the pure-Python reference scanner (an independent second
opinion) when asked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from eventstream.storage._wal import scan_records
from eventstream.storage.atomic_file import unpack_checked
from eventstream.storage.errors import StorageError
from eventstream.storage.hard_state import HARD_STATE_FILE, HardState
from eventstream.storage.segment_log import _META_LAYOUT, _META_MAGIC, META_FILE, SEGMENT_SUFFIX
from eventstream.storage.wal_reference import scan as reference_scan


@dataclass
class LogReport:
    lines: list[str] = field(default_factory=list)
    ok: bool = True  # False when damage lies where recovery would refuse to open the log
    torn_tail: bool = False
    records: int = 0


def _segment_first_index(name: str) -> int | None:
    stem = name[: -len(SEGMENT_SUFFIX)]
    return int(stem) if name.endswith(SEGMENT_SUFFIX) and (stem.isascii() and stem.isdigit()) else None


def _scan(data: bytes, first: int, prev_term: int, reference: bool) -> tuple[int, int, int, str, str]:
    """(count, valid_bytes, last_term, terms, reason) from the native or the reference scanner."""
    if reference:
        result = reference_scan(data, first, prev_term)
        terms = sorted({r.term for r in result.records})
        last_term = result.records[-1].term if result.records else prev_term
        return len(result.records), result.valid_bytes, last_term, ",".join(map(str, terms)), result.reason
    count, valid_bytes, last_term, term_starts, _sparse, _status, reason = scan_records(data, first, prev_term)
    return count, valid_bytes, last_term, ",".join(str(t) for _, t in term_starts), reason


def inspect_log(directory: str, list_records: bool = False, reference: bool = False) -> LogReport:
    report = LogReport()
    prev_term = 0
    try:
        meta = unpack_checked(os.path.join(directory, META_FILE), _META_MAGIC, _META_LAYOUT)
    except StorageError as exc:
        report.lines.append(f"{META_FILE}: DAMAGED: {exc}")
        report.ok = False
        meta = None
    if meta is not None:
        prev_term = meta[1]
        report.lines.append(f"{META_FILE}: compacted through index {meta[0] - 1} (term {meta[1]})")
    parent = os.path.dirname(os.path.abspath(directory))
    for where in (directory, parent):
        if os.path.exists(os.path.join(where, HARD_STATE_FILE)):
            try:
                report.lines.append(f"{HARD_STATE_FILE}: {HardState.load(where)}")
            except StorageError as exc:
                report.lines.append(f"{HARD_STATE_FILE}: DAMAGED: {exc}")
                report.ok = False
            break
    segments = sorted(
        (first, name) for name in os.listdir(directory) if (first := _segment_first_index(name)) is not None
    )
    if not segments:
        report.lines.append(f"{directory}: no segment files (empty log)")
        return report
    report.lines.append(f"{'segment':<28} {'first':>10} {'last':>10} {'records':>8} {'bytes':>12}  terms  status")
    prev_term = 0
    for k, (first, name) in enumerate(segments):
        path = os.path.join(directory, name)
        with open(path, "rb") as fh:
            data = fh.read()
        count, valid_bytes, last_term, terms, reason = _scan(data, first, prev_term, reference)
        last = first + count - 1
        terms = terms or "-"
        tail = data[valid_bytes:]
        if valid_bytes == len(data):
            verdict = "ok"
        elif k == len(segments) - 1 and tail.count(0) == len(tail):
            # A wal_sync log writes zeros ahead of its records (SegmentFile.zero_fill); an open or
            # killed node's last segment ends with them, and recovery removes them silently.
            verdict = f"ok; {len(tail)} zero bytes written ahead after offset {valid_bytes}"
        else:
            if k == len(segments) - 1:
                where = "torn/corrupt tail (recovery cuts it)"
                report.torn_tail = True
            else:
                where = "DAMAGED (not the last segment)"
                report.ok = False
            verdict = f"{where} at offset {valid_bytes}: {reason}; {len(data) - valid_bytes} bytes after it"
        report.lines.append(f"{name:<28} {first:>10} {last:>10} {count:>8} {len(data):>12}  {terms:<5}  {verdict}")
        report.records += count
        if list_records:
            for rec in reference_scan(data[:valid_bytes], first, prev_term).records:
                padding = f" after {rec.pad_bytes} bytes of padding" if rec.pad_bytes else ""
                report.lines.append(
                    f"    index {rec.log_index} term {rec.term} payload {len(rec.payload)} bytes{padding}"
                )
        prev_term = last_term
    verdict = "DAMAGE FOUND" if not report.ok else "torn tail, the rest ok" if report.torn_tail else "all CRCs ok"
    report.lines.append(f"{len(segments)} segments, {report.records} valid records, {verdict}")
    return report
