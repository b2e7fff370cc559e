"""The parameters of one load run, as given on the command line (esc_bench/cli.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoadParams:
    clients: int
    concurrency: int  # requests in flight per client
    batch_size: int  # events per append request
    payload_bytes: int
    keys: int  # routing-key cardinality
    ids: bool
    read_ratio: float
    duration_s: float | None
    events: int | None
    warmup_s: float
    rate_events_per_s: float | None  # offered load over all clients: the open loop
    time_limit_s: float  # bound of an --events run after warm-up
    request_timeout_s: float
    report_interval_s: float
    seed: int
    # "client": worker.py (AsyncClient, `concurrency` requests in flight on one connection);
    # "native": native_worker.py (`concurrency` connections, one request at a time on each).
    engine: str = "client"
    # TLS (the cluster CA's ca.pem) and the client token, for a secured cluster; None: off.
    tls_ca: str | None = None
    token: str | None = None
