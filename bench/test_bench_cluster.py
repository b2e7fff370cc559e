"""End to end through a local 3-node cluster: real `esc node` processes on loopback,
the client protocol, replication, fdatasync (wal_sync on) and apply, measured from a client.

Two shapes, each with wal_sync on and off:
- batched: one round sends ROUND_BATCHES batches of 1000 100-byte events with IN_FLIGHT of them
  in flight; extra_info carries acknowledged events/s of the median round.
- single event: one event per append, one at a time; the round time is the append latency, and
  extra_info carries its p50/p99.

The cluster shares the 2 cores with this process and with anything else running, so these move
more between runs than the in-process suites; `esc-bench` (same cluster, client processes,
HdrHistogram) is the tool for the figures in bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventstream.client import AsyncClient
from eventstream.local_cluster import LocalCluster
from eventstream.storage.codec import encode_batch

BATCH_EVENTS = 1000
PAYLOAD_BYTES = 100
ROUND_BATCHES = 32
IN_FLIGHT = 8
BATCH_ROUNDS = 5
SINGLE_ROUNDS = 300
KEYS = 64


class Driver:
    """A client on a private event loop, so each benchmark round is one synchronous call."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = AsyncClient(cluster.addresses, timeout_s=30.0)
        self.payload = os.urandom(PAYLOAD_BYTES)

    def batch(self, events: int) -> bytes:
        ids = os.urandom(16 * events)
        keys = [b"key-%d" % k for k in range(KEYS)]
        return encode_batch([(ids[16 * i: 16 * i + 16], keys[i % KEYS], None, 1_700_000_000_000_000, self.payload)
                             for i in range(events)])

    def append(self, batch: bytes) -> int:
        return len(self.loop.run_until_complete(self.client.append_encoded(batch)).offsets)

    def append_many(self, batches: list[bytes]) -> int:
        async def send_all() -> int:
            gate = asyncio.Semaphore(IN_FLIGHT)

            async def one(batch: bytes) -> int:
                async with gate:
                    return len((await self.client.append_encoded(batch)).offsets)

            return sum(await asyncio.gather(*(one(b) for b in batches)))

        return self.loop.run_until_complete(send_all())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(scope="module", params=[True, False], ids=["sync_on", "sync_off"])
def driver(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    root = Path(tmp_path_factory.mktemp("bench-cluster"))
    cluster = LocalCluster(root, 3, wal_sync=request.param, log_level="warning").start()
    try:
        cluster.leader(timeout=30)
        driver = Driver(cluster)
        try:
            driver.append(driver.batch(1))  # connect and find the leader outside the timings
            yield driver
        finally:
            driver.close()
    finally:
        cluster.stop()


def test_cluster_append_batches_of_1000(benchmark: Any, driver: Driver) -> None:
    rounds = [[driver.batch(BATCH_EVENTS) for _ in range(ROUND_BATCHES)] for _ in range(BATCH_ROUNDS + 1)]
    it = iter(rounds)
    acknowledged = benchmark.pedantic(lambda: driver.append_many(next(it)), rounds=BATCH_ROUNDS,
                                      warmup_rounds=1, iterations=1)
    assert acknowledged == ROUND_BATCHES * BATCH_EVENTS
    benchmark.extra_info["events_per_s"] = round(ROUND_BATCHES * BATCH_EVENTS / benchmark.stats.stats.median)


def test_cluster_append_single_event(benchmark: Any, driver: Driver) -> None:
    batches = [driver.batch(1) for _ in range(SINGLE_ROUNDS + 10)]
    it = iter(batches)
    acknowledged = benchmark.pedantic(lambda: driver.append(next(it)), rounds=SINGLE_ROUNDS,
                                      warmup_rounds=10, iterations=1)
    assert acknowledged == 1
    timings = benchmark.stats.stats.sorted_data
    benchmark.extra_info["latency_ms_p50"] = round(benchmark.stats.stats.median * 1000, 3)
    benchmark.extra_info["latency_ms_p99"] = round(timings[int(len(timings) * 0.99) - 1] * 1000, 3)
