"""What one follower's replication costs the leader's own thread, per pipeline; and what
one AppendEntries round trip costs the leader, the pool's worker and the follower.

The cluster comparison (test_bench_replication.py) runs every node, the clients and the workers
on the same two cores, so it cannot show what the pool is for: taking work off the leader's
thread when that thread is the bottleneck. This measures that work directly. The leader side
(this process) sends N AppendEntries to a follower sink in another process, through
InProcessPipeline or through PoolPipeline and its worker, and reads CPU time: this process's
(the control plane's share) and the worker's. The sink counts what arrived; nothing may be lost.

The round-trip rows send one AppendEntries at a time and wait for the sink's answer before the
next, as a leader at batch 100 does on this machine (its next order almost never arrives while
an answer is outstanding): every message then pays the wake-ups at both ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from eventstream.raft.messages import Entry, Message, MessageType
from eventstream.replication.pipeline import FollowerPipeline, InProcessPipeline
from eventstream.replication.pool import ReplicationPool
from eventstream.storage._crc32c import crc32c
from eventstream.transport.hello import ROLE_PEER
from eventstream.transport.listener import Listener
from eventstream.transport.peers import PeerNetwork

LIMIT = 64 << 20

_SINK = textwrap.dedent(
    """
    import asyncio, sys
    from eventstream.storage._crc32c import crc32c
    from eventstream.transport.hello import ROLE_PEER, ROLE_REPLICATION
    from eventstream.transport.listener import Listener
    from eventstream.transport.peers import PeerNetwork
    from eventstream.raft.messages import Message, MessageType
    from eventstream.transport.peer_codec import decode_message, encode_message

    async def main():
        # Entries received (a worker may merge AppendEntries), or messages for heartbeats.
        count = [0]
        answer = sys.argv[1:] == ["answer"]

        def on_messages(peer, bodies):
            for body in bodies:
                m = decode_message(body)
                count[0] += len(m.entries) or 1
                if answer and m.entries:
                    ack = Message(MessageType.APPEND_RESPONSE, 1, 2, m.term, index=m.entries[-1].index)
                    net.send(1, [encode_message(ack)])

        listener = Listener(crc32c, 64 << 20)
        port = (await listener.start("127.0.0.1", 0))[1]
        net = PeerNetwork(2, {1: ("127.0.0.1", 1)}, crc32c, 64 << 20, on_messages)
        listener.set_owner(ROLE_PEER, net)
        listener.set_owner(ROLE_REPLICATION, net)
        net.start()
        print(port, flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            print(count[0], flush=True)

    asyncio.run(main())
    """
)


class Sink:
    def __init__(self, answer: bool = False) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _SINK, *(["answer"] if answer else [])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def received(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _messages(count: int, entries: int, entry_bytes: int) -> list[Message]:
    """count messages as a leader sends them: each carries the next entries of its log (so the
    pool writes each entry into its shared ring once), or heartbeats when entries is 0."""
    if not entries:
        return [Message(MessageType.HEARTBEAT, to=2, sender=1, term=5, commit=999)] * count
    data = b"e" * entry_bytes
    return [
        Message(MessageType.APPEND, to=2, sender=1, term=5, index=1000 + i * entries, log_term=5, commit=999,
                entries=[Entry(1001 + i * entries + k, 5, data) for k in range(entries)])
        for i in range(count)
    ]


@dataclass
class Leader:
    """This process as the leader of one follower (the sink), replicating through `pipeline`."""
    pipeline: FollowerPipeline
    pool: ReplicationPool
    net: PeerNetwork
    worker: psutil.Process | None  # the pool's worker process, in pool mode


@contextlib.asynccontextmanager
async def _leader(mode: str, sink: Sink, on_answers: Callable[[int], None] = lambda n: None) -> AsyncIterator[Leader]:
    """on_answers(n): n answers from the follower arrived (from the peer link or the worker)."""
    listener = Listener(crc32c, LIMIT)
    await listener.start("127.0.0.1", 0)
    net = PeerNetwork(1, {2: ("127.0.0.1", sink.port)}, crc32c, LIMIT, lambda p, bodies: on_answers(len(bodies)))
    listener.set_owner(ROLE_PEER, net)
    net.start()
    await net.wait_connected(2)
    connected: list[int] = []
    pool = ReplicationPool(1, {2: ("127.0.0.1", sink.port)}, net, connected.append,
                           on_responses=lambda p, ms: on_answers(len(ms)))
    try:
        if mode == "pool":
            pipeline: FollowerPipeline = pool.start()[2]
            while not connected:
                await asyncio.sleep(0.01)
            yield Leader(pipeline, pool, net, psutil.Process(pool.worker_pids()[2]))
        else:
            yield Leader(InProcessPipeline(2, net), pool, net, None)
    finally:
        await pool.close()
        await net.stop()
        await listener.stop()
        sink.close()


def _cpu_s(process: psutil.Process | None) -> float:
    return sum(process.cpu_times()[:2]) if process is not None else 0.0


async def _measure(mode: str, messages: list[Message]) -> dict[str, Any]:
    count = len(messages)
    units = sum(len(m.entries) or 1 for m in messages)
    sink = Sink()
    async with _leader(mode, sink) as leader:
        pipeline, pool, net, worker = leader.pipeline, leader.pool, leader.net, leader.worker
        # Entries: at most the node's default max_inflight (64) orders waiting for the worker, as
        # the core's window allows; further ahead, the worker would be lapped in the entry ring
        # and refuse its orders as stale (the core would re-probe; here nothing does).
        # Heartbeats carry no entries: half the control ring, as before the entry ring.
        backlog_max = 64 * 96 if messages[0].entries else pool.ring_bytes // 2
        worker_before = _cpu_s(worker)
        cpu_before = time.process_time()
        started = time.perf_counter()
        for i, message in enumerate(messages):
            pipeline.submit(message)
            pipeline.flush()
            # Back-pressure the way a leader meets it: yield to the loop when the link or the
            # ring is backed up, so neither path drops what it cannot take yet.
            if mode == "pool":
                while pool.backlog_bytes(2) > backlog_max:
                    await asyncio.sleep(0.0005)
            elif i % 8 == 7:
                await asyncio.sleep(0)
                while net._conns[2].write_buffer_bytes > 4 << 20:
                    await asyncio.sleep(0.0005)
        # Drained: the kernel has every byte (inprocess) or the worker has taken every record.
        while (pool.backlog_bytes(2) if mode == "pool" else net._conns[2].write_buffer_bytes) > 0:
            await asyncio.sleep(0.0005)
        leader_cpu = time.process_time() - cpu_before
        while (received := sink.received()) < units and time.perf_counter() - started < 60:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        worker_cpu = _cpu_s(worker) - worker_before
        return {
            "mode": mode, "messages": count, "units": units, "received": received, "seconds": round(elapsed, 3),
            "leader_us_per_message": round(leader_cpu / count * 1e6, 2),
            "worker_us_per_message": round(worker_cpu / count * 1e6, 2),
            "messages_per_s": round(count / elapsed),
        }


def _both_modes(benchmark: Any, measure: Callable[[str, list[Message]], Coroutine[Any, Any, dict[str, Any]]],
                messages: list[Message]) -> dict[str, dict[str, Any]]:
    def both() -> dict[str, dict[str, Any]]:
        return {mode: asyncio.run(measure(mode, messages)) for mode in ("inprocess", "pool")}

    result: dict[str, dict[str, Any]] = benchmark.pedantic(both, rounds=1, iterations=1)
    return result


CASES = {
    "heartbeat": (100_000, 0, 0),
    "1_entry_13KB": (30_000, 1, 13_000),  # one batch of 100 events of ~100 B
    "10_entries_13KB": (5_000, 10, 13_000),
}


@pytest.mark.parametrize("case", list(CASES))
def test_leader_thread_cost_per_message_inprocess_vs_pool(benchmark: Any, case: str) -> None:
    count, entries, entry_bytes = CASES[case]
    messages = _messages(count, entries, entry_bytes)

    result = _both_modes(benchmark, _measure, messages)
    for mode, figures in result.items():
        assert figures["received"] == figures["units"], f"{mode}: the sink got {figures['received']} of {figures['units']}"
        benchmark.extra_info[mode] = figures
    benchmark.extra_info["leader_cpu_pool_over_inprocess"] = round(
        result["pool"]["leader_us_per_message"] / result["inprocess"]["leader_us_per_message"], 3)


async def _round_trips(mode: str, messages: list[Message]) -> dict[str, Any]:
    count = len(messages)
    sink = Sink(answer=True)
    follower = psutil.Process(sink.proc.pid)
    answers = [0]
    answered = asyncio.Event()

    def on_answers(n: int) -> None:
        answers[0] += n
        answered.set()

    async with _leader(mode, sink, on_answers) as leader:
        worker_before, follower_before = _cpu_s(leader.worker), _cpu_s(follower)
        cpu_before = time.process_time()
        started = time.perf_counter()
        for message in messages:
            target = answers[0] + 1
            leader.pipeline.submit(message)
            leader.pipeline.flush()
            while answers[0] < target:
                await asyncio.wait_for(answered.wait(), 10)
                answered.clear()
        elapsed = time.perf_counter() - started
        leader_cpu = time.process_time() - cpu_before
        worker_cpu = _cpu_s(leader.worker) - worker_before
        follower_cpu = _cpu_s(follower) - follower_before
        return {
            "mode": mode, "round_trips": count, "answers": answers[0], "seconds": round(elapsed, 3),
            "leader_us_per_round_trip": round(leader_cpu / count * 1e6, 1),
            "worker_us_per_round_trip": round(worker_cpu / count * 1e6, 1),
            "follower_us_per_round_trip": round(follower_cpu / count * 1e6, 1),
            "round_trips_per_s": round(count / elapsed),
        }


ROUND_TRIP_CASES = {
    "1_entry_13KB": (20_000, 13_000),  # batch 100: one entry of 100 events of ~100 B per message
    "1_entry_130KB": (8_000, 130_000),  # batch 1000
}


@pytest.mark.parametrize("case", list(ROUND_TRIP_CASES))
def test_cpu_per_append_round_trip_inprocess_vs_pool(benchmark: Any, case: str) -> None:
    count, entry_bytes = ROUND_TRIP_CASES[case]
    messages = _messages(count, 1, entry_bytes)

    result = _both_modes(benchmark, _round_trips, messages)
    for mode, figures in result.items():
        assert figures["answers"] == figures["round_trips"], f"{mode}: {figures['answers']} answers"
        benchmark.extra_info[mode] = figures
