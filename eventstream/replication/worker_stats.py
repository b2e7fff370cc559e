"""The shape of the statistics a replication worker reports, shared by the worker that counts
and the node's metrics that export them, so /metrics needs nothing of the worker process."""

from __future__ import annotations

# Upper bounds of the order-wait histogram: from the node writing an APPEND order to the worker
# taking it. Its tail is the wake-up delay of a sleeping worker (doorbell, then the scheduler).
ORDER_WAIT_BOUNDS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
