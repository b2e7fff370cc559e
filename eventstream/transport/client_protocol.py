"""The client protocol: request and response frame bodies, shared by the node and the client.

Every request and response is one frame body (see frames.py) on a connection that opened with a
client hello (hello.py). Many requests may be in flight on one connection; responses carry the
request id and may come back in any order. All integers little-endian.

Request body::

    offset  size  field
    0       1     op          Op below
    1       8     request_id  chosen by the client, echoed in the response
    9       ...   op body

    APPEND        the events as one batch in the storage codec's format, sent as-is into the log
    READ          u32 queue, u64 offset, u32 limit, u32 max_bytes, u8 consistency (0 linear, 1 stale)
    CONFIG_UPDATE UTF-8 JSON object of key -> value
    CONFIG_GET    empty
    STATUS        empty, or a UTF-8 JSON object of options: {"digest": true} adds the state
                  digest, which reads all retained data (STATUS_OPTIONS)
    SNAPSHOT      empty (take a snapshot now)
    MEMBERS       empty: the membership as this node knows it (any node answers)
    MEMBER_CHANGE UTF-8 JSON object {"change": "add-learner" | "add-voter" | "promote" | "remove",
                  "id": node id, "address": "host:port" (adds only), "force": bool}; the leader
                  answers once the change is applied, with the membership after it
    AUTH          the client's token, UTF-8; answered with its permissions. Once any token
                  exists (docs/operations.md, "Tokens"), every other request on a connection
                  needs one AUTH first

Response body::

    0       1     status      Status below; 0 = OK
    1       8     request_id
    9       ...   OK: op-specific body; error: u64 leader_id hint (0 = unknown), then a UTF-8 message

    APPEND OK     u64 raft index, u32 n, then n x u32 queue, n x u64 offset, n x u8 duplicate
    READ OK       u64 first_offset, u64 next_offset, then the events as one codec batch
    others OK     UTF-8 JSON
"""

from __future__ import annotations

import enum
import json
import struct
from array import array
from dataclasses import dataclass
from typing import Any

_REQ = struct.Struct("<BQ")
_RESP = struct.Struct("<BQ")
_READ = struct.Struct("<IQIIB")
_APPEND_OK = struct.Struct("<QI")
_READ_OK = struct.Struct("<QQ")
_LEADER_HINT = struct.Struct("<Q")
REQUEST_HEADER_BYTES = _REQ.size


class Op(enum.IntEnum):
    APPEND = 1
    READ = 2
    CONFIG_UPDATE = 3
    CONFIG_GET = 4
    STATUS = 5
    SNAPSHOT = 6
    MEMBERS = 7
    MEMBER_CHANGE = 8
    AUTH = 9


_OPS = {int(op): op for op in Op}


class Status(enum.IntEnum):
    OK = 0
    NOT_LEADER = 1
    TIMEOUT = 2
    UNAVAILABLE = 3
    INVALID_ARGUMENT = 4
    OVERLOADED = 5
    OUT_OF_RANGE = 6
    INTERNAL = 7
    # The cluster cannot take this change as it stands (a membership change pending, a learner
    # that lags, no live majority after it); the message says why and what to do.
    REFUSED = 8
    # No valid token was presented (AUTH), or the token was revoked.
    UNAUTHENTICATED = 9
    # The token does not allow this operation (or this queue).
    PERMISSION_DENIED = 10


class Consistency(enum.IntEnum):
    LINEARIZABLE = 0
    STALE = 1


class ProtocolError(ValueError):
    """A frame body that does not follow this protocol."""


@dataclass(frozen=True, slots=True)
class Request:
    op: Op
    request_id: int
    body: bytes | memoryview


@dataclass(frozen=True, slots=True)
class ReadRequest:
    queue: int
    offset: int
    limit: int
    max_bytes: int
    consistency: Consistency


@dataclass(frozen=True, slots=True)
class Response:
    status: Status
    request_id: int
    body: bytes | memoryview


@dataclass(frozen=True, slots=True)
class ErrorBody:
    leader_id: int
    message: str


@dataclass(frozen=True, slots=True)
class AppendOk:
    index: int
    queues: array  # type: ignore[type-arg]
    offsets: array  # type: ignore[type-arg]
    duplicates: bytes


@dataclass(frozen=True, slots=True)
class ReadOk:
    first_offset: int
    next_offset: int
    batch: bytes | memoryview


# -- requests ---------------------------------------------------------------------------------
def encode_request(op: Op, request_id: int, body: bytes | memoryview = b"") -> bytes:
    return _REQ.pack(op, request_id) + bytes(body)


def decode_request(frame: bytes) -> Request:
    if len(frame) < _REQ.size:
        raise ProtocolError(f"request of {len(frame)} bytes is shorter than its {_REQ.size}-byte header")
    code, request_id = _REQ.unpack_from(frame)
    op = _OPS.get(code)
    if op is None:
        raise ProtocolError(f"unknown request op {code}")
    return Request(op, request_id, memoryview(frame)[_REQ.size :])


