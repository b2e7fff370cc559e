from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstream.transport.client_protocol import (
    Consistency,
    Op,
    ProtocolError,
    ReadRequest,
    Status,
    decode_append_ok,
    decode_error,
    decode_json_object,
    decode_read,
    decode_read_ok,
    decode_request,
    decode_response,
    decode_status_options,
    encode_append_ok,
    encode_error,
    encode_json,
    encode_read,
    encode_read_ok,
    encode_request,
    encode_response,
    encode_status_options,
)


def test_request_header_is_op_then_request_id() -> None:
    frame = encode_request(Op.READ, 0x0102030405060708, b"xy")
    assert frame == bytes([2]) + bytes.fromhex("0807060504030201") + b"xy"
    req = decode_request(frame)
    assert (req.op, req.request_id, bytes(req.body)) == (Op.READ, 0x0102030405060708, b"xy")


@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.sampled_from(list(Consistency)),
)
def test_read_request_round_trips(q: int, off: int, limit: int, max_bytes: int, c: Consistency) -> None:
    req = ReadRequest(q, off, limit, max_bytes, c)
    assert decode_read(encode_read(req)) == req


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.booleans()), max_size=50), st.integers(0, 2**64 - 1))
def test_append_ok_round_trips(rows: list[tuple[int, int, bool]], index: int) -> None:
    queues = array("I", [r[0] for r in rows])
    offsets = array("Q", [r[1] for r in rows])
    dups = bytes(int(r[2]) for r in rows)
    frame = encode_response(Status.OK, 9, encode_append_ok(index, queues, offsets, dups))
    resp = decode_response(frame)
    ok = decode_append_ok(resp.body)
    assert (ok.index, list(ok.queues), list(ok.offsets), ok.duplicates) == (index, list(queues), list(offsets), dups)


def test_error_carries_leader_hint_and_message() -> None:
    resp = decode_response(encode_error(Status.NOT_LEADER, 5, "node 2 leads", leader_id=2))
    assert resp.status is Status.NOT_LEADER and resp.request_id == 5
    err = decode_error(resp.body)
    assert (err.leader_id, err.message) == (2, "node 2 leads")


def test_read_ok_round_trips() -> None:
    ok = decode_read_ok(decode_response(encode_response(Status.OK, 1, encode_read_ok(10, 12, b"batch"))).body)
    assert (ok.first_offset, ok.next_offset, bytes(ok.batch)) == (10, 12, b"batch")


@pytest.mark.parametrize(
    "frame, message",
    [
        (b"\x01", "shorter than"),
        (bytes([99]) + b"\x00" * 8, "unknown request op 99"),
    ],
)
def test_malformed_requests_are_protocol_errors(frame: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_request(frame)


def test_malformed_bodies_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError):
        decode_read(b"\x00" * 5)
    with pytest.raises(ProtocolError):
        decode_append_ok(encode_append_ok(1, array("I", [1]), array("Q", [2]), b"\x00")[:-1])
    with pytest.raises(ProtocolError):
        decode_json_object(b"[1, 2]")
    with pytest.raises(ProtocolError):
        decode_json_object(b"\xff")
    assert decode_json_object(encode_json({"b": 1, "a": [2]})) == {"a": [2], "b": 1}


def test_status_options_round_trip_and_refuse_what_they_do_not_know() -> None:
    # An empty body is a plain status, as clients before the options sent it.
    assert encode_status_options() == b"" and decode_status_options(b"") == {}
    assert decode_status_options(encode_status_options(digest=True)) == {"digest": True}
    for body, fragment in ((b'{"verbose": true}', "unknown status option"), (b'{"digest": 1}', "must be bool"),
                           (b"[true]", "JSON object"), (b"\xff", "not valid JSON")):
        with pytest.raises(ProtocolError, match=fragment):
            decode_status_options(body)


@given(st.binary(max_size=64))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    for decode in (decode_request, decode_response):
        try:
            decode(data)
        except ProtocolError:
            pass
