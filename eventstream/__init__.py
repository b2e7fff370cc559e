"""EventStreamCore: a Raft-replicated event-ingestion node with a native hot path.

    from eventstream import Client, AsyncClient
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from eventstream.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `esc --version` and the pure modules do not load the native
    # extensions and the asyncio client.
    if name in ("Client", "AsyncClient"):
        from eventstream import client

        return getattr(client, name)
    raise AttributeError(f"module 'eventstream' has no attribute {name!r}")
