"""Prints what a state machine snapshot folder holds and, with --verify, whether it restores.

    python tools/snapshot_inspector.py SNAPSHOT_FOLDER [--verify]

The folder is `<state dir>/snapshots/snap-<index>`. Prints the last included index and term,
the configuration, one line per queue (retention floor, next offset, segments, bytes) and the
dedup entry count. --verify restores the snapshot into a temporary state directory (every record
CRC, the dedup image and the digest are checked) and reports the first problem; the snapshot
itself is never modified. Exit status: 0 fine, 1 damaged, 2 not a snapshot folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from eventstream.state import SnapshotError, StateMachine
from eventstream.state.snapshot import read_manifest


def describe(folder: str) -> None:
    manifest = read_manifest(folder)
    print(f"snapshot: last index {manifest['last_index']}, last term {manifest['last_term']}")
    print(f"raft: {json.dumps(manifest.get('raft', {}), sort_keys=True)}")
    print(f"config: {json.dumps(manifest['config'], sort_keys=True)}")
    for queue in manifest["queues"]:
        segments = queue["segments"]
        floor = segments[0]["base_offset"] if segments else queue["next_offset"]
        total = sum(s["bytes"] for s in segments)
        print(
            f"queue {queue['queue']}: offsets [{floor}, {queue['next_offset']}), "
            f"{len(segments)} segments, {total} bytes"
        )
    print(f"dedup: {manifest['dedup']['count']} remembered ids")
    print(f"digest: {manifest['digest']}")


def verify(folder: str) -> None:
    with tempfile.TemporaryDirectory(prefix="esc-snapshot-verify-") as scratch:
        machine = StateMachine.open(scratch)
        try:
            machine.restore(folder)
            print(f"verify: ok, restored state digest {machine.digest()}")
        finally:
            machine.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a snapshots/snap-<index> folder")
    parser.add_argument("--verify", action="store_true", help="restore it into a scratch dir")
    args = parser.parse_args(argv)
    try:
        describe(args.folder)
    except SnapshotError as e:
        print(f"not a usable snapshot folder: {e}", file=sys.stderr)
        return 2
    if args.verify:
        try:
            verify(args.folder)
        except SnapshotError as e:
            print(f"verify: DAMAGED: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
