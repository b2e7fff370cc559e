"""The replication pool against a real follower-side PeerNetwork on loopback: entries ordered by
entry-ring position and full messages arrive intact and in order through a worker process,
consecutive orders merged; the follower's answers come back through the worker as the same
Messages; entries overwritten before a stopped worker copied them are never sent, and reported;
a SIGKILLed worker is restarted and reported (so the core re-probes); oversize messages take
the pair's link; stop() ends the workers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psutil
import pytest

from eventstream.raft.messages import Entry, Message, MessageType
from eventstream.replication import pool as pool_module
from eventstream.replication.pool import PoolPipeline, ReplicationPool
from eventstream.storage._crc32c import crc32c
from eventstream.transport.hello import ROLE_PEER, ROLE_REPLICATION
from eventstream.transport.listener import Listener
from eventstream.transport.peer_codec import decode_message, encode_message
from eventstream.transport.peers import PeerNetwork

pytestmark = pytest.mark.timeout(60)
LIMIT = 8 << 20


def append(index: int, *payloads: bytes, term: int = 3) -> Message:
    entries = [Entry(index + 1 + k, term, p) for k, p in enumerate(payloads)]
    return Message(MessageType.APPEND, to=2, sender=1, term=term, index=index, log_term=term, commit=index,
                   entries=entries)


class Follower:
    """Node 2: a listener whose peer network records every message; with answer=True it acks
    each AppendEntries (through its network, so on the worker's link) as a follower would."""

    def __init__(self, answer: bool = False) -> None:
        self.got: list[Message] = []
        self.answer = answer
        self.listener = Listener(crc32c, LIMIT)
        self.network: PeerNetwork | None = None
        self.address: tuple[str, int] = ("", 0)

    async def start(self, leader_address: tuple[str, int]) -> None:
        self.address = await self.listener.start("127.0.0.1", 0)
        self.network = PeerNetwork(2, {1: leader_address}, crc32c, LIMIT, self._on_messages)
        self.listener.set_owner(ROLE_PEER, self.network)
        self.listener.set_owner(ROLE_REPLICATION, self.network)
        self.network.start()

    def _on_messages(self, peer_id: int, bodies: list[bytes]) -> None:
        assert peer_id == 1
        messages = [decode_message(b) for b in bodies]
        self.got.extend(messages)
        if self.answer and self.network is not None:
            acks = [
                Message(MessageType.APPEND_RESPONSE, 1, 2, m.term, index=m.index + len(m.entries))
                for m in messages if m.type == MessageType.APPEND
            ]
            self.network.send(1, [encode_message(a) for a in acks])

    async def stop(self) -> None:
        assert self.network is not None
        await self.network.stop()
        await self.listener.stop()


async def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def pool_with_follower(**options: Any) -> AsyncIterator[tuple[ReplicationPool, PoolPipeline, Follower, list[int]]]:
    """A one-follower pool (leader 1, follower 2) and the re-probes it asked for; all stopped after."""
    leader_listener = Listener(crc32c, LIMIT)
    follower = Follower()
    await follower.start(await leader_listener.start("127.0.0.1", 0))
    reprobes: list[int] = []
    net = PeerNetwork(1, {2: follower.address}, crc32c, LIMIT, lambda p, b: None)
    pool = ReplicationPool(1, {2: follower.address}, net, reprobes.append, **options)
    try:
        yield pool, pool.start()[2], follower, reprobes
    finally:
        await pool.close()
        await follower.stop()
        await leader_listener.stop()


def appended(messages: list[Message]) -> list[tuple[int, int, bytes]]:
    return [(e.index, e.term, bytes(e.data)) for m in messages if m.type == MessageType.APPEND for e in m.entries]


def heartbeat(commit: int) -> Message:
    return Message(MessageType.HEARTBEAT, to=2, sender=1, term=3, commit=commit)


def test_orders_and_full_messages_arrive_in_order_merged_and_answers_come_back_as_messages() -> None:
    async def scenario() -> None:
        leader_listener = Listener(crc32c, LIMIT)
        leader_address = await leader_listener.start("127.0.0.1", 0)
        follower = Follower(answer=True)
        await follower.start(leader_address)
        leader_net = PeerNetwork(1, {2: follower.address}, crc32c, LIMIT, lambda p, b: None)
        leader_listener.set_owner(ROLE_PEER, leader_net)
        leader_net.start()
        await leader_net.wait_connected(2)
        connected: list[int] = []
        answers: list[Message] = []
        pool = ReplicationPool(1, {2: follower.address}, leader_net, connected.append,
                               on_responses=lambda peer, ms: answers.extend(ms), ring_bytes=1 << 20)
        pipeline = pool.start()[2]
        try:
            await wait_for(lambda: connected == [2])
            sent = [append(10 + 3 * k, b"a%d" % k, b"b" * (k * 13 % 900), b"") for k in range(400)]
            for k, msg in enumerate(sent):
                pipeline.submit(msg)
                if k % 50 == 49:
                    pipeline.submit(heartbeat(commit=k))
                if k % 10 == 9:
                    pipeline.flush()
            pipeline.flush()
            expected = appended(sent)
            await wait_for(lambda: len(appended(follower.got)) == len(expected))
            assert appended(follower.got) == expected
            # Orders that continue each other went out as fewer, larger AppendEntries, each one
            # consistent: prevLogIndex just before its first entry, the latest order's commit.
            appends = [m for m in follower.got if m.type == MessageType.APPEND]
            assert len(appends) < len(sent)
            for m in appends:
                assert m.index == m.entries[0].index - 1 and m.log_term == 3 and m.term == 3
                assert m.commit == m.entries[-1].index - 3  # append() sets commit = prev index
            # A full message keeps its place between orders: never merged across.
            seen = 0
            for m in follower.got:
                if m.type == MessageType.APPEND:
                    seen += len(m.entries)
                elif m.type == MessageType.HEARTBEAT:
                    assert seen == 3 * (m.commit + 1)
            assert sum(m.type == MessageType.HEARTBEAT for m in follower.got) == 8
            # Each entry went into the shared ring once; every APPEND was an order, not a copy.
            assert pool.entry_ring_stats()[0] == len(expected) and pipeline.orders == len(sent)
            assert pipeline.stats.dropped_window == 0

            # The follower's acks came back through the worker as the Messages it sent.
            last = expected[-1][0]
            await wait_for(lambda: bool(answers) and answers[-1].index == last)
            assert all(a.type == MessageType.APPEND_RESPONSE and (a.to, a.sender, a.term) == (1, 2, 3) and not a.reject
                       for a in answers)
            assert [a.index for a in answers] == sorted(a.index for a in answers)
            assert pool.usage()[2].answers_relayed == len(answers)

            # A full message larger than half the control ring goes over the pair's own link.
            big = Message(MessageType.SNAPSHOT, 2, 1, 3, index=7, log_term=3, data=b"x" * 600_000, done=True)
            pipeline.submit(big)
            pipeline.flush()
            await wait_for(lambda: follower.got[-1].type == MessageType.SNAPSHOT)
            assert bytes(follower.got[-1].data) == b"x" * 600_000
            assert leader_net.stats[2].messages_out == 1

            usage = pool.usage()[2]
            assert usage.cpu_seconds > 0 and usage.rss_bytes > 0 and usage.restarts == 0

            # SIGKILL the worker: the pool restarts it and reports the new link, which is what
            # makes the node re-probe the follower; traffic flows through the new worker.
            old_pid = pool.worker_pids()[2]
            os.kill(old_pid, signal.SIGKILL)
            await wait_for(lambda: pool.restarts[2] == 1 and connected == [2, 2])
            assert pool.worker_pids()[2] != old_pid
            pipeline.submit(append(5000, b"after restart"))
            pipeline.flush()
            await wait_for(lambda: appended(follower.got)[-1][2] == b"after restart")

            new_pid = pool.worker_pids()[2]
        finally:
            await pool.close()
        assert not pool.running
        assert not psutil.pid_exists(new_pid) or psutil.Process(new_pid).status() == psutil.STATUS_ZOMBIE
        await leader_net.stop()
        await leader_listener.stop()
        await follower.stop()

    asyncio.run(scenario())


def entry_data(index: int) -> bytes:
    return index.to_bytes(8, "little") * 125


def test_entries_overwritten_before_a_stopped_worker_copies_them_are_reported_and_never_sent() -> None:
    async def scenario() -> None:
        # 64 KiB of entries hold 64 of these 1000-byte entries; 80 are ordered while the
        # worker is stopped, and it may merge at most 8 per message.
        async with pool_with_follower(entry_ring_bytes=1 << 16, append_bytes_max=8000) as (
                pool, pipeline, follower, reprobes):
            await wait_for(lambda: reprobes == [2])
            worker = pool.worker_pids()[2]
            os.kill(worker, signal.SIGSTOP)
            try:
                for k in range(40):
                    pipeline.submit(append(2 * k, entry_data(2 * k + 1), entry_data(2 * k + 2)))
                    pipeline.flush()
                assert pipeline.orders == 40
            finally:
                os.kill(worker, signal.SIGCONT)
            await wait_for(lambda: pool.stale_orders[2] > 0 and len(reprobes) > 1)
            await wait_for(lambda: bool(follower.got) and follower.got[-1].entries[-1].index == 80)
            got = appended(follower.got)
            # Only entries that were still intact went out, each exactly as written.
            assert got == [(i, 3, entry_data(i)) for i in range(got[0][0], 81)]
            assert got[0][0] > 1
            assert pool.usage()[2].stale_orders == pool.stale_orders[2]

    asyncio.run(scenario())


def test_worker_without_a_follower_drops_reports_and_connects_once_it_appears() -> None:
    async def scenario() -> None:
        dropped: list[tuple[int, int]] = []
        connected: list[int] = []
        placeholder = Listener(crc32c, LIMIT)
        address = await placeholder.start("127.0.0.1", 0)
        await placeholder.stop()  # nothing listens on `address` now
        net = PeerNetwork(1, {2: address}, crc32c, LIMIT, lambda p, b: None)
        pool = ReplicationPool(1, {2: address}, net, connected.append, on_dropped=lambda p, n: dropped.append((p, n)))
        pipeline = pool.start()[2]
        try:
            await asyncio.sleep(0.3)
            pipeline.submit(append(1, b"lost"))
            pipeline.flush()
            await wait_for(lambda: sum(n for _, n in dropped) == 1)
            assert connected == []
            follower = Follower()
            follower.listener = Listener(crc32c, LIMIT)
            follower.address = await follower.listener.start(*address)
            follower.network = PeerNetwork(2, {1: ("127.0.0.1", 1)}, crc32c, LIMIT, follower._on_messages)
            follower.listener.set_owner(ROLE_REPLICATION, follower.network)
            await wait_for(lambda: connected == [2])
            # The core re-sends the same entry from its log; the entry ring still holds it.
            pipeline.submit(append(1, b"lost"))
            pipeline.flush()
            await wait_for(lambda: len(follower.got) == 1)
            assert bytes(follower.got[0].entries[0].data) == b"lost"
            await follower.listener.stop()
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_frozen_worker_holding_records_is_killed_and_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "STALL_S", 0.5)

    async def scenario() -> None:
        async with pool_with_follower() as (pool, pipeline, follower, connected):
            await wait_for(lambda: connected == [2])
            frozen = pool.worker_pids()[2]
            os.kill(frozen, signal.SIGSTOP)
            pipeline.submit(append(1, b"held by the frozen worker"))
            pipeline.flush()
            await asyncio.sleep(0.2)
            assert pool.restarts[2] == 0  # idle or busy is not stuck: only no progress for STALL_S
            await wait_for(lambda: pool.restarts[2] == 1 and connected == [2, 2])
            assert pool.worker_pids()[2] != frozen and not psutil.pid_exists(frozen)
            # The core re-sends the entry from its log after the re-probe.
            pipeline.submit(append(1, b"held by the frozen worker"))
            pipeline.flush()
            await wait_for(lambda: appended(follower.got) == [(2, 3, b"held by the frozen worker")])

    asyncio.run(scenario())


