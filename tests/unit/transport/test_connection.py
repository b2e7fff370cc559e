"""FramedConnection.send_soon(): frames queued on many connections in one loop turn are written
by one callback, each connection's frames in order, over real loopback sockets."""

from __future__ import annotations

import asyncio
import functools

import pytest

from eventstream.storage import crc32c
from eventstream.transport.connection import FramedConnection, _flush_round

LIMIT = 1 << 20


def test_frames_queued_on_many_connections_in_one_turn_are_flushed_by_one_callback() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        accepted: list[FramedConnection] = []
        received: dict[int, list[bytes]] = {}
        all_in = asyncio.Event()

        def server_side() -> FramedConnection:
            conn = FramedConnection(crc32c, LIMIT, lambda c, b: None)
            accepted.append(conn)
            return conn

        server = await loop.create_server(server_side, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = []
        for k in range(3):
            def on_frames(conn: FramedConnection, bodies: list[bytes], k: int = k) -> None:
                received.setdefault(k, []).extend(bodies)
                if sum(len(v) for v in received.values()) == 9:
                    all_in.set()

            _, proto = await loop.create_connection(
                functools.partial(FramedConnection, crc32c, LIMIT, on_frames), "127.0.0.1", port)
            clients.append(proto)
        while len(accepted) < 3:
            await asyncio.sleep(0.01)

        scheduled: list[object] = []
        real_call_soon = loop.call_soon

        def counting_call_soon(callback, *args, **kwargs):  # type: ignore[no-untyped-def]
            scheduled.append(callback)
            return real_call_soon(callback, *args, **kwargs)

        loop.call_soon = counting_call_soon  # type: ignore[method-assign,assignment]
        try:
            by_port = sorted(accepted, key=lambda c: c.peername)
            for round_ in range(3):
                for conn in by_port:
                    assert conn.send_soon(b"frame %d" % round_)
            flushes = [cb for cb in scheduled if getattr(cb, "__name__", "") == "flush_all"]
            assert len(flushes) == 1  # one callback for three connections
        finally:
            loop.call_soon = real_call_soon  # type: ignore[method-assign]
        await asyncio.wait_for(all_in.wait(), 5)
        assert sorted(received.values()) == [[b"frame 0", b"frame 1", b"frame 2"]] * 3
        assert _flush_round(loop)._dirty == []
        # A connection closed after queueing is skipped; the others still get their frames.
        all_in.clear()
        received.clear()
        by_port[0].send_soon(b"late")
        by_port[1].send_soon(b"late")
        by_port[2].send_soon(b"late")
        by_port[0].abort("test")
        await asyncio.sleep(0.2)
        assert sorted(len(v) for v in received.values()) == [1, 1]
        for conn in clients:
            conn.close("done")
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


@pytest.mark.parametrize("runner", ["asyncio", "uvloop"])
def test_a_peer_that_does_not_read_is_not_read_until_it_does(runner: str) -> None:
    """A client connection (reads_wait_for_writes) stops being read while its answers pile up
    past the transport's high mark, and is read again once the client has taken them."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        accepted: list[FramedConnection] = []

        def server_side() -> FramedConnection:
            conn = FramedConnection(crc32c, LIMIT, lambda c, b: None)
            conn.reads_wait_for_writes = True
            accepted.append(conn)
            return conn

        server = await loop.create_server(server_side, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not accepted:
            await asyncio.sleep(0.01)
        conn = accepted[0]
        assert conn.transport is not None
        conn.transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        answer = b"a" * 65536
        sent = 0
        while conn.transport.is_reading() and sent < 64 << 20:  # the client reads nothing
            conn.write_now(answer)
            sent += len(answer)
            await asyncio.sleep(0)
        assert conn.paused and not conn.transport.is_reading() and sent < 64 << 20
        got = 0
        while got < sent:  # the client catches up: reading resumes
            got += len(await asyncio.wait_for(reader.read(1 << 20), 5))
        await asyncio.sleep(0.05)
        assert not conn.paused and conn.transport.is_reading()
        # A connection whose owner did not ask for it is read whatever it has to write.
        conn.reads_wait_for_writes = False
        while not conn.paused:
            conn.write_now(answer)
            await asyncio.sleep(0)
        assert conn.transport.is_reading()
        writer.close()
        conn.abort("done")
        server.close()
        await server.wait_closed()

    if runner == "uvloop":  # the node's loop (eventstream/cli.py)
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())
