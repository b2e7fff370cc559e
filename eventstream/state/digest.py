"""State digest: one hash of the full logical state (docs/state-machine.md, "Digest").

Covers the last applied index, the configuration (canonical JSON), every queue that ever held an
event (number, retention floor, next offset, newest timestamp, each segment's base, size and
sealed flag, and every retained record byte) and the dedup entries in arrival order: the ids
callers chose, then, only when there are any, the ids the client library generated (so a state
without them hashes as it did before they had their own class). Replicas that applied the same
entries have the same digest; a restored snapshot must reproduce the digest recorded when it
was cut. BLAKE2b-256; the hashing of file bytes releases the GIL.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Mapping
from typing import Any

from eventstream.state._state import DedupView
from eventstream.state.config import canonical_json
from eventstream.state.queues import segment_prefix_pieces


def state_digest(
    applied_index: int,
    config: Mapping[str, Any],
    queues: list[dict[str, Any]],
    root: str,
    dedup: tuple[DedupView, DedupView],
    on_segment_piece: Callable[[dict[str, Any], bytes], None] | None = None,
) -> str:
    """Hex digest; `queues` is QueueStore.describe(), segment files are read under `root`,
    `dedup` is the frozen views of the dedup entries (DedupTable.freeze()). `on_segment_piece`
    sees every segment byte as it is hashed, so a caller needing checksums too reads once."""
    h = hashlib.blake2b(digest_size=32)
    h.update(b"eventstream-state-v1")
    h.update(struct.pack("<Q", applied_index))
    config_bytes = canonical_json(config)
    h.update(struct.pack("<Q", len(config_bytes)) + config_bytes)
    h.update(struct.pack("<Q", len(queues)))
    for queue in queues:
        segments = queue["segments"]
        floor = segments[0]["base_offset"] if segments else queue["next_offset"]
        h.update(
            struct.pack(
                "<IqqqQ",
                queue["queue"],
                floor,
                queue["next_offset"],
                queue["newest_timestamp_us"],
                len(segments),
            )
        )
        for segment in segments:
            h.update(
                struct.pack("<qQ?", segment["base_offset"], segment["bytes"], segment["sealed"])
            )
            for piece in segment_prefix_pieces(
                os.path.join(root, segment["file"]), segment["bytes"]
            ):
                h.update(piece)
                if on_segment_piece is not None:
                    on_segment_piece(segment, piece)
    caller, generated = dedup
    h.update(struct.pack("<Q", len(caller)))
    for piece in caller.pieces():
        h.update(piece)
    if len(generated):
        h.update(b"generated" + struct.pack("<Q", len(generated)))
        for piece in generated.pieces():
            h.update(piece)
    return h.hexdigest()
