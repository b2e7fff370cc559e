# Answers out: APPEND OK and error frames, per-connection output, latency:
# part of the eventstream.transport._append_intake extension; csrc/_append_intake.pyx includes
# it after the declarations and shared names it uses.

cdef inline size_t _ok_frame_bytes(uint32_t count) noexcept nogil:
    return (ESC_FRAME_HEAD_BYTES + ESC_CLIENT_ANSWER_HEAD_BYTES + ESC_CLIENT_APPEND_OK_FIXED_BYTES
            + ESC_CLIENT_APPEND_OK_ROW_BYTES * <size_t>count)


cdef long long _write_ok_frame(uint8_t *out, uint64_t request_id, uint64_t index, uint32_t count,
                               const uint8_t *statuses, const uint8_t *queues, const uint8_t *offsets,
                               uint32_t duplicate_status) noexcept nogil:
    """One APPEND OK answer as a whole frame at out (_ok_frame_bytes(count) bytes); returns how
    many of its events are duplicates."""
    cdef size_t body_len = _ok_frame_bytes(count) - ESC_FRAME_HEAD_BYTES
    cdef uint8_t *body = out + ESC_FRAME_HEAD_BYTES
    # The columns after the fixed part: n x u32 queue, n x u64 offset, n x u8 duplicate.
    cdef uint8_t *columns = body + ESC_CLIENT_ANSWER_HEAD_BYTES + ESC_CLIENT_APPEND_OK_FIXED_BYTES
    cdef uint8_t *flags = columns + 12 * <size_t>count
    cdef long long duplicates = 0
    cdef uint32_t j
    body[0] = ESC_CLIENT_STATUS_OK
    esc_store_u64(body + 1, request_id)
    esc_store_u64(body + ESC_CLIENT_ANSWER_HEAD_BYTES, index)
    esc_store_u32(body + ESC_CLIENT_ANSWER_HEAD_BYTES + 8, count)
    if count:
        memcpy(columns, queues, 4 * <size_t>count)
        memcpy(columns + 4 * <size_t>count, offsets, 8 * <size_t>count)
    for j in range(count):
        flags[j] = 1 if statuses[j] == duplicate_status else 0
        duplicates += flags[j]
    esc_frame_store_head(out, body, <uint32_t>body_len)
    return duplicates


cdef inline uint8_t _any_refused(const uint8_t *statuses, Py_ssize_t count, const uint8_t *refused) noexcept nogil:
    """The largest refusal flag among the statuses (0: none refused)."""
    cdef Py_ssize_t j
    cdef uint8_t worst = 0
    for j in range(count):
        if refused[statuses[j]] > worst:
            worst = refused[statuses[j]]
    return worst


cdef struct ResultColumns:
    const uint8_t *statuses
    const uint8_t *queues
    const uint8_t *offsets
    const uint8_t *refused
    Py_ssize_t events


cdef class _ResultViews:
    """The state machine's result columns of one entry, checked once for shape."""
    cdef const unsigned char[::1] st, qv, ov, refused
    cdef ResultColumns cols

    def __cinit__(self, statuses, queues, offsets, refused_table):
        self.st = as_byte_view(statuses)
        self.qv = as_byte_view(queues)
        self.ov = as_byte_view(offsets)
        self.refused = as_byte_view(refused_table)
        if self.refused.shape[0] != 256:
            raise ValueError("refused_table must have 256 entries")
        events = self.st.shape[0]
        if self.qv.shape[0] != 4 * events or self.ov.shape[0] != 8 * events:
            raise ValueError("result columns differ in length")
        self.cols.events = events
        self.cols.refused = &self.refused[0]
        # Empty columns have no first byte to point at; a waiter's range check keeps them unread.
        self.cols.statuses = &self.st[0] if events else NULL
        self.cols.queues = &self.qv[0] if events else NULL
        self.cols.offsets = &self.ov[0] if events else NULL


def frame_append_answers(list waiters, uint64_t index, statuses, queues, offsets,
                         refused_table, uint32_t duplicate_status):
    """Frame the APPEND OK answer of each waiter (objects with request_id, first_event and
    event_count over the entry's result columns) as complete frames, header and CRC included.

    statuses: u8 per event; queues: 4-byte and offsets: 8-byte little-endian integers per event;
    refused_table: 256 bytes, nonzero for a status that refuses the event. Returns
    (frames, duplicates): frames[i] is None for a waiter with a refused event (the caller answers
    it with an error) and duplicates counts the duplicate events answered.
    """
    cdef _ResultViews r = _ResultViews(statuses, queues, offsets, refused_table)
    cdef Py_ssize_t n = len(waiters)
    cdef list frames = [None] * n
    cdef Py_ssize_t i, a, count
    cdef long long duplicates = 0
    for i in range(n):
        w = waiters[i]
        a = w.first_event
        count = w.event_count
        if a < 0 or count < 0 or a + count > r.cols.events:
            raise ValueError(f"waiter events {a}..{a + count} outside the entry's {r.cols.events}")
        if count and _any_refused(r.cols.statuses + a, count, r.cols.refused):
            continue
        frame = PyBytes_FromStringAndSize(NULL, _ok_frame_bytes(<uint32_t>count))
        duplicates += _write_ok_frame(<uint8_t *>PyBytes_AS_STRING(frame), w.request_id, index,
                                      <uint32_t>count, r.cols.statuses + a if count else NULL,
                                      r.cols.queues + 4 * a if count else NULL,
                                      r.cols.offsets + 8 * a if count else NULL, duplicate_status)
        frames[i] = frame
    return frames, duplicates


