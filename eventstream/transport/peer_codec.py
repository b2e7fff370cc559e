"""Wire encoding of Raft messages between peers: one message per frame body.

Byte layout (little-endian)::

    offset  size  field
    0       1     version      1
    1       1     type         MessageType
    2       1     flags        bit 0 reject, bit 1 done, bits 2-7 n_learners
    3       1     n_members    voters + learners (a SNAPSHOT's membership; 0 otherwise)
    4       8     to
    12      8     sender
    20      8     term
    28      8     index
    36      8     log_term
    44      8     commit
    52      8     hint_index
    60      8     read_seq
    68      8     offset
    76      4     n_entries
    80      4     context_len
    84      4     data_len
    88      8*n_members         member ids: the voters, then the n_learners learners
    ...     12*n_entries        per entry: u64 term, u32 data length
    ...     context, data, then the entries' data back to back

Entry indexes are not sent: an APPEND's entries are contiguous from index + 1 (the
prevLogIndex), so the decoder rebuilds them and a gap cannot be expressed on the wire at all.
Entry data is sliced out of the received frame as memoryviews, not copied: a batch of events
goes from the socket buffer to the WAL without being re-encoded.
"""

from __future__ import annotations

import struct

from eventstream.raft.messages import Entry, Message, MessageType

VERSION = 1
_HEAD = struct.Struct("<BBBBQQQQQQQQQIII")
_ENTRY = struct.Struct("<QI")
_FLAG_REJECT = 1
_FLAG_DONE = 2
_LEARNERS_SHIFT = 2
LEARNERS_MAX = 0xFF >> _LEARNERS_SHIFT
_TYPES = {int(t): t for t in MessageType}

# Bounds a decoder enforces before it trusts a count from the wire.
VOTERS_MAX = 255
ENTRIES_MAX = 1 << 20


class PeerCodecError(ValueError):
    """A peer frame that is not a valid message; the link is closed and the peer redials."""


def encode_message(msg: Message) -> bytes:
    return b"".join(encode_message_parts(msg))


def encode_message_parts(msg: Message) -> list[bytes | bytearray | memoryview]:
    """The encoded message as buffers to concatenate: the entries' data is not copied, so a
    caller that writes the parts into its own buffer (the pool's shared ring) copies it once."""
    entries = msg.entries
    voters = msg.voters + msg.learners
    if len(voters) > VOTERS_MAX or len(msg.learners) > LEARNERS_MAX:
        raise PeerCodecError(f"{len(voters)} members ({len(msg.learners)} learners) exceeds "
                             f"{VOTERS_MAX} ({LEARNERS_MAX})")
    flags = ((_FLAG_REJECT if msg.reject else 0) | (_FLAG_DONE if msg.done else 0)
             | (len(msg.learners) << _LEARNERS_SHIFT))
    parts: list[bytes | bytearray | memoryview] = [
        _HEAD.pack(
            VERSION, msg.type, flags, len(voters), msg.to, msg.sender, msg.term, msg.index,
            msg.log_term, msg.commit, msg.hint_index, msg.read_seq, msg.offset,
            len(entries), len(msg.context), len(msg.data),
        )
    ]
    if voters:
        parts.append(struct.pack(f"<{len(voters)}Q", *voters))
    if entries:
        expected = msg.index + 1
        heads = bytearray(_ENTRY.size * len(entries))
        for k, entry in enumerate(entries):
            if entry.index != expected:
                raise PeerCodecError(f"entries not contiguous: {entry.index} after {expected - 1}")
            expected += 1
            _ENTRY.pack_into(heads, k * _ENTRY.size, entry.term, len(entry.data))
        parts.append(heads)
    parts.append(msg.context)
    parts.append(msg.data)
    parts.extend(entry.data for entry in entries)
    return parts


# The answers a follower gives to a leader's replication messages. When the leader replicates
# through a pool worker these go back on the worker's own link (transport/peers.py).
REPLICATION_ANSWER_TYPES = frozenset(
    {MessageType.APPEND_RESPONSE, MessageType.HEARTBEAT_RESPONSE, MessageType.SNAPSHOT_RESPONSE}
)


def is_replication_answer(body: bytes | bytearray | memoryview) -> bool:
    """Whether an encoded message is one of REPLICATION_ANSWER_TYPES (read from its type byte)."""
    return len(body) > 1 and body[1] in REPLICATION_ANSWER_TYPES


def decode_message(body: bytes | memoryview) -> Message:
    view = memoryview(body)
    size = len(view)
    if size < _HEAD.size:
        raise PeerCodecError(f"peer message of {size} bytes is shorter than its header")
    (version, mtype, flags, n_voters, to, sender, term, index, log_term, commit, hint_index,
     read_seq, offset, n_entries, context_len, data_len) = _HEAD.unpack_from(view)
    if version != VERSION:
        raise PeerCodecError(f"peer message version {version}, this node speaks {VERSION}")
    kind = _TYPES.get(mtype)
    if kind is None:
        raise PeerCodecError(f"unknown peer message type {mtype}")
    if n_entries > ENTRIES_MAX:
        raise PeerCodecError(f"{n_entries} entries exceeds {ENTRIES_MAX}")
    pos = _HEAD.size
    fixed_end = pos + 8 * n_voters + _ENTRY.size * n_entries
    if fixed_end + context_len + data_len > size:
        raise PeerCodecError("peer message is truncated")
    members = struct.unpack_from(f"<{n_voters}Q", view, pos) if n_voters else ()
    n_learners = flags >> _LEARNERS_SHIFT
    if n_learners > n_voters:
        raise PeerCodecError(f"{n_learners} learners among {n_voters} members")
    voters, learners = members[: n_voters - n_learners], members[n_voters - n_learners :]
    pos += 8 * n_voters
    heads = [_ENTRY.unpack_from(view, pos + k * _ENTRY.size) for k in range(n_entries)]
    pos = fixed_end
    context = bytes(view[pos : pos + context_len])
    pos += context_len
    data = bytes(view[pos : pos + data_len])
    pos += data_len
    entries: list[Entry] = []
    next_index = index + 1
    for entry_term, length in heads:
        end = pos + length
        if end > size:
            raise PeerCodecError("peer message entry data is truncated")
        entries.append(Entry(next_index, entry_term, view[pos:end]))  # type: ignore[arg-type]
        next_index += 1
        pos = end
    if pos != size:
        raise PeerCodecError(f"peer message has {size - pos} trailing bytes")
    return Message(
        kind, to, sender, term, index, log_term, commit, entries, bool(flags & _FLAG_REJECT),
        hint_index, read_seq, context, offset, data, bool(flags & _FLAG_DONE), tuple(voters),
        tuple(learners),
    )
