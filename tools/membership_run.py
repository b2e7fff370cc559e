"""Grow a loaded 3-node cluster to 5 voters and shrink it back, and time a learner's catch-up on a
big log: the figures docs/operations.md's membership runbooks rest on.

    python tools/membership_run.py --fill-gb 1.0 --phase-s 10 [--replication pool|inprocess]

1. Start 3 local nodes (wal_sync on) and fill the log with --fill-gb of 1000-byte events
   (esc-bench's native engine, batches of 1000).
2. Start a steady load (the cluster tests' writer threads, appending batches of --batch events) and measure
   events/s with 3 voters; add node 4 as a learner and time its catch-up (to within
   max_promotion_lag, then to lag 0); promote it; the same for node 5; measure with 5 voters;
   remove 5 and 4; measure with 3 voters again.
3. Check that every acknowledged event is stored once and every node holds one digest.

Prints one JSON object of figures. Bounded: --fill-gb at most 4, phases at most 60 s each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from eventstream.client import Client
from eventstream.errors import Refused
from eventstream.local_cluster import LocalCluster
from tests.cluster.harness import Writers


def fill(cluster: LocalCluster, gigabytes: float) -> dict[str, Any]:
    events = int(gigabytes * 1e9 / 1000)
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "esc_bench", "--cluster", ",".join(cluster.addresses), "--engine", "native",
         "--batch-size", "1000", "--payload-bytes", "1000", "--events", str(events), "--warmup", "0",
         "--clients", "2", "--concurrency", "4", "--time-limit", "900", "--report-interval", "30"],
        capture_output=True, text=True, timeout=1000)
    if out.returncode != 0:
        raise SystemExit(f"fill failed: {out.stderr.strip()[-500:]}")
    return {"events": events, "seconds": round(time.monotonic() - started, 1)}


def rate(load: Writers, start: float, end: float) -> int:
    return round(sum(1 for _, at in load.acknowledged() if start <= at < end) / (end - start))


def log_bytes(node_dir: Path) -> int:
    return sum(f.stat().st_size for f in (node_dir / "log").glob("*") if f.is_file())


def add_learner(cluster: LocalCluster, admin: Client, node_id: int, max_lag: int) -> dict[str, float]:
    node = cluster.add_node(node_id)
    admin.add_member(node_id, node.address)
    added = time.monotonic()
    within = None
    while True:
        row = admin.members()["members"][str(node_id)]
        lag = row.get("lag", max_lag + 1)
        now = time.monotonic()
        if within is None and lag <= max_lag:
            within = now - added
        if lag == 0 or now - added > 600:
            break
        time.sleep(0.05)
    caught_up = time.monotonic() - added
    while True:
        try:
            admin.promote_member(node_id)
            break
        except Refused:
            time.sleep(0.1)
    return {"to_promotable_s": round(within or caught_up, 2), "to_lag_0_s": round(caught_up, 2),
            "promoted_after_s": round(time.monotonic() - added, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fill-gb", type=float, default=1.0)
    parser.add_argument("--phase-s", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--replication", choices=("pool", "inprocess"), default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    args = parser.parse_args()
    if not 0 <= args.fill_gb <= 4 or not 1 <= args.phase_s <= 60:
        parser.error("--fill-gb must be in [0, 4] and --phase-s in [1, 60]")
    root = Path(tempfile.mkdtemp(prefix="esc-membership-"))
    options: dict[str, Any] = {"queue_count": 16}
    if args.replication:
        options["replication"] = args.replication
    cluster = LocalCluster(root, 3, spare=2, **options).start()
    figures: dict[str, Any] = {"replication": args.replication or "node default", "fill_gb": args.fill_gb}
    try:
        cluster.leader(30)
        if args.fill_gb > 0:
            figures["fill"] = fill(cluster, args.fill_gb)
        figures["log_bytes_node1"] = log_bytes(cluster.nodes[1].data_dir)
        phases: dict[str, float] = {}
        with Writers(cluster, args.threads, args.batch) as load, Client(cluster.addresses, timeout_s=60) as admin:
            time.sleep(2)

            def measure(name: str) -> None:
                start = time.monotonic()
                time.sleep(args.phase_s)
                phases[name] = rate(load, start, time.monotonic())

            measure("3 voters, before")
            start = time.monotonic()
            figures["learner_4"] = add_learner(cluster, admin, 4, 1000)
            figures["learner_5"] = add_learner(cluster, admin, 5, 1000)
            phases["while adding 4 and 5"] = rate(load, start, time.monotonic())
            measure("5 voters")
            start = time.monotonic()
            for node_id in (5, 4):
                admin.remove_member(node_id)
                cluster.retire(node_id)
            phases["while removing 5 and 4"] = rate(load, start, time.monotonic())
            measure("3 voters, after")
        figures["events_per_s"] = phases
        figures["load_errors"] = dict(load.errors)
        statuses = cluster.wait_converged(120)
        figures["one_digest"] = len({s["digest"] for s in statuses.values()}) == 1
        with Client(cluster.addresses, timeout_s=60) as reader:
            stored: Counter[bytes] = Counter()
            for queue in range(16):
                offset = 0
                while True:
                    events, offset = reader.read_page(queue, offset, 10_000)
                    if not events:
                        break
                    stored.update(e.event_id for e in events if e.event_id is not None and e.event_id.startswith(b"w"))
        acked = [event_id for event_id, _ in load.acknowledged()]
        figures["acked"] = len(acked)
        figures["acked_lost"] = sum(1 for i in acked if i not in stored)
        figures["stored_twice"] = sum(1 for n in stored.values() if n > 1)
    finally:
        cluster.stop()
        for node in cluster.retired.values():
            node.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            figures["data"] = str(root)
    print(json.dumps(figures, indent=2))
    return 0 if figures.get("acked_lost") == 0 and figures.get("stored_twice") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
