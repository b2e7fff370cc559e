"""Prints what a SegmentLog directory holds, without opening (and so without repairing) it.

    python tools/segment_inspector.py DATA_DIR [--records]

One line per segment: file, first..last index, record count, bytes, terms seen, and where and
why the scan stopped if the segment does not end cleanly. --records lists every record. The
scan uses the pure-Python reference (eventstream/storage/wal_reference.py): an independent
second opinion on the native scanner that SegmentLog uses.
"""

from __future__ import annotations

import argparse
import os
import sys

from eventstream.storage.hard_state import HARD_STATE_FILE, HardState
from eventstream.storage.segment_log import META_FILE, SEGMENT_SUFFIX
from eventstream.storage.wal_reference import WAL_HEADER_BYTES, scan


def inspect(directory: str, show_records: bool) -> int:
    """Prints the report; returns 1 when a segment other than the last is damaged."""
    names = sorted(n for n in os.listdir(directory) if n.endswith(SEGMENT_SUFFIX))
    if os.path.exists(os.path.join(directory, META_FILE)):
        print(f"{META_FILE}: present (the log was compacted)")
    if os.path.exists(os.path.join(directory, HARD_STATE_FILE)):
        print(f"{HARD_STATE_FILE}: {HardState.load(directory)}")
    status = 0
    for position, name in enumerate(names):
        with open(os.path.join(directory, name), "rb") as file:
            data = file.read()
        first = int(name[: -len(SEGMENT_SUFFIX)])
        result = scan(data, first)
        terms = sorted({record.term for record in result.records})
        last = first + len(result.records) - 1
        print(f"{name}: index {first}..{last}, {len(result.records)} records, "
              f"{len(data)} bytes, terms {terms[:1] + terms[-1:] if terms else []}")
        if result.valid_bytes != len(data):
            where = "tail (recovery cuts it)" if position == len(names) - 1 else "DAMAGE"
            print(f"  {where}: offset {result.valid_bytes}: {result.reason}; "
                  f"{len(data) - result.valid_bytes} bytes after it")
            if position != len(names) - 1:
                status = 1
        if show_records:
            offset = 0
            for record in result.records:
                print(f"  offset {offset}: index {record.log_index} term {record.term} "
                      f"payload {len(record.payload)} bytes")
                offset += WAL_HEADER_BYTES + len(record.payload)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--records", action="store_true", help="list every record")
    arguments = parser.parse_args()
    if not os.path.isdir(arguments.directory):
        parser.error(f"{arguments.directory} is not a directory")
    sys.exit(inspect(arguments.directory, arguments.records))


if __name__ == "__main__":
    main()
