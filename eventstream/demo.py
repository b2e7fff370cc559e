"""`esc demo`: the whole write path, with a leader crash, in front of the user.

A 3-node cluster of real processes takes appends from several clients. Midway the leader is
killed with SIGKILL; a new one is elected and the clients carry on (retrying with the same
event ids). The killed node is restarted and catches up. At the end every acknowledged event
must be readable exactly once and all three nodes must report the same state digest. The
summary says what was checked; the exit code is 0 only if every check held.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click

from eventstream.client import Client, EventIn
from eventstream.errors import EscError
from eventstream.local_cluster import LocalCluster

QUEUE_COUNT = 8


@dataclass
class Load:
    acked: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


def _writer(cluster: LocalCluster, worker: int, batch: int, load: Load) -> None:
    with Client(cluster.addresses, timeout_s=20.0) as client:
        k = 0
        while not load.stop.is_set():
            events = [
                EventIn(f"event {worker}-{k + j}".encode(), key=f"sensor-{(k + j) % 97}".encode(),
                        event_id=f"demo-{worker}-{k + j}".encode())
                for j in range(batch)
            ]
            started = time.perf_counter()
            try:
                results = client.append_batch(events)
            except EscError as exc:
                with load.lock:
                    load.errors[type(exc).__name__] += 1
                continue
            elapsed_ms = (time.perf_counter() - started) * 1000
            with load.lock:
                for ev, r in zip(events, results):
                    assert ev.event_id is not None
                    load.acked[ev.event_id] = (r.queue, r.offset)
                load.latencies_ms.append(elapsed_ms)
            k += batch


_TTY = sys.stdout.isatty()


def _say(text: str) -> None:
    # On a terminal the progress line is redrawn in place; elsewhere (a log) lines just follow.
    click.echo(("\r" + " " * 100 + "\r" if _TTY else "") + text)


def run_demo(duration_s: float = 20.0, clients: int = 4, batch: int = 10, keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="esc-demo-"))
    cluster = LocalCluster(root, 3, queue_count=QUEUE_COUNT)
    checks: list[tuple[str, bool, str]] = []
    load = Load()
    failover_s = float("nan")
    killed = 0
    try:
        _say(f"starting a 3-node cluster in {root} (wal_sync on: every ack is fdatasync'ed on a majority)")
        cluster.start()
        leader = cluster.leader(timeout=20)
        _say(f"node {leader} is the leader; {clients} clients append batches of {batch} events with ids")
        threads = [threading.Thread(target=_writer, args=(cluster, w, batch, load), daemon=True) for w in range(clients)]
        for t in threads:
            t.start()
        started = time.monotonic()
        kill_at, restart_at = duration_s * 0.35, duration_s * 0.6
        last_count, last_t = 0, started
        last_print = -1.0
        while (now := time.monotonic()) - started < duration_s:
            time.sleep(0.5)
            now = time.monotonic()
            with load.lock:
                count = len(load.acked)
                errs = sum(load.errors.values())
            rate = (count - last_count) / max(1e-9, now - last_t)
            last_count, last_t = count, now
            line = (f"  t={now - started:5.1f}s  acked {count:8d} events  {rate:9.0f} ev/s  "
                    f"leader {leader}  client errors {errs}")
            if _TTY:
                sys.stdout.write("\r" + line + "   ")
                sys.stdout.flush()
            elif int(now - started) % 2 == 0 and int(now - started) != int(last_print):
                click.echo(line)
                last_print = now - started
            if not killed and now - started >= kill_at:
                killed = leader
                _say(f"SIGKILL the leader, node {killed}")
                t0 = time.monotonic()
                cluster.nodes[killed].kill()
                leader = cluster.leader(timeout=15, exclude=(killed,))
                failover_s = time.monotonic() - t0
                _say(f"node {leader} elected leader {failover_s:.2f} s after the kill; clients carry on")
            if killed and not cluster.nodes[killed].alive and now - started >= restart_at:
                cluster.nodes[killed].start()
                _say(f"restarted node {killed}; it catches up from the leader's log")
        load.stop.set()
        for t in threads:
            t.join(30)
        _say("load stopped; waiting for all three nodes to apply the same log")
        statuses = cluster.wait_converged(60)
        digests = {k: s["digest"] for k, s in statuses.items()}
        applied = {k: s["applied"] for k, s in statuses.items()}
        with Client(cluster.addresses) as client:
            stored: Counter[bytes] = Counter()
            for q in range(QUEUE_COUNT):
                stored.update(e.event_id for e in client.read_to_end(q) if e.event_id is not None)
        lost = [i for i in load.acked if stored[i] == 0]
        doubled = [i for i, n in stored.items() if n > 1]
        elapsed = duration_s
        checks = [
            ("a new leader after the SIGKILL", failover_s == failover_s, f"{failover_s:.2f} s"),
            ("every acknowledged event readable", not lost, f"{len(load.acked)} acked, {len(lost)} missing"),
            ("no event stored twice", not doubled, f"{len(doubled)} ids twice"),
            ("three nodes, one state digest", len(set(digests.values())) == 1 and len(digests) == 3,
             ", ".join(f"node{k} {d[:12]}@{applied[k]}" for k, d in sorted(digests.items()))),
        ]
        lat = sorted(load.latencies_ms)
        p50 = lat[len(lat) // 2] if lat else float("nan")
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
        click.echo("")
        click.echo("summary")
        click.echo(f"  {'events acknowledged':<34} {len(load.acked)}")
        click.echo(f"  {'events/s (whole run, incl. failover)':<34} {len(load.acked) / elapsed:.0f}")
        click.echo(f"  {'append_batch latency p50 / p99':<34} {p50:.1f} ms / {p99:.1f} ms")
        click.echo(f"  {'failover (kill -> agreed leader)':<34} {failover_s:.2f} s")
        click.echo(f"  {'client errors seen (then retried)':<34} {dict(load.errors) or 0}")
        for name, ok, detail in checks:
            click.echo(f"  [{'ok' if ok else 'FAILED'}] {name}: {detail}")
        return 0 if all(ok for _, ok, _ in checks) else 1
    finally:
        load.stop.set()
        cluster.stop()
        if keep or not all(ok for _, ok, _ in checks):
            click.echo(f"cluster data and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