def encode_read(req: ReadRequest) -> bytes:
    return _READ.pack(req.queue, req.offset, req.limit, req.max_bytes, req.consistency)


def decode_read(body: bytes | memoryview) -> ReadRequest:
    if len(body) != _READ.size:
        raise ProtocolError(f"READ body must be {_READ.size} bytes, got {len(body)}")
    queue, offset, limit, max_bytes, consistency = _READ.unpack(body)
    try:
        consistency = Consistency(consistency)
    except ValueError:
        raise ProtocolError(f"unknown read consistency {consistency}") from None
    return ReadRequest(queue, offset, limit, max_bytes, consistency)


def encode_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def decode_json_object(body: bytes | memoryview) -> dict[str, Any]:
    try:
        value = json.loads(bytes(body))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("body must be a JSON object")
    return value


# The options a STATUS request may carry, with their types.
STATUS_OPTIONS = {"digest": bool}


def encode_status_options(digest: bool = False) -> bytes:
    # Empty when nothing is asked: what nodes before the options understood.
    return encode_json({"digest": True}) if digest else b""


def decode_status_options(body: bytes | memoryview) -> dict[str, Any]:
    if not len(body):
        return {}
    options = decode_json_object(body)
    for key, value in options.items():
        kind = STATUS_OPTIONS.get(key)
        if kind is None:
            raise ProtocolError(f"unknown status option {key!r}; known: {', '.join(sorted(STATUS_OPTIONS))}")
        if type(value) is not kind:
            raise ProtocolError(f"status option {key!r} must be {kind.__name__}, got {value!r}")
    return options


# -- responses --------------------------------------------------------------------------------
def encode_response(status: Status, request_id: int, body: bytes | memoryview = b"") -> bytes:
    return _RESP.pack(status, request_id) + bytes(body)


def encode_error(status: Status, request_id: int, message: str, leader_id: int = 0) -> bytes:
    return _RESP.pack(status, request_id) + _LEADER_HINT.pack(leader_id) + message.encode()


def decode_response(frame: bytes) -> Response:
    if len(frame) < _RESP.size:
        raise ProtocolError(f"response of {len(frame)} bytes is shorter than its header")
    status, request_id = _RESP.unpack_from(frame)
    try:
        status = Status(status)
    except ValueError:
        raise ProtocolError(f"unknown response status {status}") from None
    return Response(status, request_id, memoryview(frame)[_RESP.size :])


def decode_error(body: bytes | memoryview) -> ErrorBody:
    if len(body) < _LEADER_HINT.size:
        raise ProtocolError("error response is missing its leader hint")
    (leader_id,) = _LEADER_HINT.unpack_from(body)
    return ErrorBody(leader_id, bytes(body[_LEADER_HINT.size :]).decode(errors="replace"))


def encode_append_ok(
    index: int, queues: memoryview | array, offsets: memoryview | array, duplicates: bytes  # type: ignore[type-arg]
) -> bytes:
    """queues: 4-byte integers, offsets: 8-byte integers (arrays or memoryview slices of the
    state machine's result columns, sent as they are: this protocol is little-endian only)."""
    q = memoryview(queues)
    o = memoryview(offsets)
    n = len(q)
    if not (len(o) == n == len(duplicates)):
        raise ValueError("append result arrays differ in length")
    if q.itemsize != 4 or o.itemsize != 8:
        raise ValueError("queues must be 4-byte and offsets 8-byte integers")
    return b"".join((_APPEND_OK.pack(index, n), q.tobytes(), o.tobytes(), bytes(duplicates)))


def decode_append_ok(body: bytes | memoryview) -> AppendOk:
    if len(body) < _APPEND_OK.size:
        raise ProtocolError("APPEND response is shorter than its header")
    index, n = _APPEND_OK.unpack_from(body)
    start = _APPEND_OK.size
    need = start + n * (4 + 8 + 1)
    if len(body) != need:
        raise ProtocolError(f"APPEND response for {n} events must be {need} bytes, got {len(body)}")
    queues = array("I")
    queues.frombytes(bytes(body[start : start + 4 * n]))
    offsets = array("Q")
    offsets.frombytes(bytes(body[start + 4 * n : start + 12 * n]))
    duplicates = bytes(body[start + 12 * n : need])
    return AppendOk(index, queues, offsets, duplicates)


def encode_read_ok(first_offset: int, next_offset: int, batch: bytes | memoryview) -> bytes:
    return _READ_OK.pack(first_offset, next_offset) + bytes(batch)


def decode_read_ok(body: bytes | memoryview) -> ReadOk:
    if len(body) < _READ_OK.size:
        raise ProtocolError("READ response is shorter than its header")
    first_offset, next_offset = _READ_OK.unpack_from(body)
    return ReadOk(first_offset, next_offset, body[_READ_OK.size :])


if struct.pack("=I", 1) != struct.pack("<I", 1):
    raise ImportError("the client protocol sends native integer arrays: little-endian hosts only")
