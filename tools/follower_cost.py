"""CPU a follower node spends per AppendEntries, measured alone.

The cluster benchmark runs three nodes, the load generator and the workers on the same two
cores, so a change to the follower's path shows there only through a lot of noise. This starts
one real `esc node` process (node 2 of a two-voter cluster {1, 2}) and plays its leader, node 1,
from this process: it sends N AppendEntries, each carrying one SET_EVENT entry of --events
events with fresh ids, the commit index riding along as the node's leader sends it, with
--window of them in flight, and reads the follower's CPU time (user and system, from /proc)
over the run. Every entry must be acknowledged in order; anything else is an error.

    python tools/follower_cost.py --entries 3000 --events 34 [--no-wal-sync] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

from eventstream.local_cluster import free_port_block
from eventstream.raft.messages import Entry, Message, MessageType
from eventstream.state import encode_set_event
from eventstream.storage import crc32c
from eventstream.storage.codec import Event
from eventstream.transport.peer_codec import decode_message, encode_message
from eventstream.transport.peers import PeerNetwork

TERM = 7


def entry_data(events: int, seed: int) -> bytes:
    payload = os.urandom(100)
    return encode_set_event([
        Event(os.urandom(16), b"key-%d" % ((seed * events + j) % 1000), None, 1_700_000_000_000_000, payload)
        for j in range(events)
    ])


async def drive(port_leader: int, port_follower: int, entries: list[bytes], window: int,
                pid: int) -> tuple[float, float, float]:
    acked = asyncio.Queue[int]()

    def on_messages(peer_id: int, bodies: list[bytes]) -> None:
        for body in bodies:
            m = decode_message(body)
            if m.type == MessageType.APPEND_RESPONSE:
                if m.reject:
                    raise RuntimeError(f"follower rejected: {m}")
                acked.put_nowait(m.index)

    net = PeerNetwork(1, {2: ("127.0.0.1", port_follower)}, crc32c, 64 << 20, on_messages)
    net.start()
    await asyncio.wait_for(net.wait_connected(2), 30)

    def send(index: int, commit: int) -> None:
        prev_term = TERM if index > 1 else 0
        msg = Message(MessageType.APPEND, 2, 1, TERM, index=index - 1, log_term=prev_term,
                      entries=[Entry(index, TERM, entries[index - 1])], commit=commit)
        net.send(2, [encode_message(msg)])

    proc = psutil.Process(pid)
    # Warm-up: the first tenth is not measured (the follower steps down to our term, opens files).
    warm = max(1, len(entries) // 10)
    matched = 0
    sent = 0
    cpu0 = None
    t0 = 0.0
    while matched < len(entries):
        while sent < len(entries) and sent - matched < window:
            sent += 1
            send(sent, matched)
        index = await asyncio.wait_for(acked.get(), 30)
        matched = max(matched, index)
        if cpu0 is None and matched >= warm:
            c = proc.cpu_times()
            cpu0 = (c.user, c.system)
            t0 = time.perf_counter()
            measured_from = matched
    c = proc.cpu_times()
    elapsed = time.perf_counter() - t0
    await net.stop()
    assert cpu0 is not None
    n = len(entries) - measured_from
    return (c.user - cpu0[0]) / n * 1e6, (c.system - cpu0[1]) / n * 1e6, n / elapsed


def run_once(args: argparse.Namespace, entries: list[bytes]) -> tuple[float, float, float]:
    data_dir = tempfile.mkdtemp(prefix="esc-follower-cost-")
    p1 = free_port_block(2)
    p2 = p1 + 1
    cmd = [sys.executable, "-m", "eventstream.cli", "node", "--id", "2", "--listen", f"127.0.0.1:{p2}",
           "--peers", f"1=127.0.0.1:{p1},2=127.0.0.1:{p2}", "--data-dir", data_dir,
           "--election-ticks", "1000", "--wal-sync" if args.wal_sync else "--no-wal-sync",
           "--replication", "inprocess"]
    node = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        return asyncio.run(drive(p1, p2, entries, args.window, node.pid))
    finally:
        node.terminate()
        try:
            node.wait(10)
        except subprocess.TimeoutExpired:
            node.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=3000)
    ap.add_argument("--events", type=int, default=34)
    ap.add_argument("--window", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--wal-sync", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    entries = [entry_data(args.events, i) for i in range(args.entries)]
    for _ in range(args.repeat):
        user, system, rate = run_once(args, entries)
        print(f"follower CPU per entry: {user + system:7.1f} us (user {user:6.1f}, system {system:6.1f}); "
              f"{user / args.events + system / args.events:5.2f} us per event; {rate:,.0f} entries/s")


if __name__ == "__main__":
    main()
