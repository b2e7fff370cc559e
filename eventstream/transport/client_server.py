"""Server side of the client protocol: requests in, answers out, per connection read.

Each client connection's bytes go straight to the node's AppendIntake (csrc/_append_intake.pyx):
one native call per read splits the frames, checks every APPEND request and queues its events
for the next entry, so 64 single-event clients cost the leader no Python work per request.
Any other request is handed back here and served in arrival order, after the APPENDs that came
before it on its connection were queued (or refused) and before those after it.

Answers are queued per connection in the intake (the service's own replies too, framed there,
so the order on a connection is the order they were queued) and written by one native flush
per loop turn: one send() per connection with the GIL released. What a socket does not take
goes to the connection's transport, and the connection stays on that path until the
transport's buffer has drained, so nothing overtakes it.

Per connection, requests in flight are bounded; past the bound the server answers Overloaded
at once instead of queueing without limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from eventstream.transport._append_intake import AppendIntake
from eventstream.transport.client_protocol import (
    ProtocolError,
    Request,
    Status,
    decode_request,
    encode_error,
)
from eventstream.transport.connection import FramedConnection
from eventstream.transport.frames import FrameError
from eventstream.transport.hello import ROLE_CLIENT, Hello

log = logging.getLogger(__name__)

IN_FLIGHT_PER_CONNECTION_MAX = 4096

# (session, request_id, AppendIntake REFUSED_* code, message for REFUSED_INVALID)
Refusal = tuple["ClientSession", int, int, "str | None"]


class ClientService(Protocol):
    def on_request(self, session: ClientSession, request: Request) -> None: ...

    def accepting_appends(self, session: ClientSession) -> bool:
        """Whether APPENDs arriving now on `session` may be queued for the next entry."""

    def on_appends_queued(self) -> None:
        """APPENDs were queued in the intake during this loop turn (called once per turn)."""

    def on_refused_appends(self, refusals: list[Refusal]) -> None:
        """APPENDs the intake refused, in arrival order: answer each with its error."""


class ClientSession:
    """One client connection: a slot of the intake. reply() may be called once per request."""

    __slots__ = ("conn", "slot", "gen", "open", "grants", "presented_token", "_server")

    def __init__(self, server: ClientServer, conn: FramedConnection, slot: int, gen: int) -> None:
        self._server = server
        self.conn = conn
        self.slot = slot
        self.gen = gen
        self.open = True
        self.grants: object = None  # what the token this connection presented allows (node/auth.py)
        # A token presented while the node knew no tokens, checked once tokens exist here.
        self.presented_token: str | None = None

    def reply(self, body: bytes) -> None:
        server = self._server
        if server.intake.reply(self.slot, self.gen, body):
            server.flush_soon()

    def reply_error(self, status: Status, request_id: int, message: str, leader_id: int = 0) -> None:
        self.reply(encode_error(status, request_id, message, leader_id))

    @property
    def in_flight(self) -> int:
        return self._server.intake.in_flight(self.slot) if self.open else 0

    @property
    def requests(self) -> int:
        return self._server.intake.requests(self.slot) if self.open else 0

    @property
    def closed(self) -> bool:
        return self.conn.closed


class ClientServer:
    def __init__(self, service: ClientService, intake: AppendIntake) -> None:
        self._service = service
        self.intake = intake
        self.sessions: set[ClientSession] = set()
        self._by_slot: dict[int, ClientSession] = {}
        # Slots whose answers last went through their transport's buffer (see module doc).
        self._backlogged: set[int] = set()
        self.protocol_errors = 0
        self._turn_scheduled = False
        self._appends_queued = False

    def adopt(self, conn: FramedConnection, hello: Hello) -> bool:
        if hello.role != ROLE_CLIENT:
            return False
        slot, gen = self.intake.open_slot(conn.socket_fd())
        if conn.tls_session is not None:
            self.intake.set_tls(slot, conn.tls_session)  # answers encrypted natively
        session = ClientSession(self, conn, slot, gen)
        conn.tag = session
        conn.take_raw(self._on_data, self._on_close)
        conn.reads_wait_for_writes = True  # answers a client does not read hold back its requests
        self.sessions.add(session)
        self._by_slot[slot] = session
        return True

    def session_for(self, slot: int, gen: int) -> ClientSession | None:
        session = self._by_slot.get(slot)
        return session if session is not None and session.gen == gen else None

    def _on_close(self, conn: FramedConnection, reason: str) -> None:
        session = conn.tag
        if not isinstance(session, ClientSession) or not session.open:
            return
        buffered = self.intake.buffered_bytes(session.slot)
        if buffered:
            log.warning("connection from %s ended inside a frame (%d bytes pending)", conn.peername, buffered)
        self.intake.close_slot(session.slot)
        session.open = False
        self.sessions.discard(session)
        self._by_slot.pop(session.slot, None)
        self._backlogged.discard(session.slot)

    def _on_data(self, conn: FramedConnection, data: bytes) -> None:
        session = conn.tag
        assert isinstance(session, ClientSession)
        intake = self.intake
        slot = session.slot
        now = time.monotonic()
        try:
            body = intake.feed(slot, data, now, self._service.accepting_appends(session))
            self._appends_queued = True
            self._schedule_turn_end()
            while True:
                if intake.refusals:
                    self._refuse(intake.take_refusals())
                if body is None or not self._one(conn, session, body):
                    return
                body = intake.feed(slot, b"", now, self._service.accepting_appends(session))
        except FrameError as exc:
            log.warning("closing connection from %s: %s", conn.peername, exc)
            self._close(session, f"bad frame: {exc}")

    def _refuse(self, refusals: list[tuple[int, int, int, str | None]]) -> None:
        sessions = self._by_slot
        try:
            self._service.on_refused_appends([(sessions[slot], request_id, code, message)
                                              for slot, request_id, code, message in refusals])
        except Exception:  # a bug must not take the node down; these requests time out
            log.exception("%d refused APPEND requests were not answered", len(refusals))

    def _one(self, conn: FramedConnection, session: ClientSession, body: bytes) -> bool:
        """Serve one request that is not a queued APPEND; False when the connection closed."""
        try:
            request = decode_request(body)
        except ProtocolError as exc:
            self.protocol_errors += 1
            log.warning("closing client %s: %s", conn.peername, exc)
            self._close(session, f"protocol error: {exc}")
            return False
        if self.intake.count_request(session.slot) > IN_FLIGHT_PER_CONNECTION_MAX:
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
        return not conn.closed

    def _close(self, session: ClientSession, reason: str) -> None:
        """Close a connection after writing the answers already queued for it."""
        if session.open:
            pending = self.intake.take_output(session.slot)
            if pending:
                session.conn.write_now(pending)
        session.conn.close(reason)

    # -- once per loop turn ---------------------------------------------------------------
    def flush_soon(self) -> None:
        """Write the queued answers when this loop turn's callbacks are done."""
        self._schedule_turn_end()

    def _schedule_turn_end(self) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            # Runs after every read callback of this loop turn (the loop's ready queue).
            asyncio.get_running_loop().call_soon(self._turn_end)

    def _turn_end(self) -> None:
        self._turn_scheduled = False
        if self._appends_queued:
            self._appends_queued = False
            try:
                self._service.on_appends_queued()
            except Exception:
                log.exception("handing queued APPENDs to the node failed")
        self.flush()

    def flush(self) -> None:
        """Write every queued answer now."""
        intake = self.intake
        backlogged = self._backlogged
        if backlogged:
            for slot in list(backlogged):
                session = self._by_slot.get(slot)
                if session is None or session.conn.write_buffer_bytes == 0:
                    backlogged.discard(slot)
                    if session is not None:
                        intake.set_backlogged(slot, False)
        if not intake.dirty_count:
            return
        for slot, data, records in intake.flush():
            session = self._by_slot[slot]
            if records:
                session.conn.write_records(data)
            else:
                session.conn.write_now(data)
            if session.conn.write_buffer_bytes:
                intake.set_backlogged(slot, True)
                backlogged.add(slot)
