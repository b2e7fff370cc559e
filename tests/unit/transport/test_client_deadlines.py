"""The client's per-session deadline sweep (client.py _Session): a node that never answers
makes every request fail in about its timeout, and nothing is left pending."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from eventstream.client import AsyncClient
from eventstream.errors import Overloaded, Timeout, Unavailable
from eventstream.storage._crc32c import crc32c
from eventstream.transport.client_protocol import Op, Status, decode_request, encode_error
from eventstream.transport.frames import FRAME_BYTES_MAX_DEFAULT, FrameDecoder, FrameEncoder


@contextlib.asynccontextmanager
async def _client_of_silent_node(timeout_s: float, attempt_timeout_s: float) -> AsyncIterator[AsyncClient]:
    server, address = await _silent_server()
    client = AsyncClient([address], timeout_s=timeout_s, attempt_timeout_s=attempt_timeout_s)
    try:
        yield client
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def _silent_server() -> tuple[asyncio.AbstractServer, str]:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass  # reads every request, answers none
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}"


async def _slow_overloaded_server(delay_s: float) -> tuple[asyncio.AbstractServer, str]:
    """Answers every request OVERLOADED after delay_s, as a leader with a full dedup table
    does once the refused entry has committed."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(crc32c, FRAME_BYTES_MAX_DEFAULT)
        encoder = FrameEncoder(crc32c, FRAME_BYTES_MAX_DEFAULT)
        hello_seen = False
        while data := await reader.read(65536):
            for body in decoder.feed(data):
                if not hello_seen:
                    hello_seen = True
                    continue
                request = decode_request(body)
                await asyncio.sleep(delay_s)
                writer.writelines(encoder.encode(encode_error(Status.OVERLOADED, request.request_id,
                                                              "the dedup table is full")))
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}"


def test_the_clusters_answer_outlives_an_attempt_the_deadline_cut_short() -> None:
    """Attempts take 0.4 s against a 1.0 s budget, so the third gets only what is left and
    times out; the caller must still see the cluster's Overloaded, not an empty Unavailable."""
    async def run() -> None:
        server, address = await _slow_overloaded_server(0.4)
        client = AsyncClient([address], timeout_s=1.0, attempt_timeout_s=3.0)
        try:
            with pytest.raises(Overloaded, match=r"dedup table is full \(gave up after 1\.0 s\)"):
                await client.append(b"x", event_id=b"mine")
            assert client.retries >= 2
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    asyncio.run(run())


def test_a_timeout_says_how_long_the_attempt_waited() -> None:
    async def run() -> None:
        async with _client_of_silent_node(0.5, 0.2) as client:
            with pytest.raises(Unavailable, match=r"no answer within 0\.20 s"):
                await client.append(b"x", event_id=b"mine")

    asyncio.run(run())


def test_requests_to_a_silent_node_time_out_and_leave_nothing_pending() -> None:
    async def run() -> None:
        async with _client_of_silent_node(0.6, 0.2) as client:
            started = time.monotonic()
            results = await asyncio.gather(*(client.append(b"x") for _ in range(20)), return_exceptions=True)
            elapsed = time.monotonic() - started
            assert all(isinstance(r, (Timeout, Unavailable)) for r in results), results
            # Each call gives up at its overall deadline, not at some multiple of it.
            assert elapsed < 4.0
            session = client._session
            if session is not None:
                assert not session._pending and not session._deadlines

    asyncio.run(run())


def test_one_attempt_fails_after_its_own_timeout() -> None:
    async def run() -> None:
        async with _client_of_silent_node(5.0, 0.15) as client:
            session = await client._connected(1.0)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await session.call(Op.STATUS, b"", 0.15)
            assert 0.1 <= time.monotonic() - started < 2.0  # fires at its deadline, not before
            assert not session._pending and not session._deadlines

    asyncio.run(run())


def test_ids_the_library_makes_up_are_marked_and_retried_only_within_their_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event the caller gave no id gets a random one marked generated, which the cluster
    keeps only for dedup_generated_window_ms (at least twice GENERATED_ID_RETRY_S): such an
    append is retried for at most GENERATED_ID_RETRY_S, while one with the caller's ids keeps
    to timeout_s."""
    from eventstream import client as client_module
    from eventstream.storage.codec import decode_batch

    sent: list[tuple[bytes, float | None]] = []
    original = AsyncClient._call

    async def recording(self: AsyncClient, op: Op, body: bytes, any_node: bool = False,
                        timeout_s: float | None = None) -> object:
        if op is Op.APPEND:
            sent.append((body, timeout_s))
        return await original(self, op, body, any_node, timeout_s)

    monkeypatch.setattr(AsyncClient, "_call", recording)
    monkeypatch.setattr(client_module, "GENERATED_ID_RETRY_S", 0.4)

    async def run() -> None:
        async with _client_of_silent_node(1.5, 0.1) as client:
            with pytest.raises((Timeout, Unavailable), match=r"0\.4 s"):
                await client.append_batch([b"no id", {"payload": b"mine", "event_id": b"mine-1"}])
            with pytest.raises((Timeout, Unavailable), match=r"1\.5 s"):
                await client.append(b"mine", event_id=b"mine-2")

    asyncio.run(run())
    (mixed, mixed_timeout), (mine, mine_timeout) = sent
    view = decode_batch(mixed)
    assert [view.id_generated(0), view.id_generated(1)] == [True, False]
    assert len(view.event_id(0) or b"") == 16 and view.event_id(1) == b"mine-1"
    assert mixed_timeout == 0.4 and mine_timeout is None
    assert decode_batch(mine).id_generated(0) is False
