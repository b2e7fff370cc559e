"""FramedConnection.send_soon(): frames queued on many connections in one loop turn are written
by one callback, each connection's frames in order, over real loopback sockets."""

from __future__ import annotations

import asyncio

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
                lambda on_frames=on_frames: FramedConnection(crc32c, LIMIT, on_frames), "127.0.0.1", port)
            clients.append(proto)
        while len(accepted) < 3:
            await asyncio.sleep(0.01)

        scheduled: list[object] = []
        real_call_soon = loop.call_soon

        def counting_call_soon(callback, *args, **kwargs):  # type: ignore[no-untyped-def]
            scheduled.append(callback)
            return real_call_soon(callback, *args, **kwargs)

        loop.call_soon = counting_call_soon  # type: ignore[method-assign]
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
