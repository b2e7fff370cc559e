"""Client library: AsyncClient (asyncio) and Client (blocking, for scripts and the CLI).

Both speak the client protocol (transport/client_protocol.py) over one connection to the node
believed to lead, with many requests in flight on it. On NotLeader the client follows the
leader hint; on a lost connection, Unavailable or Overloaded it backs off, tries the next
address, and retries until its deadline.

Retries are safe for appends: every event gets an event id (the caller's, or 16 random bytes
chosen once before the first try), and the cluster applies an id at most once inside its
dedup window, so an append that reached the log before the connection broke is answered on
retry with its original (queue, offset) and duplicate=True.

An id this library chose is marked as generated (storage.event.Event.id_generated): nobody but
this retry loop can send it again, so the cluster keeps it only for dedup_generated_window_ms
(at least 60 s) rather than the callers' dedup_window_ms. To keep every retry inside that
window, an append with a generated id is retried for at most GENERATED_ID_RETRY_S, whatever
timeout_s says. A caller that retries on its own, after an error, passes its own event_id.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import ssl
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from eventstream.errors import (
    EscError,
    InvalidArgument,
    NotLeader,
    OutOfRange,
    Overloaded,
    PermissionDenied,
    Refused,
    Timeout,
    Unauthenticated,
    Unavailable,
)
from eventstream.storage import crc32c
from eventstream.storage.codec import decode_batch, encode_batch
from eventstream.tls import client_context
from eventstream.transport.client_protocol import (
    AppendOk,
    Consistency,
    Op,
    ProtocolError,
    ReadRequest,
    Response,
    Status,
    decode_append_ok,
    decode_error,
    decode_json_object,
    decode_read_ok,
    decode_response,
    encode_json,
    encode_read,
    encode_request,
    encode_status_options,
)
from eventstream.transport.connection import FramedConnection
from eventstream.transport.frames import FRAME_BYTES_MAX_DEFAULT
from eventstream.transport.hello import ROLE_CLIENT, Hello

T = TypeVar("T")

EVENT_ID_BYTES_AUTO = 16
# How long an append whose ids this library generated is retried at most: the floor of the
# cluster's dedup_generated_window_ms (state/config.py) is twice this, so every retry lands
# while the first try's ids are still remembered.
GENERATED_ID_RETRY_S = 30.0
# How often a session looks for requests past their deadline (the granularity of timeouts).
SWEEP_INTERVAL_S = 0.05


@dataclass(frozen=True, slots=True)
class AppendResult:
    queue: int
    offset: int
    index: int
    duplicate: bool
    event_id: bytes


@dataclass(frozen=True, slots=True)
class ReadEvent:
    offset: int
    event_id: bytes | None
    key: bytes | None
    payload: bytes
    timestamp: int  # microseconds since the epoch


@dataclass(frozen=True, slots=True)
class EventIn:
    """One event to append. timestamp_us defaults to the client's clock at the first try."""

    payload: bytes
    key: bytes | None = None
    event_id: bytes | None = None
    queue: int | None = None
    timestamp_us: int | None = None


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidArgument(f"bad address {address!r}: expected host:port")
    return host.strip("[]"), int(port)


