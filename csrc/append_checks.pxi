# Requests in: frame and APPEND batch checks:
# part of the eventstream.transport._append_intake extension; csrc/_append_intake.pyx includes
# it after the declarations and shared names it uses.

cdef enum:
    # A batch whose events end before its length says (esc_batch_read_* never return it).
    BATCH_BYTES_LEFT = -1


cdef struct BatchCheck:
    int status
    size_t offset
    uint32_t count
    uint32_t max_queue
    bint has_queue


cdef void _check_batch(const uint8_t *batch, size_t length, BatchCheck *c) noexcept nogil:
    """Walk one APPEND request's codec batch; c says whether and where it is malformed."""
    cdef esc_event_t ev
    cdef size_t next_offset
    cdef uint32_t k
    c.offset = 0
    c.count = 0
    c.has_queue = False
    c.max_queue = 0
    c.status = esc_batch_read_header(batch, length, &c.count)
    if c.status != ESC_BATCH_OK:
        return
    c.offset = ESC_BATCH_HEADER_BYTES
    for k in range(c.count):
        c.status = esc_batch_read_event(batch, length, c.offset, &ev, &next_offset)
        if c.status != ESC_BATCH_OK:
            return
        if ev.flags & ESC_EVENT_HAS_QUEUE:
            c.has_queue = True
            if ev.queue > c.max_queue:
                c.max_queue = ev.queue
        c.offset = next_offset
    if c.offset != length:
        c.status = BATCH_BYTES_LEFT


cdef int64_t _first_queue_not_in(const uint8_t *batch, size_t length, const uint32_t *allowed, Py_ssize_t n,
                                 uint32_t queue_count) noexcept nogil:
    """The first queue an event of this (checked) batch goes to that `allowed` (ascending)
    does not hold, or -1 when every one is allowed. An event without a queue goes where the
    state machine will put it: mmh3(key) mod queue_count (csrc/state_apply.pxi)."""
    cdef esc_event_t ev
    cdef size_t offset = ESC_BATCH_HEADER_BYTES, next_offset
    cdef uint32_t k, count = esc_load_u32(batch + 4), q
    cdef Py_ssize_t lo, hi, mid
    for k in range(count):
        if esc_batch_read_event(batch, length, offset, &ev, &next_offset) != ESC_BATCH_OK:
            return -1  # cannot happen: the batch was checked; the apply refuses it anyway
        if ev.flags & ESC_EVENT_HAS_QUEUE:
            q = ev.queue
        else:
            q = esc_murmur3_32(ev.key if ev.key != NULL else <const uint8_t *>b"", ev.key_len, 0) % queue_count
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if allowed[mid] < q:
                lo = mid + 1
            else:
                hi = mid
        if lo == n or allowed[lo] != q:
            return q
        offset = next_offset
    return -1


cdef str _refusal_text(const BatchCheck *c, uint32_t queue_count):
    """The client's error message for a refused batch, or None when it may be queued."""
    if c.status == BATCH_BYTES_LEFT:
        return f"bad append: batch at offset {c.offset}: bytes left after the last event"
    if c.status != ESC_BATCH_OK:
        return f"bad append: batch at offset {c.offset}: {esc_batch_status_text(c.status).decode()}"
    if c.count == 0:
        return "bad append: an append must carry at least one event"
    if c.has_queue and c.max_queue >= queue_count:
        return (f"bad append: explicit queue {c.max_queue} is out of range: "
                f"queues are 0..{queue_count - 1}")
    return None


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
    cdef BatchCheck c
    for i in range(n):
        view = as_byte_view(bodies[i])
        if view.shape[0] < ESC_CLIENT_REQUEST_HEAD_BYTES or view[0] != ESC_CLIENT_OP_APPEND:
            errors[i] = "not an APPEND request"
            continue
        request_ids[i] = esc_load_u64(&view[1])
        _check_batch(&view[0] + ESC_CLIENT_REQUEST_HEAD_BYTES, view.shape[0] - ESC_CLIENT_REQUEST_HEAD_BYTES, &c)
        message = _refusal_text(&c, queue_count)
        if message is None:
            counts[i] = c.count
        else:
            errors[i] = message
    return request_ids, counts, errors


cdef int _whole_frames(const uint8_t *buf, size_t end, uint64_t body_len_max, size_t *checked,
                       esc_frame *f) noexcept nogil:
    """Check every complete frame in buf[0, end), setting *checked past the last good one.
    ESC_FRAME_NEED_MORE when all complete frames are good, else the first bad one's state (its
    details in f)."""
    cdef int state
    checked[0] = 0
    while True:
        state = esc_frame_next(buf + checked[0], end - checked[0], body_len_max, f)
        if state != ESC_FRAME_WHOLE:
            return state
        checked[0] += ESC_FRAME_HEAD_BYTES + f.body_len


cdef object _frame_error(int state, const esc_frame *f, uint64_t body_len_max):
    if state == ESC_FRAME_TOO_LONG:
        return FrameError(f"frame length prefix {f.body_len} exceeds the limit of {body_len_max} bytes")
    return FrameError(f"frame CRC mismatch: header says {f.head_crc:#010x}, body has {f.body_crc:#010x}")
