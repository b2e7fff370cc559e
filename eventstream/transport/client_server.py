"""Server side of the client protocol: decodes requests and hands them to the node's service.

The service answers through ClientSession.reply() whenever it is ready (an append is answered
after commit and apply), so a slow request never holds up the ones behind it on the same
connection. Per connection, requests in flight are bounded; past the bound the server answers
Overloaded at once instead of queueing without limit.

APPEND requests, the bulk of the traffic, reach the service together: every run that arrived on
any connection during one turn of the event loop is handed over in one on_appends() call, so
64 clients with one request each cost the leader one native check and one hand-over, not 64.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from eventstream.transport.client_protocol import (
    REQUEST_HEADER_BYTES,
    Op,
    ProtocolError,
    Request,
    Status,
    decode_request,
    encode_error,
)
from eventstream.transport.connection import FramedConnection
from eventstream.transport.hello import ROLE_CLIENT, Hello

log = logging.getLogger(__name__)

IN_FLIGHT_PER_CONNECTION_MAX = 4096
_APPEND_OP = bytes([Op.APPEND])


class ClientService(Protocol):
    def on_request(self, session: ClientSession, request: Request) -> None: ...

    def on_appends(self, runs: list[tuple[ClientSession, list[bytes]]]) -> None:
        """Runs of APPEND request bodies, whole (op byte and request id included), each run from
        one connection in arrival order: all that arrived during one loop turn."""


class ClientSession:
    """One client connection. reply() may be called once per request, from any callback."""

    __slots__ = ("conn", "in_flight", "requests", "_server")

    def __init__(self, server: ClientServer, conn: FramedConnection) -> None:
        self._server = server
        self.conn = conn
        self.in_flight = 0
        self.requests = 0

    def reply(self, body: bytes) -> None:
        self.in_flight -= 1
        if not self.conn.closed:
            self.conn.send_soon(body)

    def reply_framed(self, frame: bytes) -> None:
        """Answer with a frame already encoded whole (header and CRC included)."""
        self.in_flight -= 1
        if not self.conn.closed:
            self.conn.send_framed_soon(frame)

    def reply_error(self, status: Status, request_id: int, message: str, leader_id: int = 0) -> None:
        self.reply(encode_error(status, request_id, message, leader_id))

    @property
    def closed(self) -> bool:
        return self.conn.closed


class ClientServer:
    def __init__(self, service: ClientService) -> None:
        self._service = service
        self.sessions: set[ClientSession] = set()
        self.protocol_errors = 0
        self._runs: list[tuple[ClientSession, list[bytes]]] = []

    def adopt(self, conn: FramedConnection, hello: Hello) -> bool:
        if hello.role != ROLE_CLIENT:
            return False
        session = ClientSession(self, conn)
        conn.tag = session
        conn.rebind(self._on_frames, self._on_close)
        self.sessions.add(session)
        return True

    def _on_close(self, conn: FramedConnection, reason: str) -> None:
        if isinstance(conn.tag, ClientSession):
            self.sessions.discard(conn.tag)

    def _on_frames(self, conn: FramedConnection, bodies: list[bytes]) -> None:
        session = conn.tag
        assert isinstance(session, ClientSession)
        # APPENDs are gathered for flush_appends(); any other request is handled alone, after
        # the appends that arrived before it have been handed over, keeping arrival order.
        run: list[bytes] = []
        for body in bodies:
            if (body[:1] == _APPEND_OP and len(body) >= REQUEST_HEADER_BYTES
                    and session.in_flight + len(run) < IN_FLIGHT_PER_CONNECTION_MAX):
                run.append(body)
                continue
            if run:
                self._gather(session, run)
                run = []
            self.flush_appends()
            if not self._one(conn, session, body):
                return
        if run:
            self._gather(session, run)

    def _gather(self, session: ClientSession, run: list[bytes]) -> None:
        session.requests += len(run)
        session.in_flight += len(run)
        if not self._runs:
            # Runs after every read callback of this loop turn (the loop's ready queue).
            asyncio.get_running_loop().call_soon(self.flush_appends)
        self._runs.append((session, run))

    def flush_appends(self) -> None:
        """Hand every gathered APPEND run to the service now."""
        runs = self._runs
        if not runs:
            return
        self._runs = []
        try:
            self._service.on_appends(runs)
        except Exception:  # a bug must not take the node down; these requests time out
            log.exception("%d runs of APPEND requests failed", len(runs))

    def _one(self, conn: FramedConnection, session: ClientSession, body: bytes) -> bool:
        try:
            request = decode_request(body)
        except ProtocolError as exc:
            self.protocol_errors += 1
            log.warning("closing client %s: %s", conn.peername, exc)
            conn.close(f"protocol error: {exc}")
            return False
        session.requests += 1
        session.in_flight += 1
        if session.in_flight > IN_FLIGHT_PER_CONNECTION_MAX:
            session.reply_error(
                Status.OVERLOADED,
                request.request_id,
                f"more than {IN_FLIGHT_PER_CONNECTION_MAX} requests in flight on one connection",
            )
            return True
        try:
            self._service.on_request(session, request)
        except ProtocolError as exc:
            session.reply_error(Status.INVALID_ARGUMENT, request.request_id, str(exc))
        except Exception as exc:  # a bug in one request must not take the node down
            log.exception("request %d (%s) failed", request.request_id, request.op.name)
            session.reply_error(Status.INTERNAL, request.request_id, f"internal error: {exc}")
        return True
