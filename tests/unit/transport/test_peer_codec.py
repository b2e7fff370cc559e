"""The peer message codec: every field round-trips, a SNAPSHOT carries its whole membership,
and a frame that lies about its counts is refused with the reason."""

from __future__ import annotations

import pytest

from eventstream.raft import Entry, Message, MessageType
from eventstream.transport.peer_codec import PeerCodecError, decode_message, encode_message

MT = MessageType


def test_an_append_round_trips():
    m = Message(MT.APPEND, 2, 1, 7, index=10, log_term=6, commit=9,
                entries=[Entry(11, 7, b"a"), Entry(12, 7, b"bc")], read_seq=3)
    back = decode_message(encode_message(m))
    assert [(e.index, e.term, bytes(e.data)) for e in back.entries] == [(11, 7, b"a"), (12, 7, b"bc")]
    assert (back.type, back.to, back.sender, back.term, back.index, back.log_term, back.commit) == (
        MT.APPEND, 2, 1, 7, 10, 6, 9)


def test_a_snapshot_chunk_carries_voters_learners_and_the_membership_context():
    m = Message(MT.SNAPSHOT, 4, 1, 3, index=50, log_term=2, voters=(1, 2, 3), learners=(4, 5),
                context=b'{"4":"h:1"}', offset=64, data=b"image", done=True)
    back = decode_message(encode_message(m))
    assert back.voters == (1, 2, 3) and back.learners == (4, 5)
    assert back.context == b'{"4":"h:1"}' and back.data == b"image" and back.done and not back.reject


def test_more_learners_than_members_is_refused():
    body = bytearray(encode_message(Message(MT.SNAPSHOT, 4, 1, 3, voters=(1,), learners=(2,))))
    body[2] |= 3 << 2  # three learners among two members
    with pytest.raises(PeerCodecError, match="3 learners among 2 members"):
        decode_message(bytes(body))


def test_a_truncated_message_is_refused():
    body = encode_message(Message(MT.APPEND, 2, 1, 1, entries=[Entry(1, 1, b"xyz")]))
    with pytest.raises(PeerCodecError, match="truncated"):
        decode_message(body[:-1])
