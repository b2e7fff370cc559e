# distutils: sources = csrc/crc32c.c
"""Native kernel of eventstream.transport.frames: split a receive buffer into frame bodies.

A node takes in tens of thousands of small frames a second; the per-frame header parse, limit
check and CRC here cost a fraction of the Python loop they replace (frames.py keeps that loop as
the reference the tests compare against). Frame layout: csrc/frame_format.h, the C side of
eventstream/transport/frames.py.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t

from byte_views cimport as_byte_view
from client_protocol_h cimport *
from frame_format_h cimport *
from peer_message_h cimport *
from state_commands_h cimport *

# Outcomes reported to frames.py, which owns the error messages.
SPLIT_OK = 0
SPLIT_TOO_LONG = 1
SPLIT_BAD_CRC = 2


def split_frames(buffer, Py_ssize_t start, unsigned long long limit, list out):
    """Append to `out` the body (as bytes) of every complete frame in buffer[start:].

    Returns (status, position, detail1, detail2): position is where the first incomplete or bad
    frame begins; on SPLIT_TOO_LONG detail1 is the length prefix, on SPLIT_BAD_CRC detail1 is the
    header's CRC and detail2 the body's. Nothing past a bad frame is returned.
    """
    cdef const unsigned char[::1] view = as_byte_view(buffer)
    cdef Py_ssize_t end = view.shape[0]
    cdef Py_ssize_t pos = start
    cdef const uint8_t *base
    cdef esc_frame f
    cdef int state
    if start < 0 or start > end:
        raise ValueError(f"start {start} outside a buffer of {end} bytes")
    if end == 0:
        return SPLIT_OK, pos, 0, 0
    base = &view[0]
    while True:
        state = esc_frame_next(base + pos, end - pos, limit, &f)
        if state == ESC_FRAME_NEED_MORE:
            return SPLIT_OK, pos, 0, 0
        if state == ESC_FRAME_TOO_LONG:
            return SPLIT_TOO_LONG, pos, f.body_len, 0
        if state == ESC_FRAME_BAD_CRC:
            return SPLIT_BAD_CRC, pos, f.head_crc, f.body_crc
        out.append(PyBytes_FromStringAndSize(<const char *>base + pos + ESC_FRAME_HEAD_BYTES, f.body_len))
        pos += ESC_FRAME_HEAD_BYTES + f.body_len


def native_wire_vocabulary():
    """The wire constants the native modules are compiled with (csrc/frame_format.h,
    client_protocol.h, peer_message.h, state_commands.h), by name, for the test that holds
    them equal to the Python codecs' constants."""
    return {
        "frame_head_bytes": ESC_FRAME_HEAD_BYTES,
        "ops": {
            "APPEND": ESC_CLIENT_OP_APPEND, "READ": ESC_CLIENT_OP_READ,
            "CONFIG_UPDATE": ESC_CLIENT_OP_CONFIG_UPDATE, "CONFIG_GET": ESC_CLIENT_OP_CONFIG_GET,
            "STATUS": ESC_CLIENT_OP_STATUS, "SNAPSHOT": ESC_CLIENT_OP_SNAPSHOT,
            "MEMBERS": ESC_CLIENT_OP_MEMBERS, "MEMBER_CHANGE": ESC_CLIENT_OP_MEMBER_CHANGE,
            "AUTH": ESC_CLIENT_OP_AUTH,
        },
        "statuses": {
            "OK": ESC_CLIENT_STATUS_OK, "NOT_LEADER": ESC_CLIENT_STATUS_NOT_LEADER,
            "TIMEOUT": ESC_CLIENT_STATUS_TIMEOUT, "UNAVAILABLE": ESC_CLIENT_STATUS_UNAVAILABLE,
            "INVALID_ARGUMENT": ESC_CLIENT_STATUS_INVALID_ARGUMENT,
            "OVERLOADED": ESC_CLIENT_STATUS_OVERLOADED, "OUT_OF_RANGE": ESC_CLIENT_STATUS_OUT_OF_RANGE,
            "INTERNAL": ESC_CLIENT_STATUS_INTERNAL, "REFUSED": ESC_CLIENT_STATUS_REFUSED,
            "UNAUTHENTICATED": ESC_CLIENT_STATUS_UNAUTHENTICATED,
            "PERMISSION_DENIED": ESC_CLIENT_STATUS_PERMISSION_DENIED,
        },
        "status_last": ESC_CLIENT_STATUS_LAST,
        "request_head_bytes": ESC_CLIENT_REQUEST_HEAD_BYTES,
        "answer_head_bytes": ESC_CLIENT_ANSWER_HEAD_BYTES,
        "append_ok_fixed_bytes": ESC_CLIENT_APPEND_OK_FIXED_BYTES,
        "append_ok_row_bytes": ESC_CLIENT_APPEND_OK_ROW_BYTES,
        "error_fixed_bytes": ESC_CLIENT_ERROR_FIXED_BYTES,
        "hello_magic": ESC_HELLO_MAGIC[:ESC_HELLO_MAGIC_BYTES],
        "hello_bytes": ESC_HELLO_BYTES,
        "hello_roles": {
            "PEER": ESC_HELLO_ROLE_PEER, "CLIENT": ESC_HELLO_ROLE_CLIENT,
            "REPLICATION": ESC_HELLO_ROLE_REPLICATION,
        },
        "commands": {
            "SET_EVENT": ESC_COMMAND_SET_EVENT, "DEDUP_ADD": ESC_COMMAND_DEDUP_ADD,
            "DEDUP_EXPIRE": ESC_COMMAND_DEDUP_EXPIRE, "CONFIG_UPDATE": ESC_COMMAND_CONFIG_UPDATE,
            "SET_EVENT_AT": ESC_COMMAND_SET_EVENT_AT, "MEMBERSHIP": ESC_COMMAND_MEMBERSHIP,
        },
        "set_event_at_head_bytes": ESC_SET_EVENT_AT_HEAD_BYTES,
        "message_version": ESC_MESSAGE_VERSION,
        "message_head_bytes": ESC_MESSAGE_HEAD_BYTES,
        "message_entry_row_bytes": ESC_MESSAGE_ENTRY_ROW_BYTES,
        "message_entries_max": ESC_MESSAGE_ENTRIES_MAX,
        "message_flag_reject": ESC_MESSAGE_FLAG_REJECT,
        "message_learners_shift": ESC_MESSAGE_LEARNERS_SHIFT,
        "message_at_counts": (ESC_MESSAGE_AT_ENTRIES, ESC_MESSAGE_AT_CONTEXT_LEN, ESC_MESSAGE_AT_DATA_LEN),
        "message_types": {
            "APPEND": ESC_MESSAGE_APPEND, "APPEND_RESPONSE": ESC_MESSAGE_APPEND_RESPONSE,
            "HEARTBEAT_RESPONSE": ESC_MESSAGE_HEARTBEAT_RESPONSE,
            "SNAPSHOT_RESPONSE": ESC_MESSAGE_SNAPSHOT_RESPONSE,
        },
        "message_type_max": ESC_MESSAGE_TYPE_MAX,
    }
