"""The listen port against strangers (eventstream/transport/listener.py): connections that owe
their hello are bounded in time, in number and in buffered bytes, and refusals are logged once
per host per minute; a real hello still gets through."""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from eventstream.transport import listener as listener_module
from eventstream.transport.connection import FramedConnection
from eventstream.transport.frames import HEADER
from eventstream.transport.hello import ROLE_CLIENT, Hello
from eventstream.transport.listener import Listener, RefusalLog

LIMIT = 1 << 20
pytestmark = pytest.mark.timeout(30)


def crc(data: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(data)


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body), crc(body)) + body


class Owner:
    def __init__(self) -> None:
        self.adopted: list[FramedConnection] = []
        self.frames: list[bytes] = []

    def adopt(self, conn: FramedConnection, hello: Hello) -> bool:
        self.adopted.append(conn)
        conn.rebind(lambda c, bodies: self.frames.extend(bodies), None)
        return True


@asynccontextmanager
async def listening() -> AsyncIterator[tuple[Listener, Owner, tuple[str, int]]]:
    listener, owner = Listener(crc, LIMIT), Owner()
    listener.set_owner(ROLE_CLIENT, owner)
    address = await listener.start("127.0.0.1", 0)
    try:
        yield listener, owner, address
    finally:
        await listener.stop()


async def closed_by_node(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except (ConnectionResetError, TimeoutError):
        return False


def test_a_connection_that_owes_its_hello_is_closed_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener_module, "HELLO_TIMEOUT_S", 0.2)

    async def scenario() -> None:
        async with listening() as (listener, owner, address):
            idle_r, idle_w = await asyncio.open_connection(*address)
            slow_r, slow_w = await asyncio.open_connection(*address)
            slow_w.write(frame(Hello(ROLE_CLIENT).encode())[:5])  # a trickle that never completes
            assert await closed_by_node(idle_r) and await closed_by_node(slow_r)
            assert listener.refused == 2 and owner.adopted == []
            idle_w.close()
            slow_w.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("announced", [0xFFFFFFFF, 1000])
def test_a_first_frame_longer_than_a_hello_is_refused_before_it_is_buffered(announced: int) -> None:
    async def scenario() -> None:
        async with listening() as (listener, owner, address):
            reader, writer = await asyncio.open_connection(*address)
            writer.write(HEADER.pack(announced, 0) + b"x" * 200)
            assert await closed_by_node(reader)
            assert listener.refused == 1 and owner.adopted == []
            writer.close()

    asyncio.run(scenario())


def test_a_hello_and_a_large_frame_in_one_write_both_arrive() -> None:
    async def scenario() -> None:
        async with listening() as (_, owner, address):
            reader, writer = await asyncio.open_connection(*address)
            big = b"b" * 200_000
            writer.write(frame(Hello(ROLE_CLIENT).encode()) + frame(big))
            for _ in range(100):
                if owner.frames:
                    break
                await asyncio.sleep(0.02)
            assert len(owner.adopted) == 1 and owner.frames == [big]
            writer.close()

    asyncio.run(scenario())


def test_past_the_pending_limit_the_oldest_stranger_makes_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener_module, "PENDING_MAX", 4)

    async def scenario() -> None:
        async with listening() as (listener, owner, address):
            strangers = [await asyncio.open_connection(*address) for _ in range(4)]
            await asyncio.sleep(0.1)
            reader, writer = await asyncio.open_connection(*address)  # a real client, late
            writer.write(frame(Hello(ROLE_CLIENT).encode()))
            assert await closed_by_node(strangers[0][0])
            for _ in range(100):
                if owner.adopted:
                    break
                await asyncio.sleep(0.02)
            assert len(owner.adopted) == 1 and listener.refused == 1
            for _, w in [*strangers, (reader, writer)]:
                w.close()

    asyncio.run(scenario())


def test_refusals_are_logged_once_per_host_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(interval_s=60.0)
    with caplog.at_level(logging.WARNING):
        assert log.note("10.0.0.9:4000", "bad hello magic", now=0.0)
        assert not any(log.note(f"10.0.0.9:{4001 + i}", "bad hello magic", now=1.0 + i) for i in range(50))
        assert log.note("10.0.0.8:4000", "no hello within 5 s", now=2.0)  # another host
        assert log.note("10.0.0.9:5000", "bad hello magic", now=61.0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "(50 more from 10.0.0.9 since last logged)" in lines[2]
