"""The node's one listen port: reads each connection's hello and hands it to peers or clients."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Any, Protocol

from eventstream.transport._append_intake import TlsServerSession
from eventstream.transport.connection import FramedConnection
from eventstream.transport.frames import CrcFunction
from eventstream.transport.hello import HELLO_BYTES, ROLE_CLIENT, ROLE_PEER, Hello, HelloError

log = logging.getLogger(__name__)

# A connection that has not sent its hello within this long is closed: a stranger holding
# connections open (idle, or trickling bytes) costs the node a descriptor only this long.
HELLO_TIMEOUT_S = 5.0
# At most this many connections may owe their hello at once (the oldest is closed to make
# room); peers and clients that already said hello are not counted.
PENDING_MAX = 1024
# Refused connections are logged once per source host per this many seconds.
REFUSAL_LOG_INTERVAL_S = 60.0
_REFUSAL_HOSTS_MAX = 4096
ACCEPT_BACKLOG = 1024


class RefusalLog:
    """Refused connections, logged once per source host per interval with a count of the rest,
    so a flood of strangers cannot flood the node's log."""

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._hosts: dict[str, tuple[float, int]] = {}  # host -> (logged at, refused since)

    def note(self, peername: str, reason: str, now: float | None = None) -> bool:
        """Count one refusal; whether it was logged."""
        now = time.monotonic() if now is None else now
        host = peername.rpartition(":")[0] or peername
        logged_at, since = self._hosts.get(host, (-self.interval_s, 0))
        if now - logged_at < self.interval_s:
            self._hosts[host] = (logged_at, since + 1)
            return False
        if len(self._hosts) >= _REFUSAL_HOSTS_MAX:
            self._hosts.clear()  # a flood from many hosts: start counting afresh
        self._hosts[host] = (now, 0)
        more = f" ({since} more from {host} since last logged)" if since else ""
        log.warning("refused a connection from %s: %s%s; logged once a minute per host", peername, reason, more)
        return True


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
        self._pending: dict[FramedConnection, asyncio.TimerHandle | None] = {}
        self.refused = 0
        self.refusals = RefusalLog()
        self._handshakes: dict[asyncio.Task[None], str] = {}  # under way, oldest first -> peer
        self._tls_socket: socket.socket | None = None
        self._native_tls: Any = None
        self._accepting: asyncio.Task[None] | None = None

    def set_owner(self, role: int, owner: ConnectionOwner) -> None:
        """Bind a protocol owner; lets the port be bound (and learnt) before the owner exists."""
        self._owners[role] = owner

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None,
                    native_tls: Any = None) -> tuple[str, int]:
        """Listen on host:port: in the clear; over TLS from native code (native_tls, a
        TlsServer: the handshake and every record in C, client answers encrypted by the
        intake); or over the loop's TLS (tls) where the build has no native TLS."""
        loop = asyncio.get_running_loop()
        if native_tls is not None:
            self._native_tls = native_tls
            self._server = await loop.create_server(self._make_connection, host, port, reuse_address=True)
            bound = self._server.sockets[0].getsockname()
            return bound[0], bound[1]
        if tls is None:
            self._server = await loop.create_server(self._make_connection, host, port, reuse_address=True)
            bound = self._server.sockets[0].getsockname()
            return bound[0], bound[1]
        # With TLS the node accepts each socket itself and awaits its handshake: a server made
        # with ssl= drops a failed handshake without a word, and a refused peer or client must
        # be logged (once a minute per host, as every other refusal).
        sock = socket.create_server((host, port), reuse_port=False, backlog=ACCEPT_BACKLOG)
        sock.setblocking(False)
        self._tls_socket = sock
        self._accepting = loop.create_task(self._accept_tls(sock, tls), name="tls-accept")
        bound = sock.getsockname()
        return bound[0], bound[1]

    async def _accept_tls(self, sock: socket.socket, tls: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                accepted, peer = await loop.sock_accept(sock)
            except OSError as exc:  # out of descriptors, most likely: wait for some to close
                log.warning("accepting a connection failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            peername = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
            if len(self._handshakes) >= PENDING_MAX:
                # As with hellos: make room by dropping the handshake under way longest (a real
                # peer or client finishes in a few round trips), so a flood cannot lock them out.
                oldest, oldest_peer = next(iter(self._handshakes.items()))
                del self._handshakes[oldest]
                oldest.cancel()
                self.refused += 1
                self.refusals.note(oldest_peer, f"{PENDING_MAX} TLS handshakes under way; this one the longest")
            task = loop.create_task(self._handshake(accepted, peername, tls))
            self._handshakes[task] = peername

    async def _handshake(self, accepted: socket.socket, peername: str, tls: ssl.SSLContext) -> None:
        try:
            # The connection's protocol sees connection_made only once the handshake is done.
            await asyncio.get_running_loop().connect_accepted_socket(
                self._make_connection, accepted, ssl=tls, ssl_handshake_timeout=HELLO_TIMEOUT_S)
        except OSError as exc:  # ssl.SSLError and TimeoutError are OSErrors
            self.refused += 1
            self.refusals.note(peername, f"TLS handshake failed: {_handshake_reason(exc)}")
            accepted.close()
        except asyncio.CancelledError:  # evicted by a newer one, or the listener stopping
            accepted.close()
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._handshakes.pop(task, None)

    @property
    def handshaking(self) -> int:
        """TLS handshakes under way."""
        return len(self._handshakes)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        for task in list(self._handshakes):
            task.cancel()
        if self._tls_socket is not None:
            self._tls_socket.close()
            self._tls_socket = None
        for conn in list(self._pending):
            self._forget(conn)
            conn.close("listener stopping")

    def _make_connection(self) -> FramedConnection:
        conn = FramedConnection(self._crc, self._frame_bytes_max, self._on_first_frames, self._on_pending_closed,
                                on_open=self._on_open)
        conn.first_frame_bytes_max = HELLO_BYTES
        if self._native_tls is not None:
            # The handshake runs inside the hello's time and counts as owing the hello.
            conn.tls_session = TlsServerSession(self._native_tls)
            conn.on_tls_failed = self._tls_failed
        conn.log_errors = False  # a stranger until its hello is taken: refusals are rate-limited
        return conn

    def _tls_failed(self, conn: FramedConnection, reason: str) -> None:
        self.refused += 1
        self.refusals.note(conn.peername, f"TLS handshake failed: {_native_reason(reason)}")
        self._forget(conn)

    def _on_open(self, conn: FramedConnection) -> None:
        if len(self._pending) >= PENDING_MAX:
            # Make room by closing the connection that has owed its hello longest: a real peer
            # or client says hello within a round trip, so the oldest is a stranger's.
            oldest = next(iter(self._pending))
            self._refuse(oldest, f"{PENDING_MAX} connections owed their hello; this one the longest")
        self._pending[conn] = asyncio.get_running_loop().call_later(HELLO_TIMEOUT_S, self._hello_overdue, conn)

    def _hello_overdue(self, conn: FramedConnection) -> None:
        if conn in self._pending:
            self._refuse(conn, f"no hello within {HELLO_TIMEOUT_S:.0f} s")

    def _refuse(self, conn: FramedConnection, reason: str) -> None:
        self.refused += 1
        self.refusals.note(conn.peername, reason)
        self._forget(conn)
        conn.close(reason)

    def _forget(self, conn: FramedConnection) -> None:
        timer = self._pending.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def _on_pending_closed(self, conn: FramedConnection, reason: str) -> None:
        if conn in self._pending:  # closed by the stranger, or by a bad first frame
            self._forget(conn)
            if reason.startswith(("bad frame", "first frame")):
                self.refused += 1
                self.refusals.note(conn.peername, reason)

    def _on_first_frames(self, conn: FramedConnection, bodies: list[bytes]) -> None:
        self._forget(conn)
        try:
            hello = Hello.decode(bodies[0])
        except HelloError as exc:
            self._refuse(conn, str(exc))
            return
        owner = self._owners.get(hello.role)
        if owner is None or not owner.adopt(conn, hello):
            self.refused += 1
            conn.close("hello refused")
            return
        conn.first_frame_bytes_max = None
        conn.log_errors = True
        rest = bodies[1:]
        if rest and not conn.closed:
            # adopt() rebound the connection; frames that came in the same read go to the owner.
            conn.deliver(rest)


def _handshake_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"):
            return f"the other side does not speak TLS ({reason})"
        if "CERTIFICATE_VERIFY_FAILED" in reason:
            return f"its certificate is not of this cluster's CA ({reason})"
        return reason
    if isinstance(exc, TimeoutError):
        return f"not done within {HELLO_TIMEOUT_S:.0f} s"
    return str(exc) or exc.__class__.__name__


def _native_reason(reason: str) -> str:
    """OpenSSL's words for the usual failures, in the words of _handshake_reason."""
    reason = reason.removeprefix("TLS handshake failed: ")
    words = reason.rpartition("::")[2] or reason  # "error:0A00010B:SSL routines::wrong version number"
    if words in ("wrong version number", "http request", "unknown protocol"):
        return f"the other side does not speak TLS ({words})"
    return words
