"""A TCP proxy that delays every byte by a fixed time in each direction (this kernel has no
`tc netem`). It runs its own event loop on a thread; each accepted connection gets a fresh
connection to the upstream address, and each direction forwards chunks in order, each written
`delay_s` after it was read. Closing either side closes both."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque


class DelayProxy:
    def __init__(self, upstream: tuple[str, int], delay_s: float, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self.host = host
        self.port = 0
        self.bytes_forwarded = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> DelayProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()

    async def _accept(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            down_w.close()
            return
        self._writers |= {down_w, up_w}
        await asyncio.gather(self._pump(down_r, up_w), self._pump(up_r, down_w), return_exceptions=True)
        for w in (down_w, up_w):
            w.close()
            self._writers.discard(w)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Chunks read now are written delay_s later, in order (a second task writes them)."""
        held: deque[tuple[float, bytes]] = deque()
        arrived = asyncio.Event()
        done = False

        async def deliver() -> None:
            while held or not done:
                if not held:
                    arrived.clear()
                    await arrived.wait()
                    continue
                due, chunk = held[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                held.popleft()
                writer.write(chunk)
                self.bytes_forwarded += len(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while chunk := await reader.read(65536):
                held.append((time.monotonic() + self.delay_s, chunk))
                arrived.set()
        finally:
            done = True
            arrived.set()
            await sender
            writer.close()
