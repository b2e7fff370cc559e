"""Event batching codec: many events in one Raft entry payload.

The byte layout is documented in csrc/batch_codec.h (the one parser, shared with other native
modules); eventstream/storage/codec_reference.py is its pure-Python twin for tests.
"""

from __future__ import annotations

from eventstream.storage._codec import (
    BATCH_BYTES_MAX,
    BATCH_EVENTS_MAX,
    BATCH_HEADER_BYTES,
    BATCH_VERSION,
    EVENT_BYTES_MAX,
    EVENT_HEADER_BYTES,
    EVENT_ID_BYTES_MAX,
    EVENT_KEY_BYTES_MAX,
    QUEUE_LIMIT,
    BatchView,
    decode_batch,
    encode_batch,
)
from eventstream.storage.errors import CodecError
from eventstream.storage.event import Event

__all__ = [
    "BATCH_BYTES_MAX",
    "BATCH_EVENTS_MAX",
    "BATCH_HEADER_BYTES",
    "BATCH_VERSION",
    "EVENT_BYTES_MAX",
    "EVENT_HEADER_BYTES",
    "EVENT_ID_BYTES_MAX",
    "EVENT_KEY_BYTES_MAX",
    "QUEUE_LIMIT",
    "BatchView",
    "CodecError",
    "Event",
    "decode_batch",
    "encode_batch",
]
