"""The first frame of every connection to a node's listen port: who is calling, and as what.

Peers and clients share one listen address (`--listen`), so the first frame says which protocol
follows. Byte layout (little-endian)::

    offset  size  field
    0       4     magic      b"ESC\\x01" (the last byte is the protocol version)
    4       1     role       1 = peer, 2 = client, 3 = replication (a leader's pool worker)
    5       8     sender_id  the calling node's id (peers); 0 for clients
    13      8     target_id  the node id the caller believes it reached (peers); 0 for clients

A peer that reaches the wrong node (a swapped address in a config) is refused at once instead
of feeding its messages to a stranger's Raft core.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"ESC\x01"
ROLE_PEER = 1
ROLE_CLIENT = 2
# A one-way link from a leader's replication worker to one follower (eventstream/replication/
# pool.py); the follower answers over the pair's peer link.
ROLE_REPLICATION = 3
_LAYOUT = struct.Struct("<4sBQQ")
HELLO_BYTES = _LAYOUT.size


class HelloError(ValueError):
    """The first frame of a connection is not a valid hello."""


@dataclass(frozen=True, slots=True)
class Hello:
    role: int
    sender_id: int = 0
    target_id: int = 0

    def encode(self) -> bytes:
        return _LAYOUT.pack(MAGIC, self.role, self.sender_id, self.target_id)

    @classmethod
    def decode(cls, body: bytes) -> Hello:
        if len(body) != HELLO_BYTES:
            raise HelloError(f"hello frame must be {HELLO_BYTES} bytes, got {len(body)}")
        magic, role, sender_id, target_id = _LAYOUT.unpack(body)
        if magic != MAGIC:
            raise HelloError(f"bad hello magic {magic!r}: not an EventStreamCore v1 peer or client")
        if role not in (ROLE_PEER, ROLE_CLIENT, ROLE_REPLICATION):
            raise HelloError(f"unknown hello role {role}")
        return cls(role, sender_id, target_id)
