"""The node's small HTTP endpoint: GET /status (JSON) and GET /metrics (Prometheus text).

GET /status?digest=1 adds the state digest, which reads all retained data (Node.answer_status).

Operators and scrapers poll it a few times a second at most, so a plain asyncio stream server
is enough; it reads at most HEADER_BYTES_MAX of a request and answers GET only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

HEADER_BYTES_MAX = 8192
READ_TIMEOUT_S = 5.0

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


class HttpStatusServer:
    def __init__(self, status: Callable[[bool], Awaitable[dict[str, Any]]], metrics: Callable[[], bytes],
                 may_see_digest: Callable[[str | None], bool] = lambda token: True,
                 allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None,
                 is_admin: Callable[[str], bool] = lambda token: False) -> None:
        self._may_see_digest = may_see_digest
        self._is_admin = is_admin
        # None: any host may read; else hosts of these networks, and others holding an admin token.
        self._allowed = allowed
        self._status = status
        self._metrics = metrics
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True, ssl=tls)
        bound = self._server.sockets[0].getsockname()
        return bound[0], bound[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                await self._respond(writer, 400, "text/plain", b"bad request\n")
                return
            route = route_request(head)
            if route.target is not None and not self._host_allowed(writer, route.token):
                await self._respond(writer, 403, "text/plain",
                                    b"this address may not read the endpoint (http_allow); or present an admin "
                                    b"token: Authorization: Bearer <token>\n")
            elif route.target == "status" and route.digest and not self._may_see_digest(route.token):
                await self._respond(writer, 401, "text/plain",
                                    b"the state digest needs an admin token: Authorization: Bearer <token>\n")
            elif route.target == "status":
                body = json.dumps(await self._status(route.digest), indent=1, sort_keys=True).encode() + b"\n"
                await self._respond(writer, 200, "application/json", body)
            elif route.target == "metrics":
                await self._respond(writer, 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics())
            else:
                await self._respond(writer, route.code, "text/plain", f"{route.message}\n".encode())
        except Exception:
            log.exception("HTTP request failed")
            with contextlib.suppress(Exception):
                await self._respond(writer, 500, "text/plain", b"internal error\n")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _host_allowed(self, writer: asyncio.StreamWriter, token: str | None) -> bool:
        if self._allowed is None:
            return True
        peer = writer.get_extra_info("peername")
        try:
            host = ipaddress.ip_address(peer[0]) if isinstance(peer, tuple) else None
        except ValueError:
            host = None
        if host is not None and any(host in network for network in self._allowed):
            return True
        return token is not None and self._is_admin(token)

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, code: int, content_type: str, body: bytes) -> None:
        head = (
            f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        writer.write(head + body)
        await writer.drain()


@dataclass(frozen=True, slots=True)
class Route:
    """What a request head asks for: target "status" or "metrics", or an error code and message."""

    target: str | None
    digest: bool = False
    code: int = 200
    message: str = ""
    token: str | None = None  # from "Authorization: Bearer <token>"


def route_request(head: bytes) -> Route:
    """The answer to a request head (the bytes through the blank line); never raises."""
    if len(head) > HEADER_BYTES_MAX:
        return Route(None, code=400, message="request header too large")
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) != 3:
        return Route(None, code=400, message="bad request line")
    method, target, _, query = parts[0], *parts[1].partition(b"?")
    if method != b"GET":
        return Route(None, code=405, message="only GET is served")
    if target == b"/status":
        try:
            return Route("status", digest=_status_digest_asked(query), token=_bearer(head))
        except ValueError as exc:
            return Route(None, code=400, message=str(exc))
    if target == b"/metrics":
        return Route("metrics", token=_bearer(head))
    return Route(None, code=404, message="try /status or /metrics")


def _bearer(head: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token:
                return token.strip().decode(errors="replace")
    return None


def _status_digest_asked(query: bytes) -> bool:
    """Whether /status?... asks for the digest; ValueError on anything else in the query."""
    digest = False
    for pair in filter(None, query.split(b"&")):
        key, _, value = pair.partition(b"=")
        if key != b"digest":
            raise ValueError(f"unknown query parameter {key.decode(errors='replace')!r}; try /status?digest=1")
        if value not in (b"1", b"true", b"0", b"false"):
            raise ValueError("digest must be 1, true, 0 or false")
        digest = value in (b"1", b"true")
    return digest
