# distutils: sources = csrc/crc32c.c
"""The node's APPEND hot path in native code: requests checked and answers framed in bulk.

A leader under many single-event clients handles one APPEND request and one answer per event;
in Python the per-request parsing, batch validation and answer encoding cost more than the
Raft and storage work they feed. These two functions take a whole burst at a time.
Byte layouts: eventstream/transport/client_protocol.py (requests and answers) and
eventstream/transport/frames.py (frame header); the Python encoders there stay the reference
the tests compare these with.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from batch_codec_h cimport *
from byte_views cimport as_byte_view
from crc32c_h cimport esc_crc32c

# Request header: u8 op, u64 request_id; answer header: u8 status, u64 request_id.
DEF REQUEST_HEADER = 9
DEF FRAME_HEADER = 8
DEF OP_APPEND = 1
DEF STATUS_OK = 0
# APPEND OK body after the answer header: u64 raft index, u32 n, n x u32 queue, n x u64 offset,
# n x u8 duplicate.
DEF APPEND_OK_FIXED = 12


cdef inline uint64_t _load_u64le(const uint8_t *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(7, -1, -1):
        v = (v << 8) | p[i]
    return v


cdef inline void _store_u32le(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF


cdef inline void _store_u64le(uint8_t *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = (v >> (8 * i)) & 0xFF


def check_appends(list bodies, uint32_t queue_count):
    """Check APPEND request bodies (op byte, request id, codec batch) in one pass.

    Returns (request_ids, counts, errors): request_ids[i] is body i's id (0 when the body is too
    short to hold one), counts[i] its event count or 0 when refused, and errors maps the index
    of each refused body to a message fit for the client. Nothing is copied.
    """
    cdef Py_ssize_t n = len(bodies)
    cdef list request_ids = [0] * n
    cdef list counts = [0] * n
    cdef dict errors = {}
    cdef Py_ssize_t i
    cdef const unsigned char[::1] view
    cdef const uint8_t *batch
    cdef size_t length, offset, next_offset
    cdef uint32_t count, k, max_queue
    cdef int status
    cdef bint has_queue
    cdef esc_event_t ev
    for i in range(n):
        view = as_byte_view(bodies[i])
        if view.shape[0] < REQUEST_HEADER or view[0] != OP_APPEND:
            errors[i] = "not an APPEND request"
            continue
        request_ids[i] = _load_u64le(&view[1])
        batch = &view[0] + REQUEST_HEADER
        length = view.shape[0] - REQUEST_HEADER
        status = esc_batch_read_header(batch, length, &count)
        offset = 0
        has_queue = False
        max_queue = 0
        if status == ESC_BATCH_OK:
            offset = ESC_BATCH_HEADER_BYTES
            for k in range(count):
                status = esc_batch_read_event(batch, length, offset, &ev, &next_offset)
                if status != ESC_BATCH_OK:
                    break
                if ev.flags & ESC_EVENT_HAS_QUEUE:
                    has_queue = True
                    if ev.queue > max_queue:
                        max_queue = ev.queue
                offset = next_offset
            if status == ESC_BATCH_OK and offset != length:
                status = -1
        if status == -1:
            errors[i] = f"bad append: batch at offset {offset}: bytes left after the last event"
        elif status != ESC_BATCH_OK:
            errors[i] = f"bad append: batch at offset {offset}: {esc_batch_status_text(status).decode()}"
        elif count == 0:
            errors[i] = "bad append: an append must carry at least one event"
        elif has_queue and max_queue >= queue_count:
            errors[i] = (f"bad append: explicit queue {max_queue} is out of range: "
                         f"queues are 0..{queue_count - 1}")
        else:
            counts[i] = count
    return request_ids, counts, errors


def frame_append_answers(list waiters, uint64_t index, statuses, queues, offsets,
                         refused_table, uint32_t duplicate_status):
    """Frame the APPEND OK answer of each waiter (objects with request_id, first_event and
    event_count over the entry's result columns) as complete frames, header and CRC included.

    statuses: u8 per event; queues: 4-byte and offsets: 8-byte little-endian integers per event;
    refused_table: 256 bytes, nonzero for a status that refuses the event. Returns
    (frames, duplicates): frames[i] is None for a waiter with a refused event (the caller answers
    it with an error) and duplicates counts the duplicate events answered.
    """
    cdef const unsigned char[::1] st = as_byte_view(statuses)
    cdef const unsigned char[::1] qv = as_byte_view(queues)
    cdef const unsigned char[::1] ov = as_byte_view(offsets)
    cdef const unsigned char[::1] refused = as_byte_view(refused_table)
    cdef Py_ssize_t events = st.shape[0]
    cdef Py_ssize_t n = len(waiters)
    cdef list frames = [None] * n
    cdef Py_ssize_t i, j, a, count
    cdef uint64_t request_id
    cdef Py_ssize_t body_len
    cdef uint8_t *out
    cdef uint8_t *body
    cdef bint bad
    cdef long long duplicates = 0
    if refused.shape[0] != 256:
        raise ValueError("refused_table must have 256 entries")
    if qv.shape[0] != 4 * events or ov.shape[0] != 8 * events:
        raise ValueError("result columns differ in length")
    for i in range(n):
        w = waiters[i]
        a = w.first_event
        count = w.event_count
        request_id = w.request_id
        if a < 0 or count < 0 or a + count > events:
            raise ValueError(f"waiter events {a}..{a + count} outside the entry's {events}")
        bad = False
        for j in range(a, a + count):
            if refused[st[j]]:
                bad = True
                break
        if bad:
            continue
        body_len = REQUEST_HEADER + APPEND_OK_FIXED + 13 * count
        frame = PyBytes_FromStringAndSize(NULL, FRAME_HEADER + body_len)
        out = <uint8_t *>PyBytes_AS_STRING(frame)
        body = out + FRAME_HEADER
        body[0] = STATUS_OK
        _store_u64le(body + 1, request_id)
        _store_u64le(body + 9, index)
        _store_u32le(body + 17, <uint32_t>count)
        if count:
            memcpy(body + 21, &qv[0] + 4 * a, 4 * count)
            memcpy(body + 21 + 4 * count, &ov[0] + 8 * a, 8 * count)
        for j in range(count):
            body[21 + 12 * count + j] = 1 if st[a + j] == duplicate_status else 0
            duplicates += body[21 + 12 * count + j]
        _store_u32le(out, <uint32_t>body_len)
        _store_u32le(out + 4, esc_crc32c(0, body, body_len))
        frames[i] = frame
    return frames, duplicates
