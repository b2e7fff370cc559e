"""The node's one listen port: reads each connection's hello and hands it to peers or clients."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from eventstream.transport.connection import FramedConnection
from eventstream.transport.frames import CrcFunction
from eventstream.transport.hello import ROLE_CLIENT, ROLE_PEER, Hello, HelloError

log = logging.getLogger(__name__)


class ConnectionOwner(Protocol):
    def adopt(self, conn: FramedConnection, hello: Hello) -> bool: ...


class Listener:
    """Accepts connections; the first frame decides whether the peer network or the client
    server owns the connection. A connection whose first frame is not a valid hello is closed."""

    def __init__(
        self,
        crc: CrcFunction,
        frame_bytes_max: int,
        peers: ConnectionOwner | None = None,
        clients: ConnectionOwner | None = None,
    ) -> None:
        self._crc = crc
        self._frame_bytes_max = frame_bytes_max
        self._owners: dict[int, ConnectionOwner | None] = {ROLE_PEER: peers, ROLE_CLIENT: clients}
        self._server: asyncio.base_events.Server | None = None
        self._pending: set[FramedConnection] = set()
        self.refused = 0

    def set_owner(self, role: int, owner: ConnectionOwner) -> None:
        """Bind a protocol owner; lets the port be bound (and learnt) before the owner exists."""
        self._owners[role] = owner

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._make_connection, host, port, reuse_address=True)
        sock = self._server.sockets[0]
        bound = sock.getsockname()
        return bound[0], bound[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for conn in list(self._pending):
            conn.close("listener stopping")

    def _make_connection(self) -> FramedConnection:
        conn = FramedConnection(self._crc, self._frame_bytes_max, self._on_first_frames, self._on_pending_closed)
        self._pending.add(conn)
        return conn

    def _on_pending_closed(self, conn: FramedConnection, reason: str) -> None:
        self._pending.discard(conn)

    def _on_first_frames(self, conn: FramedConnection, bodies: list[bytes]) -> None:
        self._pending.discard(conn)
        try:
            hello = Hello.decode(bodies[0])
        except HelloError as exc:
            self.refused += 1
            log.warning("closing connection from %s: %s", conn.peername, exc)
            conn.close(str(exc))
            return
        owner = self._owners.get(hello.role)
        if owner is None or not owner.adopt(conn, hello):
            self.refused += 1
            conn.close("hello refused")
            return
        rest = bodies[1:]
        if rest and not conn.closed:
            # adopt() rebound the connection; frames that came in the same read go to the owner.
            conn.deliver(rest)
