"""State machine commands: the bytes inside a Raft entry (docs/state-machine.md, "Commands").

Contract with the node and the leader:
  * A Raft entry's data IS the command: byte 0 is the command type, the rest is its body.
  * An EMPTY entry is the Raft leader's no-op (Raft paper section 8: a leader commits an entry of
    its own term at the start of its term): nothing is applied, the applied index advances.
  * Bodies, all integers little-endian:
      SET_EVENT      (1)  one event batch in the csrc/batch_codec.h layout. Each event goes to
                          its explicit queue if it names one (it must be below queue_count at
                          apply time, else that event is refused: STATUS_BAD_QUEUE), otherwise
                          to mmh3.hash(key, signed=False) % queue_count; an event with neither
                          hashes the empty key, so all such events share one queue.
                          Each id is remembered as first seen at its event's own timestamp, so
                          an event stamped earlier than the dedup window (a backfill, a client
                          whose clock is behind) is forgotten at the next DEDUP_EXPIRE: kept for
                          logs written before SET_EVENT_AT; the node proposes SET_EVENT_AT.
      DEDUP_ADD      (2)  u32 count, then per id: u16 id_len (1..256), i64 first_seen_us, id.
      DEDUP_EXPIRE   (3)  i64 cutoff_us, i64 generated_cutoff_us: forget ids callers chose
                          first seen before cutoff_us, and ids the client library generated
                          first seen before generated_cutoff_us. The LEADER computes both from
                          its clock (dedup_cutoffs_us); apply never reads a clock. A body of
                          cutoff_us alone (logs written before generated ids had their own
                          window) applies it to both.
      CONFIG_UPDATE  (4)  UTF-8 JSON object, keys sorted, validated before it is proposed.
      MEMBERSHIP     (6)  a cluster membership entry of the consensus core (its layout:
                          eventstream/raft/membership.py). Nothing to apply here: the state
                          machine only counts its index as applied.
      SET_EVENT_AT   (5)  i64 first_seen_us, then a SET_EVENT batch: as SET_EVENT, but every id
                          is remembered as first seen at first_seen_us, the LEADER's clock when
                          it proposed the entry, whatever the events' own timestamps say. An id
                          then stays for dedup_window after the cluster first saw it.
  * Any other first byte, or a body that does not parse, in a COMMITTED entry is corruption or a
    version mismatch: apply stops with an error naming the index (never skips).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from enum import IntEnum
from typing import Any

from eventstream.state.config import canonical_json, validate_config
from eventstream.storage.codec import EVENT_ID_BYTES_MAX, Event, encode_batch


class CommandType(IntEnum):
    SET_EVENT = 1
    DEDUP_ADD = 2
    DEDUP_EXPIRE = 3
    CONFIG_UPDATE = 4
    SET_EVENT_AT = 5
    MEMBERSHIP = 6


# SET_EVENT_AT's head: the command byte, then the i64 time its ids are first seen at.
SET_EVENT_AT_HEAD = struct.Struct("<Bq")
# The commands whose result is per-event (statuses, queues, offsets).
EVENT_COMMANDS = frozenset((CommandType.SET_EVENT, CommandType.SET_EVENT_AT))


DEDUP_ADD_IDS_MAX = 65536
_SET_EVENT = bytes([CommandType.SET_EVENT])


def encode_set_event(events: Sequence[Event]) -> bytes:
    """SET_EVENT for a list of events (codec limits apply; CodecError names a bad event)."""
    return _SET_EVENT + encode_batch(events)


def encode_set_event_batch(batch: bytes | memoryview) -> bytes:
    """SET_EVENT around a batch the leader's batcher already encoded."""
    return _SET_EVENT + bytes(batch)


def encode_set_event_at(first_seen_us: int, events: Sequence[Event]) -> bytes:
    """SET_EVENT_AT: the events, their ids remembered as first seen at first_seen_us."""
    return SET_EVENT_AT_HEAD.pack(CommandType.SET_EVENT_AT, first_seen_us) + encode_batch(events)


def encode_dedup_add(ids: Iterable[tuple[bytes, int]]) -> bytes:
    """DEDUP_ADD for (event_id, first_seen_us) pairs."""
    parts = []
    count = 0
    for event_id, first_seen_us in ids:
        if not isinstance(event_id, bytes) or not 1 <= len(event_id) <= EVENT_ID_BYTES_MAX:
            raise ValueError(f"event id must be 1..{EVENT_ID_BYTES_MAX} bytes, got {event_id!r}")
        parts.append(struct.pack("<Hq", len(event_id), first_seen_us) + event_id)
        count += 1
    if not 1 <= count <= DEDUP_ADD_IDS_MAX:
        raise ValueError(f"DEDUP_ADD carries 1..{DEDUP_ADD_IDS_MAX} ids, got {count}")
    return bytes([CommandType.DEDUP_ADD]) + struct.pack("<I", count) + b"".join(parts)


DEDUP_EXPIRE_BODY = struct.Struct("<qq")
DEDUP_EXPIRE_LEGACY_BODY = struct.Struct("<q")


def encode_dedup_expire(cutoff_us: int, generated_cutoff_us: int | None = None) -> bytes:
    """DEDUP_EXPIRE; without generated_cutoff_us, the one-cut-off body older logs hold."""
    if generated_cutoff_us is None:
        return bytes([CommandType.DEDUP_EXPIRE]) + DEDUP_EXPIRE_LEGACY_BODY.pack(cutoff_us)
    return bytes([CommandType.DEDUP_EXPIRE]) + DEDUP_EXPIRE_BODY.pack(cutoff_us, generated_cutoff_us)


def dedup_cutoffs_us(leader_now_us: int, config: Mapping[str, Any]) -> tuple[int, int]:
    """The cut-offs the leader writes into DEDUP_EXPIRE: its clock minus each class's window."""
    return (leader_now_us - config["dedup_window_ms"] * 1000,
            leader_now_us - config["dedup_generated_window_ms"] * 1000)


def encode_config_update(update: Mapping[str, Any]) -> bytes:
    """CONFIG_UPDATE; raises ConfigError before anything is built for an invalid value."""
    return bytes([CommandType.CONFIG_UPDATE]) + canonical_json(validate_config(update))
