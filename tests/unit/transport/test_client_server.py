"""ClientServer: each read goes to the intake; other requests are served in arrival order."""

from __future__ import annotations

import asyncio
from typing import Any

from eventstream.storage import crc32c
from eventstream.storage.codec import encode_batch
from eventstream.transport._append_intake import (
    REFUSED_INVALID,
    REFUSED_NOT_ACCEPTING,
    AppendIntake,
)
from eventstream.transport.client_protocol import (
    Op,
    Request,
    Status,
    decode_response,
    encode_request,
)
from eventstream.transport.client_server import ClientServer, ClientSession, Refusal
from eventstream.transport.frames import HEADER, iter_frames
from eventstream.transport.hello import ROLE_CLIENT, Hello

SEEN_US = 1_790_000_000_123_456  # the leader's clock when it takes an entry


class FakeConn:
    """The part of FramedConnection that ClientServer and ClientSession use (no socket: every
    write goes through write_now)."""

    def __init__(self, name: str) -> None:
        self.peername = name
        self.tag: Any = None
        self.closed = False
        self.written = b""
        self.on_data: Any = None
        self.on_close: Any = None
        self.write_buffer_bytes = 0
        self.tls_session: Any = None

    def take_raw(self, on_data: Any, on_close: Any) -> None:
        self.on_data, self.on_close = on_data, on_close

    def socket_fd(self) -> int:
        return -1

    def write_now(self, data: bytes) -> None:
        self.written += data

    def close(self, reason: str) -> None:
        self.closed = True
        self.on_close(self, reason)

    def answers(self) -> list[tuple[Status, int]]:
        return [(r.status, r.request_id) for r in map(decode_response, iter_frames(self.written, crc32c, 1 << 20))]


class RecordingService:
    def __init__(self, server_intake: AppendIntake) -> None:
        self.intake = server_intake
        self.calls: list[Any] = []
        self.accepting = True

    def on_request(self, session: ClientSession, request: Request) -> None:
        # What the intake holds when a request is served shows the order kept.
        self.calls.append(("request", session.conn.peername, request.request_id, len(self.intake)))
        session.reply(encode_request(Op.STATUS, request.request_id))

    def accepting_appends(self, session: ClientSession) -> bool:
        return self.accepting

    def on_appends_queued(self) -> None:
        self.calls.append(("queued", len(self.intake)))

    def on_refused_appends(self, refusals: list[Refusal]) -> None:
        self.calls.append(("refused", [(s.conn.peername, rid, code) for s, rid, code, _ in refusals]))


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body), crc32c(body)) + body


def append(request_id: int) -> bytes:
    return frame(encode_request(Op.APPEND, request_id, encode_batch([(None, None, None, 1, b"x")])))


def setup() -> tuple[ClientServer, RecordingService]:
    intake = AppendIntake(1 << 20, 4, 1 << 30, (0.1,), 4)
    service = RecordingService(intake)
    return ClientServer(service, intake), service  # type: ignore[arg-type]


def connect(server: ClientServer, name: str) -> FakeConn:
    conn = FakeConn(name)
    assert server.adopt(conn, Hello(ROLE_CLIENT, 0))  # type: ignore[arg-type]
    assert getattr(conn, "reads_wait_for_writes", False)  # answers it does not read hold back its requests
    return conn


def test_appends_of_one_loop_turn_from_many_connections_are_handed_over_once() -> None:
    async def scenario() -> None:
        server, service = setup()
        a, b, c = (connect(server, name) for name in "abc")
        a.on_data(a, append(1) + append(2))
        b.on_data(b, append(7))
        c.on_data(c, append(9)[:10])
        c.on_data(c, append(9)[10:])
        assert service.calls == []  # the node is woken once the loop turn's reads are done
        await asyncio.sleep(0)
        assert service.calls == [("queued", 4)]
        entry = server.intake.take(100, 1 << 20, SEEN_US)
        assert entry is not None
        _, waiters = entry
        assert waiters.request_ids() == [1, 2, 7, 9]
        assert [s.in_flight for s in sorted(server.sessions, key=lambda s: s.conn.peername)] == [2, 1, 1]

    asyncio.run(scenario())


def test_another_request_is_served_after_the_appends_before_it_and_before_those_after() -> None:
    async def scenario() -> None:
        server, service = setup()
        a = connect(server, "a")
        a.on_data(a, append(1) + frame(encode_request(Op.STATUS, 2)) + append(3))
        assert service.calls == [("request", "a", 2, 1)]
        assert len(server.intake) == 2
        await asyncio.sleep(0)
        assert a.answers() == [(Op.STATUS, 2)]  # its reply was written at the end of the turn

    asyncio.run(scenario())


def test_refused_appends_and_the_in_flight_limit_are_answered_in_order() -> None:
    async def scenario() -> None:
        server, service = setup()
        a = connect(server, "a")
        service.accepting = False
        bad = frame(encode_request(Op.APPEND, 5, b"junk"))
        a.on_data(a, append(1) + bad)
        assert service.calls == [("refused", [("a", 1, REFUSED_NOT_ACCEPTING), ("a", 5, REFUSED_INVALID)])]
        service.accepting = True
        a.on_data(a, append(2) + append(3) + append(4) + append(6) + append(8))
        await asyncio.sleep(0)
        # Refused requests count as in flight until the service answers them (this one does
        # not): 1 and 5, then 2 and 3 fill the limit of 4, so 4, 6 and 8 are answered Overloaded.
        assert a.answers() == [(Status.OVERLOADED, 4), (Status.OVERLOADED, 6), (Status.OVERLOADED, 8)]

    asyncio.run(scenario())


def test_a_protocol_error_closes_the_connection_after_its_queued_answers() -> None:
    async def scenario() -> None:
        server, service = setup()
        a, b = connect(server, "a"), connect(server, "b")
        a.on_data(a, frame(encode_request(Op.STATUS, 1)) + frame(b"\x63" + bytes(8)) + append(2))
        assert a.closed and a.answers() == [(Op.STATUS, 1)]
        assert server.protocol_errors == 1 and len(server.intake) == 0
        b.on_data(b, b"\x05\x00\x00\x00\x00\x00\x00\x00xxxxx")  # bad CRC
        assert b.closed and not server.sessions
        await asyncio.sleep(0)

    asyncio.run(scenario())


def test_frames_read_before_the_connection_was_adopted_come_first() -> None:
    from eventstream.transport.connection import FramedConnection

    async def scenario() -> None:
        server, service = setup()
        conn = FramedConnection(crc32c, 1 << 20, lambda c, bodies: None)
        stream = append(1) + append(2) + append(3)
        bodies = conn._decoder.feed(stream[: len(append(1)) * 2 + 5])
        assert len(bodies) == 2
        assert server.adopt(conn, Hello(ROLE_CLIENT, 0))
        conn.deliver(bodies)
        conn.data_received(stream[len(append(1)) * 2 + 5:])
        entry = server.intake.take(100, 1 << 20, SEEN_US)
        assert entry is not None
        _, waiters = entry
        assert waiters.request_ids() == [1, 2, 3]
        await asyncio.sleep(0)

    asyncio.run(scenario())
