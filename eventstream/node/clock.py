"""The node's only window on time. Every part of the node reads time through a Clock, so a
test can hand it a ManualClock and move time instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock no wall-clock step moves: timeouts, deadlines, rate limits."""

    def monotonic_ns(self) -> int: ...

    def wall(self) -> float:
        """Seconds since the epoch: start times and ages shown to operators."""

    def wall_ns(self) -> int: ...

    def perf(self) -> float:
        """The finest clock, for durations put on metrics (an fdatasync)."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall(self) -> float:
        return time.time()

    def wall_ns(self) -> int:
        return time.time_ns()

    def perf(self) -> float:
        return time.perf_counter()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when told (advance); sleep yields to the loop without waiting."""

    __slots__ = ("_mono_ns", "_wall_ns")

    def __init__(self, monotonic_s: float = 1000.0, wall_s: float = 1_700_000_000.0) -> None:
        self._mono_ns = int(monotonic_s * 1e9)
        self._wall_ns = int(wall_s * 1e9)

    def advance(self, seconds: float) -> None:
        step = int(seconds * 1e9)
        self._mono_ns += step
        self._wall_ns += step

    def step_wall(self, seconds: float) -> None:
        """Move the wall clock alone, as NTP or `date -s` does."""
        self._wall_ns += int(seconds * 1e9)

    def monotonic(self) -> float:
        return self._mono_ns / 1e9

    def monotonic_ns(self) -> int:
        return self._mono_ns

    def wall(self) -> float:
        return self._wall_ns / 1e9

    def wall_ns(self) -> int:
        return self._wall_ns

    def perf(self) -> float:
        return self._mono_ns / 1e9

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)