def test_a_worker_that_cannot_be_started_leaves_no_other_worker_running(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        nowhere = ("127.0.0.1", 9)
        net = PeerNetwork(1, {2: nowhere, 3: nowhere}, crc32c, LIMIT, lambda p, b: None)
        pool = ReplicationPool(1, {2: nowhere, 3: nowhere}, net, lambda p: None)
        started = []
        real_spawn = pool._spawn

        def spawn_or_fail(peer_id: int, address: tuple[str, int]) -> Any:
            if peer_id == 3:
                raise OSError(24, "Too many open files")
            worker = real_spawn(peer_id, address)
            started.append(worker)
            return worker

        monkeypatch.setattr(pool, "_spawn", spawn_or_fail)
        with pytest.raises(OSError, match="Too many open files"):
            pool.start()
        assert not pool.running and len(started) == 1
        # The stopped worker is reaped by the pool itself: no zombie waits for a close().
        await wait_for(lambda: started[0].proc.returncode is not None, timeout=10)
        await pool.close()

    asyncio.run(scenario())


def test_a_worker_asleep_on_its_empty_control_ring_is_woken_by_every_order() -> None:
    """Ping-pong through a real worker: each order is written only after the follower got the
    one before, so the worker has gone back to sleep every time. None may be found by the
    worker's poll timeout instead of its doorbell (a missed wake-up, which would cost POLL_S),
    and the worker's report must account for every order's wait."""
    rounds = 300

    async def scenario() -> None:
        async with pool_with_follower() as (pool, pipeline, follower, connected):
            await wait_for(lambda: connected == [2])
            for k in range(rounds):
                pipeline.submit(append(k, b"order %d" % k))
                pipeline.flush()
                await wait_for(functools.partial(lambda n: len(follower.got) == n, k + 1))
            await wait_for(lambda: pool.wake_counters()[2].orders_timed == rounds)
            wake = pool.wake_counters()[2]
            assert wake.missed_wakeups == 0
            assert wake.doorbell_wakes > rounds // 2 and wake.sleeps >= wake.doorbell_wakes
            usage = pool.usage()[2]
            assert (usage.missed_wakeups, usage.orders_timed) == (0, rounds)
            assert 0 < usage.order_wait_ms_p50 <= usage.order_wait_ms_p99

    asyncio.run(scenario())


def test_a_worker_whose_node_is_gone_exits_instead_of_spinning() -> None:
    """A SIGKILLed node cannot stop its workers; what each worker sees is end of file on its
    doorbell (nobody holds the write end any more). It must exit on it: EOF stays readable, so
    polling on would spin a core forever (two such orphans of a node killed while it started
    its workers ran at 67 % CPU each for two hours). Here the node's end is closed by hand."""
    async def scenario() -> None:
        async with pool_with_follower() as (pool, pipeline, follower, connected):
            await wait_for(lambda: connected == [2])
            worker = pool._pipelines[2].worker
            os.close(worker._doorbell)
            await wait_for(lambda: worker.proc.poll() is not None, timeout=5.0)
            assert worker.proc.returncode == 0
            worker._doorbell = os.open(os.devnull, os.O_WRONLY)  # for the pool's own close

    asyncio.run(scenario())


def test_a_started_pool_follows_a_membership_change() -> None:
    """A follower added while the pool runs gets a worker at once; a removed one's worker stops."""
    async def scenario() -> None:
        leader_listener = Listener(crc32c, LIMIT)
        follower = Follower()
        await follower.start(await leader_listener.start("127.0.0.1", 0))
        net = PeerNetwork(1, {}, crc32c, LIMIT, lambda p, b: None)
        pool = ReplicationPool(1, {}, net, lambda p: None)
        try:
            assert pool.start() == {}
            pipelines = pool.set_peers({2: follower.address})
            assert set(pipelines) == {2} and set(pool.worker_pids()) == {2}
            worker = psutil.Process(pool.worker_pids()[2])
            pipelines[2].submit(append(1, b"to the new member"))
            pipelines[2].flush()
            await wait_for(lambda: len(follower.got) == 1)
            assert bytes(follower.got[0].entries[0].data) == b"to the new member"
            assert pool.set_peers({}) == {} and pool.worker_pids() == {}
            await wait_for(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE)
            pool.stop()
            # Not leading: the membership is remembered, no worker starts until start().
            assert pool.set_peers({2: follower.address}) == {} and pool.worker_pids() == {}
            assert set(pool.start()) == {2}
        finally:
            await pool.close()
            await follower.stop()
            await leader_listener.stop()

    asyncio.run(scenario())