cdef int _queue_output(Connections *t, uint32_t index, Slot *s, size_t size, uint8_t **at) except -1:
    """Reserve size bytes at the end of a connection's outbound buffer, marking it dirty."""
    _reserve(&s.outbound, size)
    at[0] = s.outbound.data + s.outbound.length
    s.outbound.length += size
    if not s.dirty:
        s.dirty = True
        t.dirty[t.dirty_count] = index
        t.dirty_count += 1
    return 0


cdef int _queue_error(Connections *t, uint32_t index, Slot *s, uint8_t status, uint64_t request_id,
                      const uint8_t *message, size_t message_len, uint64_t leader_id) except -1:
    """One error answer (client_protocol.encode_error) framed into a connection's outbound buffer."""
    cdef size_t body_len = ESC_CLIENT_ANSWER_HEAD_BYTES + ESC_CLIENT_ERROR_FIXED_BYTES + message_len
    cdef uint8_t *at
    cdef uint8_t *body
    _queue_output(t, index, s, ESC_FRAME_HEAD_BYTES + body_len, &at)
    body = at + ESC_FRAME_HEAD_BYTES
    body[0] = status
    esc_store_u64(body + 1, request_id)
    esc_store_u64(body + ESC_CLIENT_ANSWER_HEAD_BYTES, leader_id)
    if message_len:
        memcpy(body + ESC_CLIENT_ANSWER_HEAD_BYTES + ESC_CLIENT_ERROR_FIXED_BYTES, message, message_len)
    esc_frame_store_head(at, body, <uint32_t>body_len)
    return 0


cdef list _flush_output(Connections *t):
    """Write every dirty connection's outbound buffer: one send() each, the GIL released.
    Returns [(slot, bytes, records)] of what must go through the connection's transport
    instead (the socket's buffer was full, the connection has no fd, or is backlogged):
    answers, or with records True (native TLS) records already encrypted, to be written as
    they are."""
    cdef Py_ssize_t i, count = t.dirty_count
    cdef uint8_t chunk[65536]
    cdef Slot *s
    cdef size_t sent
    cdef ssize_t n
    cdef int error
    cdef list rest = []
    with nogil:
        for i in range(count):
            s = &t.slots[t.dirty[i]]
            if not s.open or s.backlogged or s.fd < 0 or s.outbound.length == 0:
                continue
            if s.tls != NULL:
                if _tls_flush(s, chunk, sizeof(chunk)) != 0:
                    s.outbound.length = 0  # the peer is gone, or the session broke: as below
                    s.outbound_records = False
                continue
            sent = 0
            error = 0
            while sent < s.outbound.length:
                n = send(s.fd, s.outbound.data + sent, s.outbound.length - sent, MSG_DONTWAIT | MSG_NOSIGNAL)
                if n > 0:
                    sent += <size_t>n
                elif n < 0 and errno == EINTR:
                    continue
                else:
                    error = errno if n < 0 else EAGAIN
                    break
            # EWOULDBLOCK is EAGAIN on Linux.
            if error != 0 and error != EAGAIN:
                # The peer is gone (reset, broken pipe): the read side reports the close;
                # these answers have no one to go to.
                sent = s.outbound.length
            if sent:
                memmove(s.outbound.data, s.outbound.data + sent, s.outbound.length - sent)
                s.outbound.length -= sent
    for i in range(count):
        s = &t.slots[t.dirty[i]]
        s.dirty = False
        if s.open and s.outbound.length:
            rest.append((t.dirty[i], PyBytes_FromStringAndSize(<const char *>s.outbound.data,
                                                               s.outbound.length), s.outbound_records))
            s.outbound.length = 0
            s.outbound_records = False
    t.dirty_count = 0
    return rest


cdef struct Latency:
    # Answers per bucket, receipt to answer: counts[b] for bounds[b - 1] < seconds <= bounds[b],
    # the last bucket above every bound.
    double *bounds
    uint64_t *counts
    Py_ssize_t n
    double sum


cdef inline void _latency_observe(Latency *h, double seconds) noexcept nogil:
    cdef Py_ssize_t b = 0
    while b < h.n and h.bounds[b] < seconds:
        b += 1
    h.counts[b] += 1
    h.sum += seconds
