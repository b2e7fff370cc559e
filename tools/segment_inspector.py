"""Prints what a SegmentLog directory holds, without opening (and so without repairing) it.

    python tools/segment_inspector.py DATA_DIR [--records]

One line per segment: file, first..last index, record count, bytes, terms seen, and where and
why the scan stopped if the segment does not end cleanly. --records lists every record. The
scan uses the pure-Python reference (eventstream/storage/wal_reference.py): an independent
second opinion on the native scanner that SegmentLog and `esc wal inspect` use. The report
itself is eventstream/storage/inspect.py.
"""

from __future__ import annotations

import argparse
import os
import sys

from eventstream.storage.inspect import inspect_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--records", action="store_true", help="list every record")
    arguments = parser.parse_args()
    if not os.path.isdir(arguments.directory):
        parser.error(f"{arguments.directory} is not a directory")
    report = inspect_log(arguments.directory, list_records=arguments.records, reference=True)
    print("\n".join(report.lines))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
