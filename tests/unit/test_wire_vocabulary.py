"""The native modules and the Python codecs speak one wire vocabulary.

Every code and size the C side uses comes from four headers (csrc/frame_format.h,
client_protocol.h, peer_message.h, state_commands.h); eventstream.transport._frames reports the values it
was compiled with. Each is compared here with what the owning Python codec actually produces,
so a change on one side alone fails this test instead of a cluster run.
"""

from __future__ import annotations

from array import array
from typing import Any

import pytest

from eventstream.raft.membership import MEMBERSHIP_ENTRY_TAG, Membership, encode_membership_entry
from eventstream.raft.messages import Entry, Message, MessageType
from eventstream.state import commands
from eventstream.state.commands import CommandType
from eventstream.transport import client_protocol, frames, hello, peer_codec
from eventstream.transport._frames import native_wire_vocabulary
from eventstream.transport.client_protocol import Op, Status


@pytest.fixture(scope="module")
def native() -> dict[str, Any]:
    return native_wire_vocabulary()


def test_frame_head(native: dict[str, Any]) -> None:
    assert native["frame_head_bytes"] == frames.HEADER_BYTES
    body = b"abc"
    assert len(frames.frame_header(len(body), 0)) == native["frame_head_bytes"]


def test_op_and_status_codes(native: dict[str, Any]) -> None:
    assert native["ops"] == {op.name: int(op) for op in Op}
    assert native["statuses"] == {status.name: int(status) for status in Status}
    assert native["status_last"] == max(Status)


def test_client_heads_and_answer_layout(native: dict[str, Any]) -> None:
    assert len(client_protocol.encode_request(Op.APPEND, 7)) == native["request_head_bytes"]
    assert native["request_head_bytes"] == client_protocol.REQUEST_HEADER_BYTES
    assert len(client_protocol.encode_response(Status.OK, 7)) == native["answer_head_bytes"]
    error = client_protocol.encode_error(Status.NOT_LEADER, 7, "")
    assert len(error) == native["answer_head_bytes"] + native["error_fixed_bytes"]

    def ok_bytes(n: int) -> int:
        return len(client_protocol.encode_append_ok(5, array("I", [1] * n), array("Q", [2] * n), bytes(n)))

    assert ok_bytes(0) == native["append_ok_fixed_bytes"]
    assert ok_bytes(3) - ok_bytes(2) == native["append_ok_row_bytes"]


def test_hello(native: dict[str, Any]) -> None:
    assert native["hello_magic"] == hello.MAGIC
    assert native["hello_bytes"] == hello.HELLO_BYTES
    assert len(hello.Hello(hello.ROLE_CLIENT, 0, 0).encode()) == native["hello_bytes"]
    assert native["hello_roles"] == {
        "PEER": hello.ROLE_PEER, "CLIENT": hello.ROLE_CLIENT, "REPLICATION": hello.ROLE_REPLICATION,
    }


def test_state_commands(native: dict[str, Any]) -> None:
    assert native["commands"] == {command.name: int(command) for command in CommandType}
    entry = commands.encode_set_event_at(123, [])
    assert entry[0] == native["commands"]["SET_EVENT_AT"]
    assert len(entry) - len(commands.encode_set_event([])) + 1 == native["set_event_at_head_bytes"]
    # The consensus core's membership entries share the first-byte namespace of the commands.
    assert encode_membership_entry(Membership.of((1, 2, 3)))[0] == native["commands"]["MEMBERSHIP"]
    assert MEMBERSHIP_ENTRY_TAG == CommandType.MEMBERSHIP


def test_peer_message_head(native: dict[str, Any]) -> None:
    assert native["message_version"] == peer_codec.VERSION
    assert native["message_entries_max"] == peer_codec.ENTRIES_MAX
    bare = peer_codec.encode_message(Message(MessageType.APPEND_RESPONSE, to=2, sender=1, term=3, reject=True))
    assert len(bare) == native["message_head_bytes"]
    assert bare[0] == native["message_version"]
    assert bare[2] & native["message_flag_reject"]
    learners = peer_codec.encode_message(Message(MessageType.SNAPSHOT, 2, 1, 3, voters=(1,), learners=(2, 3)))
    assert learners[2] >> native["message_learners_shift"] == 2
    one = peer_codec.encode_message(Message(MessageType.APPEND, 2, 1, 3, entries=[Entry(1, 3, b"")]))
    assert len(one) - len(bare) == native["message_entry_row_bytes"]
    entries_at, context_at, data_at = native["message_at_counts"]
    assert int.from_bytes(one[entries_at:entries_at + 4], "little") == 1
    with_data = peer_codec.encode_message(Message(MessageType.SNAPSHOT, 2, 1, 3, context=b"ab", data=b"xyz"))
    assert int.from_bytes(with_data[context_at:context_at + 4], "little") == 2
    assert int.from_bytes(with_data[data_at:data_at + 4], "little") == 3
    assert native["message_types"] == {
        name: int(MessageType[name]) for name in native["message_types"]
    }
    assert native["message_type_max"] == max(MessageType)
