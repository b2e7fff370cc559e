"""ClientServer: APPEND runs of one loop turn reach the service together, in arrival order."""

from __future__ import annotations

import asyncio
from typing import Any

from eventstream.transport.client_protocol import Op, Request, encode_request
from eventstream.transport.client_server import ClientServer, ClientSession
from eventstream.transport.hello import ROLE_CLIENT, Hello


class FakeConn:
    """The part of FramedConnection that ClientServer and ClientSession use."""

    def __init__(self, name: str) -> None:
        self.peername = name
        self.tag: Any = None
        self.closed = False
        self.sent: list[bytes] = []
        self.on_frames: Any = None

    def rebind(self, on_frames: Any, on_close: Any) -> None:
        self.on_frames = on_frames

    def send_soon(self, body: bytes) -> bool:
        self.sent.append(body)
        return True

    def close(self, reason: str) -> None:
        self.closed = True


class RecordingService:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def on_request(self, session: ClientSession, request: Request) -> None:
        self.calls.append(("request", session.conn.peername, request.op, request.request_id))

    def on_appends(self, runs: list[tuple[ClientSession, list[bytes]]]) -> None:
        self.calls.append(("appends", [(s.conn.peername, [int.from_bytes(b[1:9], "little") for b in run])
                                       for s, run in runs]))


def append(request_id: int) -> bytes:
    return encode_request(Op.APPEND, request_id, b"batch bytes are checked by the service")


def connect(server: ClientServer, name: str) -> FakeConn:
    conn = FakeConn(name)
    assert server.adopt(conn, Hello(ROLE_CLIENT, 0))  # type: ignore[arg-type]
    return conn


def test_appends_of_one_loop_turn_from_many_connections_reach_the_service_in_one_call() -> None:
    service = RecordingService()

    async def scenario() -> None:
        server = ClientServer(service)  # type: ignore[arg-type]
        a, b, c = (connect(server, name) for name in "abc")
        a.on_frames(a, [append(1), append(2)])
        b.on_frames(b, [append(7)])
        c.on_frames(c, [append(9)])
        assert service.calls == []  # gathered until the loop turn's read callbacks are done
        await asyncio.sleep(0)
        assert service.calls == [("appends", [("a", [1, 2]), ("b", [7]), ("c", [9])])]
        assert [s.in_flight for s in sorted(server.sessions, key=lambda s: s.conn.peername)] == [2, 1, 1]
        a.on_frames(a, [append(3)])
        await asyncio.sleep(0)
        assert service.calls[-1] == ("appends", [("a", [3])])

    asyncio.run(scenario())


def test_another_request_is_handled_after_the_appends_that_arrived_before_it() -> None:
    service = RecordingService()

    async def scenario() -> None:
        server = ClientServer(service)  # type: ignore[arg-type]
        a, b = connect(server, "a"), connect(server, "b")
        b.on_frames(b, [append(5)])
        a.on_frames(a, [append(1), encode_request(Op.STATUS, 2), append(3)])
        assert service.calls == [
            ("appends", [("b", [5]), ("a", [1])]),
            ("request", "a", Op.STATUS, 2),
        ]
        await asyncio.sleep(0)
        assert service.calls[-1] == ("appends", [("a", [3])])
        assert len(service.calls) == 3

    asyncio.run(scenario())


def test_a_failing_service_loses_the_runs_but_not_the_server() -> None:
    class Failing(RecordingService):
        def on_appends(self, runs: list[tuple[ClientSession, list[bytes]]]) -> None:
            raise RuntimeError("bug")

    service = Failing()

    async def scenario() -> None:
        server = ClientServer(service)  # type: ignore[arg-type]
        a = connect(server, "a")
        a.on_frames(a, [append(1)])
        await asyncio.sleep(0)
        a.on_frames(a, [encode_request(Op.STATUS, 2)])
        assert service.calls == [("request", "a", Op.STATUS, 2)]
        assert not a.closed

    asyncio.run(scenario())