class _Session:
    """One connection to one node, with its in-flight requests."""

    def __init__(self, address: str, frame_bytes_max: int, token: str | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.address = address
        self._frame_bytes_max = frame_bytes_max
        self._token = token
        self._tls = tls
        self._pending: dict[int, asyncio.Future[Response]] = {}
        # Each request's deadline, checked by one sweep timer per session rather than a timer
        # per request: at tens of thousands of requests a second the timers cost more than the
        # rest of the client's work on a request.
        self._deadlines: dict[int, float] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._ids = itertools.count(1)
        self.conn: FramedConnection | None = None
        self.closed_reason: str | None = None

    async def open(self, timeout_s: float) -> None:
        host, port = parse_address(self.address)
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: FramedConnection(crc32c, self._frame_bytes_max, self._on_frames, self._on_close),
                host,
                port,
                ssl=self._tls,
                server_hostname="" if self._tls is not None else None,
            ),
            timeout_s,
        )
        self.conn = conn
        conn.send(Hello(ROLE_CLIENT).encode())
        if self._token is not None:
            resp = await self.call(Op.AUTH, self._token.encode(), timeout_s)
            if resp.status is not Status.OK:
                err = decode_error(resp.body)
                self.close()
                raise Unauthenticated(f"{self.address}: {err.message}")

    def _on_frames(self, conn: FramedConnection, bodies: list[bytes]) -> None:
        for body in bodies:
            try:
                resp = decode_response(body)
            except ProtocolError as exc:
                conn.close(f"bad response: {exc}")
                return
            fut = self._pending.pop(resp.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(resp)

    def _on_close(self, conn: FramedConnection, reason: str) -> None:
        self.closed_reason = reason
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"connection to {self.address} closed: {reason}"))

    @property
    def usable(self) -> bool:
        return self.conn is not None and not self.conn.closed

    async def call(self, op: Op, body: bytes, timeout_s: float) -> Response:
        conn = self.conn
        if conn is None or conn.closed:
            raise ConnectionError(f"not connected to {self.address}")
        request_id = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Response] = loop.create_future()
        self._pending[request_id] = fut
        if not conn.send_soon(encode_request(op, request_id, body)):
            self._pending.pop(request_id, None)
            raise ConnectionError(f"connection to {self.address} closed")
        self._deadlines[request_id] = loop.time() + timeout_s
        if self._sweep is None:
            self._sweep = loop.call_later(min(timeout_s, SWEEP_INTERVAL_S), self._expire_overdue)
        try:
            return await fut
        finally:
            self._pending.pop(request_id, None)
            self._deadlines.pop(request_id, None)

    def _expire_overdue(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for request_id, deadline in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[request_id]
                fut = self._pending.get(request_id)
                if fut is not None:
                    _expire(fut)
        if self._deadlines:
            soonest = min(self._deadlines.values())
            self._sweep = loop.call_later(max(0.0, min(soonest - now, SWEEP_INTERVAL_S)), self._expire_overdue)
        else:
            self._sweep = None

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self.conn is not None:
            self.conn.close("client closed")


class AsyncClient:
    """Talks to a cluster given any subset of its nodes' client addresses.

    timeout_s bounds each call as a whole, retries included; attempt_timeout_s bounds one try.
    """

    def __init__(
        self,
        addresses: Sequence[str] | str,
        timeout_s: float = 10.0,
        attempt_timeout_s: float = 3.0,
        backoff_initial_s: float = 0.02,
        backoff_max_s: float = 0.5,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        token: str | None = None,
        tls_ca: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`token` is presented on every connection (docs/operations.md, "Tokens"); None sends
        none, which a cluster without tokens accepts. `tls_ca` (the cluster CA's ca.pem) turns
        on TLS, checking each node's certificate against it; `tls`, a context made already,
        instead (a joining node's presents its own certificate)."""
        if isinstance(addresses, str):
            addresses = [a for a in addresses.split(",") if a.strip()]
        if not addresses:
            raise InvalidArgument("no cluster address given")
        for address in addresses:
            parse_address(address)
        self.addresses = [a.strip() for a in addresses]
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._frame_bytes_max = frame_bytes_max
        self._token = token
        self._tls = tls if tls is not None else client_context(tls_ca) if tls_ca is not None else None
        self._target = 0
        self._session: _Session | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._rng = random.Random()
        self.retries = 0
        self.leader_changes_seen = 0

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- public operations ------------------------------------------------------------------
    async def append(
        self,
        payload: bytes,
        key: bytes | str | None = None,
        event_id: bytes | str | None = None,
        queue: int | None = None,
        timestamp_us: int | None = None,
    ) -> AppendResult:
        results = await self.append_batch([EventIn(payload, _b(key), _b(event_id), queue, timestamp_us)])
        return results[0]

    async def append_batch(self, events: Iterable[EventIn | Mapping[str, Any] | bytes]) -> list[AppendResult]:
        """Append events as one batch: all in one log entry, in order, acknowledged together."""
        now_us = time.time_ns() // 1000
        rows = []
        generated = False
        for ev in events:
            if isinstance(ev, (bytes, bytearray, memoryview)):
                ev = EventIn(bytes(ev))
            elif isinstance(ev, Mapping):
                ev = EventIn(**ev)
            given = _b(ev.event_id)
            event_id = given or os.urandom(EVENT_ID_BYTES_AUTO)
            generated |= not given
            rows.append((event_id, _b(ev.key), ev.queue, now_us if ev.timestamp_us is None else ev.timestamp_us,
                         ev.payload, not given))
        if not rows:
            return []
        try:
            batch = encode_batch(rows)
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"cannot encode batch: {exc}") from None
        # Retries of ids made up here must land inside the cluster's generated-id window.
        retry_s = min(self.timeout_s, GENERATED_ID_RETRY_S) if generated else None
        resp = await self._call(Op.APPEND, batch, timeout_s=retry_s)
        ok = decode_append_ok(resp.body)
        if len(ok.queues) != len(rows):
            raise EscError(f"append answered {len(ok.queues)} results for {len(rows)} events")
        return [
            AppendResult(ok.queues[i], ok.offsets[i], ok.index, bool(ok.duplicates[i]), rows[i][0])
            for i in range(len(rows))
        ]

    async def append_encoded(self, batch: bytes) -> AppendOk:
        """Append a batch the caller encoded with storage.codec.encode_batch, answered as the
        raw AppendOk (queues, offsets, duplicate flags as arrays) without an object per event.

        For senders of many events that need counts, not results: the load generator. Events
        the caller left without an id are stored, but a retry of them may store them twice.
        Ids the caller flagged as generated are kept only dedup_generated_window_ms: with such
        events, keep timeout_s under GENERATED_ID_RETRY_S.
        """
        return decode_append_ok((await self._call(Op.APPEND, batch)).body)

    async def read(
        self,
        queue: int,
        offset: int,
        limit: int = 1000,
        max_bytes: int = 4 * 1024 * 1024,
        consistency: str = "linearizable",
    ) -> list[ReadEvent]:
        events, _ = await self.read_page(queue, offset, limit, max_bytes, consistency)
        return events

    async def read_to_end(self, queue: int, offset: int = 0, events_max: int = 1_000_000,
                          consistency: str = "linearizable") -> list[ReadEvent]:
        """Every event of a queue from `offset` to its current end, page by page; raises
        InvalidArgument rather than hold more than events_max events in memory."""
        events: list[ReadEvent] = []
        while True:
            page, offset = await self.read_page(queue, offset, 1000, consistency=consistency)
            if not page:
                return events
            events.extend(page)
            if len(events) > events_max:
                raise InvalidArgument(f"queue {queue} holds more than {events_max} events from the offset asked")

    async def read_page(
        self,
        queue: int,
        offset: int,
        limit: int = 1000,
        max_bytes: int = 4 * 1024 * 1024,
        consistency: str = "linearizable",
    ) -> tuple[list[ReadEvent], int]:
        """Like read(), and also returns the offset to read next."""
        try:
            level = {"linearizable": Consistency.LINEARIZABLE, "stale": Consistency.STALE}[consistency]
        except KeyError:
            raise InvalidArgument(f"consistency must be 'linearizable' or 'stale', not {consistency!r}") from None
        if queue < 0 or offset < 0 or limit <= 0 or max_bytes <= 0:
            raise InvalidArgument("queue and offset must be >= 0; limit and max_bytes > 0")
        body = encode_read(ReadRequest(queue, offset, limit, max_bytes, level))
        resp = await self._call(Op.READ, body, any_node=level is Consistency.STALE)
        ok = decode_read_ok(resp.body)
        view = decode_batch(bytes(ok.batch))
        events = [
            ReadEvent(ok.first_offset + i, ev.event_id, ev.key, bytes(ev.payload), ev.timestamp_us)
            for i, ev in enumerate(view)
        ]
        return events, ok.next_offset

    async def config_update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        resp = await self._call(Op.CONFIG_UPDATE, encode_json(dict(changes)))
        return decode_json_object(resp.body)

    async def config_get(self) -> dict[str, Any]:
        return decode_json_object((await self._call(Op.CONFIG_GET, b"")).body)

    async def status(self, address: str | None = None, digest: bool = False) -> dict[str, Any]:
        """Status of one node (the given address, else whichever node answers first). `digest`
        asks for the state digest too, which the node computes over all its retained data."""
        body = encode_status_options(digest)
        if address is not None:
            session = _Session(address, self._frame_bytes_max, self._token, self._tls)
            try:
                await session.open(self.attempt_timeout_s)
                resp = await session.call(Op.STATUS, body, self.attempt_timeout_s)
            except (TimeoutError, OSError) as exc:
                raise Unavailable(f"node {address} did not answer: {exc}") from None
            finally:
                session.close()
            self._raise_for(resp)
            return decode_json_object(resp.body)
        return decode_json_object((await self._call(Op.STATUS, body, any_node=True)).body)

    async def snapshot(self) -> dict[str, Any]:
        return decode_json_object((await self._call(Op.SNAPSHOT, b"")).body)

    # -- membership (docs/operations.md, "Membership") --------------------------------------
    async def members(self) -> dict[str, Any]:
        """The membership: voters, learners, each member's role and address (and, from the
        leader, its lag), the pending change. Any node answers; the members' addresses join
        the ones this client tries."""
        return self._learn(decode_json_object((await self._call(Op.MEMBERS, b"", any_node=True)).body))

    async def add_member(self, node_id: int, address: str, learner: bool = True, force: bool = False) -> dict[str, Any]:
        """Add node `node_id` at `address` (its --listen), as a learner unless learner=False.
        Answered once the change is applied; Refused when the cluster cannot take it now."""
        change = "add-learner" if learner else "add-voter"
        return await self._member_change({"change": change, "id": node_id, "address": address, "force": force})

    async def promote_member(self, node_id: int, force: bool = False) -> dict[str, Any]:
        """Make learner `node_id` a voter; Refused while it lags the leader."""
        return await self._member_change({"change": "promote", "id": node_id, "force": force})

    async def remove_member(self, node_id: int, force: bool = False) -> dict[str, Any]:
        """Remove voter or learner `node_id` (the leader too: it hands over once removed)."""
        return await self._member_change({"change": "remove", "id": node_id, "force": force})

    async def _member_change(self, change: dict[str, Any]) -> dict[str, Any]:
        return self._learn(decode_json_object((await self._call(Op.MEMBER_CHANGE, encode_json(change))).body))

    def _learn(self, view: dict[str, Any]) -> dict[str, Any]:
        members = view.get("members")
        if isinstance(members, dict):
            for row in members.values():
                address = row.get("address") if isinstance(row, dict) else None
                if isinstance(address, str) and address not in self.addresses:
                    try:
                        parse_address(address)
                    except InvalidArgument:
                        continue
                    self.addresses.append(address)
        return view

    # -- the retry loop ---------------------------------------------------------------------
    async def _call(self, op: Op, body: bytes, any_node: bool = False, timeout_s: float | None = None) -> Response:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        delay = self._backoff_initial_s
        last: Exception | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            attempt_s = min(remaining, self.attempt_timeout_s)
            try:
                session = self._session
                if session is None or not session.usable:
                    session = await self._connected(attempt_s)
                resp = await session.call(op, body, attempt_s)
            except (TimeoutError, OSError, ConnectionError) as exc:
                # An attempt the overall deadline cut short says nothing about the node: the
                # cluster's own answer to an earlier attempt (Overloaded, Unavailable) is what
                # the caller needs to see, not a timeout of the last sliver of time.
                if not isinstance(exc, TimeoutError):
                    last = Unavailable(f"{self.addresses[self._target]}: {str(exc) or type(exc).__name__}")
                elif last is None or attempt_s >= self.attempt_timeout_s:
                    last = Unavailable(f"{self.addresses[self._target]}: no answer within {attempt_s:.2f} s")
                self._drop_session()
                self._target = (self._target + 1) % len(self.addresses)
            else:
                if resp.status is Status.OK:
                    return resp
                err = decode_error(resp.body)
                if resp.status is Status.NOT_LEADER and not any_node:
                    last = NotLeader(err.message, err.leader_id, err.message or None)
                    if self._follow_hint(err.message):
                        self.retries += 1
                        continue
                elif resp.status in (Status.UNAVAILABLE, Status.OVERLOADED, Status.TIMEOUT):
                    last = self._error_for(resp.status, err.message, err.leader_id)
                else:
                    raise self._error_for(resp.status, err.message, err.leader_id)
            self.retries += 1
            await asyncio.sleep(min(delay * (0.5 + self._rng.random()), max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, self._backoff_max_s)
        if isinstance(last, (Overloaded, Unavailable)):
            raise type(last)(f"{last} (gave up after {timeout_s:.1f} s)")
        raise Timeout(f"no answer within {timeout_s:.1f} s; last error: {last}")

    def _follow_hint(self, address: str) -> bool:
        """Switch to the leader a NotLeader named; False when the hint is empty or bad."""
        if not address:
            return False
        try:
            parse_address(address)
        except InvalidArgument:
            return False
        if address not in self.addresses:
            self.addresses.append(address)
        target = self.addresses.index(address)
        if target == self._target:
            return False
        self._target = target
        self.leader_changes_seen += 1
        self._drop_session()
        return True

    async def _connected(self, timeout_s: float) -> _Session:
        session = self._session
        if session is not None and session.usable:
            return session
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            session = self._session
            if session is not None and session.usable:
                return session
            refused: Unauthenticated | None = None
            # A token just created is known to the leader first: a follower that has not
            # applied it yet refuses it, so a refused token is tried at every node before the
            # refusal stands.
            for step in range(len(self.addresses) if self._token is not None else 1):
                target = (self._target + step) % len(self.addresses)
                session = _Session(self.addresses[target], self._frame_bytes_max, self._token, self._tls)
                try:
                    await session.open(timeout_s)
                except Unauthenticated as exc:
                    refused = refused or exc
                    continue
                self._target = target
                self._session = session
                return session
            assert refused is not None
            raise refused

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    @staticmethod
    def _error_for(status: Status, message: str, leader_id: int) -> EscError:
        if status is Status.NOT_LEADER:
            return NotLeader(message, leader_id, message or None)
        if status is Status.UNAVAILABLE:
            return Unavailable(message)
        if status is Status.OVERLOADED:
            return Overloaded(message)
        if status is Status.TIMEOUT:
            return Timeout(message)
        if status is Status.OUT_OF_RANGE:
            return OutOfRange(message)
        if status is Status.INVALID_ARGUMENT:
            return InvalidArgument(message)
        if status is Status.REFUSED:
            return Refused(message)
        if status is Status.UNAUTHENTICATED:
            return Unauthenticated(message)
        if status is Status.PERMISSION_DENIED:
            return PermissionDenied(message)
        return EscError(f"server error: {message}")

    def _raise_for(self, resp: Response) -> None:
        if resp.status is not Status.OK:
            err = decode_error(resp.body)
            raise self._error_for(resp.status, err.message, err.leader_id)


class Client:
    """Blocking client: runs an AsyncClient on a private event loop thread.

    with Client(["127.0.0.1:7101", "127.0.0.1:7102"]) as c:
        r = c.append(b"payload", key="user-1")
    """

    def __init__(self, addresses: Sequence[str] | str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="esc-client", daemon=True)
        self._thread.start()
        self._async = AsyncClient(addresses, **options)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def append(self, payload: bytes, key: bytes | str | None = None, event_id: bytes | str | None = None,
               queue: int | None = None, timestamp_us: int | None = None) -> AppendResult:
        return self._run(self._async.append(payload, key, event_id, queue, timestamp_us))

    def append_batch(self, events: Iterable[EventIn | Mapping[str, Any] | bytes]) -> list[AppendResult]:
        return self._run(self._async.append_batch(list(events)))

    def read(self, queue: int, offset: int, limit: int = 1000, max_bytes: int = 4 * 1024 * 1024,
             consistency: str = "linearizable") -> list[ReadEvent]:
        return self._run(self._async.read(queue, offset, limit, max_bytes, consistency))

    def read_page(self, queue: int, offset: int, limit: int = 1000, max_bytes: int = 4 * 1024 * 1024,
                  consistency: str = "linearizable") -> tuple[list[ReadEvent], int]:
        return self._run(self._async.read_page(queue, offset, limit, max_bytes, consistency))

    def read_to_end(self, queue: int, offset: int = 0, events_max: int = 1_000_000,
                    consistency: str = "linearizable") -> list[ReadEvent]:
        return self._run(self._async.read_to_end(queue, offset, events_max, consistency))

    def config_update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        return self._run(self._async.config_update(changes))

    def config_get(self) -> dict[str, Any]:
        return self._run(self._async.config_get())

    def status(self, address: str | None = None, digest: bool = False) -> dict[str, Any]:
        return self._run(self._async.status(address, digest))

    def members(self) -> dict[str, Any]:
        return self._run(self._async.members())

    def add_member(self, node_id: int, address: str, learner: bool = True, force: bool = False) -> dict[str, Any]:
        return self._run(self._async.add_member(node_id, address, learner, force))

    def promote_member(self, node_id: int, force: bool = False) -> dict[str, Any]:
        return self._run(self._async.promote_member(node_id, force))

    def remove_member(self, node_id: int, force: bool = False) -> dict[str, Any]:
        return self._run(self._async.remove_member(node_id, force))

    def snapshot(self) -> dict[str, Any]:
        return self._run(self._async.snapshot())

    @property
    def retries(self) -> int:
        return self._async.retries


def _expire(fut: asyncio.Future[Response]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


def _b(value: bytes | str | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return value.encode()
