"""Measure what wal_sync=false loses when every node loses power at once, over several runs.

    python -m tests.faults.loss_window [--runs 5]

Each run starts a 3-node cluster with every data dir on the power-loss filesystem
(docs/faults.md), loads it from three client threads, cuts every node's power under load,
brings the nodes back and counts the acknowledged events that are gone. Prints one line per run
and the spread. Needs root, /dev/fuse and libfuse3.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.faults.power_loss import lost_after_power_loss_of_all, power_loss_unavailable_reason


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 50:
        parser.error("--runs must be 1..50")
    reason = power_loss_unavailable_reason()
    if reason is not None:
        print(f"cannot measure here: {reason}", file=sys.stderr)
        return 2
    windows = []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="esc-loss-window-") as root:
            window = lost_after_power_loss_of_all(Path(root))
        windows.append(window)
        print(f"run {run}: {window.lost} of {window.acknowledged} acknowledged events lost; the oldest lost "
              f"was acknowledged {window.oldest_lost_s * 1000:.0f} ms before the last node lost power")
    lost = sorted(w.lost for w in windows)
    ages = sorted(w.oldest_lost_s * 1000 for w in windows)
    print(f"lost per run: min {lost[0]} median {lost[len(lost) // 2]} max {lost[-1]}; oldest lost acknowledged "
          f"at most {ages[-1]:.0f} ms before the cut (median {ages[len(ages) // 2]:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
