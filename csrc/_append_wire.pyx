# distutils: sources = csrc/crc32c.c
"""The node's APPEND hot path in native code: requests checked, queued and answered in bulk.

A leader under many single-event clients handles one APPEND request and one answer per event;
in Python the per-request parsing, batch validation, queueing and answer encoding cost more
than the Raft and storage work they feed. AppendIntake does all of it per connection read and
per applied entry, with the requests that wait for an entry held in C arrays; check_appends and
frame_append_answers are the same checks and encoders over lists, for tests and benchmarks.
Byte layouts: csrc/client_protocol.h (requests and answers), csrc/frame_format.h (frames) and
csrc/state_commands.h (the entry it builds); the Python encoders in eventstream/transport/ stay
the reference the tests compare these with.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memmove

from batch_codec_h cimport *
from byte_order_h cimport esc_load_u32, esc_load_u64, esc_store_u32, esc_store_u64
from byte_views cimport as_byte_view
from client_protocol_h cimport *
from frame_format_h cimport *
from state_commands_h cimport ESC_COMMAND_SET_EVENT_AT, ESC_SET_EVENT_AT_HEAD_BYTES

from eventstream.transport.frames import FrameError

cdef extern from "<fcntl.h>" nogil:
    int fcntl(int fd, int cmd, ...)
    enum:
        F_DUPFD_CLOEXEC

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    enum:
        MSG_DONTWAIT
        MSG_NOSIGNAL

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


# -- AppendIntake -----------------------------------------------------------------------------

# Why an APPEND was refused at intake (AppendIntake.take_refusals); the node words the answer.
REFUSED_INVALID = 1        # malformed batch or queue out of range; the message says which
REFUSED_NOT_ACCEPTING = 2  # this node does not take appends now (not leader, transfer)
REFUSED_OVERLOADED = 3     # the proposal queue is past its byte limit


cdef struct Buffer:
    uint8_t *data
    size_t length
    size_t capacity


cdef int _reserve(Buffer *b, size_t extra) except -1:
    """Make room for `extra` more bytes after b.length."""
    cdef size_t need = b.length + extra
    cdef size_t capacity
    cdef uint8_t *grown
    if need <= b.capacity:
        return 0
    capacity = b.capacity * 2 if b.capacity else 4096
    while capacity < need:
        capacity *= 2
    grown = <uint8_t *>realloc(b.data, capacity)
    if grown == NULL:
        raise MemoryError(f"cannot grow a buffer to {capacity} bytes")
    b.data = grown
    b.capacity = capacity
    return 0


cdef inline void _release(Buffer *b) noexcept nogil:
    free(b.data)
    b.data = NULL
    b.length = 0
    b.capacity = 0


cdef struct Slot:
    # Invariant: gen changes every time the slot is closed, so a waiter holding (slot, gen)
    # of a closed connection is never answered on the connection that reuses the slot.
    # fd is this slot's own duplicate of the socket (or -1): the transport may close its
    # descriptor before the owner closes the slot, and a number the kernel then reused for
    # another socket or a log file must never receive answers.
    int fd
    uint32_t gen
    bint open
    bint dirty
    # Bytes of this connection were handed to its transport's own buffer: until the owner says
    # that buffer is empty, writing to the socket here would overtake them.
    bint backlogged
    int64_t in_flight
    uint64_t requests
    Buffer inbound   # at most one incomplete frame, or what follows a request handed to Python
    Buffer outbound  # whole answer frames not yet written


cdef struct Waiter:
    uint32_t slot
    uint32_t gen
    uint64_t request_id
    uint32_t event_count
    uint32_t first_event   # position of its first event in its entry; set by take()
    uint32_t event_bytes   # bytes of its events in the pending buffer
    double arrival


cdef class EntryWaiters:
    """The requests one entry carries, in the entry's event order (owned by AppendIntake)."""
    cdef Waiter *items
    cdef Py_ssize_t n
    cdef readonly uint64_t event_count

    def __dealloc__(self):
        free(self.items)

    def __len__(self):
        return self.n

    @property
    def first_arrival(self):
        """Arrival time of the oldest request (monotonic seconds); inf when empty."""
        return self.items[0].arrival if self.n else float("inf")

    def request_ids(self):
        return [self.items[i].request_id for i in range(self.n)]

    def event_counts(self):
        return [self.items[i].event_count for i in range(self.n)]

    def first_events(self):
        return [self.items[i].first_event for i in range(self.n)]

    def slots(self):
        return [self.items[i].slot for i in range(self.n)]


cdef EntryWaiters _entry_waiters(const Waiter *items, Py_ssize_t n):
    cdef EntryWaiters ew = EntryWaiters.__new__(EntryWaiters)
    cdef Py_ssize_t i
    if n:
        ew.items = <Waiter *>realloc(NULL, n * sizeof(Waiter))
        if ew.items == NULL:
            raise MemoryError()
        memcpy(ew.items, items, n * sizeof(Waiter))
    ew.n = n
    for i in range(n):
        ew.event_count += items[i].event_count
    return ew


cdef class AppendIntake:
    """The leader's client connections' bytes in, the next entries and their answers out.

    Per connection read, feed() splits frames, checks every APPEND request and appends its
    events to the entry being built, recording the request (connection, id, event count,
    arrival) in C arrays; any other request is handed back to Python in arrival order. take()
    cuts the next entry (up to batch_size events or batch_bytes_max bytes; one request always
    lands whole in one entry). After apply, answer() frames every waiter's answer into its
    connection's outbound buffer and folds its latency into a histogram; flush() writes each
    connection's buffer with one send() (GIL released), handing back to Python whatever the
    socket did not take, for the connection's transport to buffer.

    Connections are slots: open_slot(fd) before feeding, close_slot() when it is gone. fd -1
    means every write goes back to Python (connections without a socket of their own).
    Invariant: the pending events buffer holds, back to back, the event bytes (batch header
    removed) of the pending waiters in order; pending_events and pending_bytes are their sums.
    """
    cdef Slot *_slots
    cdef Py_ssize_t _slot_capacity
    cdef Py_ssize_t _slot_count
    cdef uint32_t *_free
    cdef Py_ssize_t _free_count
    cdef uint32_t *_dirty
    cdef Py_ssize_t _dirty_count
    cdef Buffer _pending
    cdef size_t _pending_start
    cdef Waiter *_waiters
    cdef Py_ssize_t _waiters_start, _waiters_end, _waiters_capacity
    cdef double *_bounds
    cdef uint64_t *_bucket_counts
    cdef Py_ssize_t _bound_count
    cdef readonly double latency_sum
    cdef readonly uint64_t frame_bytes_max
    cdef readonly int64_t in_flight_max
    cdef readonly uint64_t pending_bytes_max
    cdef readonly uint64_t pending_events
    cdef readonly uint64_t pending_bytes
    cdef public uint32_t queue_count
    # (slot, request_id, REFUSED_*, message) of APPENDs refused at intake, oldest first.
    cdef readonly list refusals

    def __cinit__(self, uint64_t frame_bytes_max, int64_t in_flight_max, uint64_t pending_bytes_max,
                  latency_bounds, uint32_t queue_count=1):
        cdef Py_ssize_t i
        bounds = [float(b) for b in latency_bounds]
        if sorted(bounds) != bounds or len(set(bounds)) != len(bounds):
            raise ValueError("latency bounds must be strictly increasing")
        if in_flight_max < 1 or frame_bytes_max < ESC_CLIENT_REQUEST_HEAD_BYTES:
            raise ValueError("in_flight_max must be >= 1 and frame_bytes_max >= 9")
        self.frame_bytes_max = frame_bytes_max
        self.in_flight_max = in_flight_max
        self.pending_bytes_max = pending_bytes_max
        self.queue_count = queue_count
        self.refusals = []
        self._bound_count = len(bounds)
        self._bounds = <double *>realloc(NULL, (len(bounds) + 1) * sizeof(double))
        self._bucket_counts = <uint64_t *>realloc(NULL, (len(bounds) + 1) * sizeof(uint64_t))
        if self._bounds == NULL or self._bucket_counts == NULL:
            raise MemoryError()
        for i in range(len(bounds)):
            self._bounds[i] = bounds[i]
        for i in range(len(bounds) + 1):
            self._bucket_counts[i] = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self._slot_count):
            if self._slots[i].open and self._slots[i].fd >= 0:
                close(self._slots[i].fd)
            _release(&self._slots[i].inbound)
            _release(&self._slots[i].outbound)
        free(self._slots)
        free(self._free)
        free(self._dirty)
        _release(&self._pending)
        free(self._waiters)
        free(self._bounds)
        free(self._bucket_counts)

    # -- connections ----------------------------------------------------------------------
    def open_slot(self, int fd):
        """A new connection's (slot, gen); fd is its socket (duplicated here, so the caller
        keeps its own), or -1 to write through Python."""
        cdef uint32_t index
        cdef Slot *s
        cdef int own = -1
        if fd >= 0:
            own = fcntl(fd, F_DUPFD_CLOEXEC, 0)
            if own < 0:
                raise OSError(errno, f"cannot duplicate socket descriptor {fd}")
        if self._free_count:
            self._free_count -= 1
            index = self._free[self._free_count]
        else:
            if self._slot_count == self._slot_capacity:
                self._grow_slots()
            index = <uint32_t>self._slot_count
            self._slot_count += 1
            self._slots[index].gen = 0
            # A reused slot keeps its dirty flag: it may still be listed for the next flush.
            self._slots[index].dirty = False
        s = &self._slots[index]
        s.fd = own
        s.open = True
        s.backlogged = False
        s.in_flight = 0
        s.requests = 0
        s.inbound.data = NULL
        s.inbound.length = s.inbound.capacity = 0
        s.outbound.data = NULL
        s.outbound.length = s.outbound.capacity = 0
        return index, s.gen

    cdef int _grow_slots(self) except -1:
        cdef Py_ssize_t capacity = self._slot_capacity * 2 if self._slot_capacity else 64
        cdef Slot *slots = <Slot *>realloc(self._slots, capacity * sizeof(Slot))
        if slots == NULL:
            raise MemoryError()
        self._slots = slots
        cdef uint32_t *free_list = <uint32_t *>realloc(self._free, capacity * sizeof(uint32_t))
        if free_list == NULL:
            raise MemoryError()
        self._free = free_list
        cdef uint32_t *dirty = <uint32_t *>realloc(self._dirty, capacity * sizeof(uint32_t))
        if dirty == NULL:
            raise MemoryError()
        self._dirty = dirty
        self._slot_capacity = capacity
        return 0

    cdef Slot *_slot(self, Py_ssize_t slot) except NULL:
        if slot < 0 or slot >= self._slot_count or not self._slots[slot].open:
            raise ValueError(f"slot {slot} is not an open connection")
        return &self._slots[slot]

    cdef inline Slot *_live(self, uint32_t slot, uint32_t gen) noexcept:
        """The slot if it still holds the connection of generation gen, else NULL."""
        if slot >= self._slot_count:
            return NULL
        cdef Slot *s = &self._slots[slot]
        if not s.open or s.gen != gen:
            return NULL
        return s

    def close_slot(self, Py_ssize_t slot):
        """Forget a connection; answers still owed to it are dropped when they come."""
        cdef Slot *s = self._slot(slot)
        _release(&s.inbound)
        _release(&s.outbound)
        s.open = False
        s.gen += 1
        if s.fd >= 0:
            close(s.fd)
        s.fd = -1
        self._free[self._free_count] = <uint32_t>slot
        self._free_count += 1

    def in_flight(self, Py_ssize_t slot):
        """Requests taken from this connection and not yet answered."""
        return self._slot(slot).in_flight

    def requests(self, Py_ssize_t slot):
        return self._slot(slot).requests

    def count_request(self, Py_ssize_t slot):
        """A request handled in Python now counts as in flight; returns the new count."""
        cdef Slot *s = self._slot(slot)
        s.in_flight += 1
        s.requests += 1
        return s.in_flight

    def buffered_bytes(self, Py_ssize_t slot):
        """Bytes of an incomplete frame (or of requests not yet read) held for this connection."""
        return self._slot(slot).inbound.length

    def set_backlogged(self, Py_ssize_t slot, bint backlogged):
        self._slot(slot).backlogged = backlogged

    # -- requests in ----------------------------------------------------------------------
    def feed(self, Py_ssize_t slot, data, double now, bint accepting):
        """Take what a connection's socket delivered. APPEND requests are queued for the next
        entry or refused (see refusals); the first other request is returned as its body, and
        the bytes after it stay buffered until feed(slot, b"", ...) is called again, so Python
        serves it after the APPENDs before it and before those after it. Returns None when
        everything complete was taken. A bad frame raises FrameError before anything in this
        read is taken (the connection must then be closed)."""
        cdef Slot *s = self._slot(slot)
        cdef const unsigned char[::1] view = as_byte_view(data)
        cdef Py_ssize_t size = view.shape[0]
        cdef const uint8_t *buf
        cdef size_t end, pos, checked, length
        cdef esc_frame f
        cdef int state
        cdef const uint8_t *body
        if s.inbound.length:
            if size:
                _reserve(&s.inbound, size)
                memcpy(s.inbound.data + s.inbound.length, &view[0], size)
                s.inbound.length += size
            buf = s.inbound.data
            end = s.inbound.length
        elif size:
            buf = &view[0]
            end = size
        else:
            return None
        # Every complete frame is checked before any is acted on: a stream that turns bad
        # delivers nothing of the read it turned bad in (as FrameDecoder does).
        checked = 0
        while True:
            state = esc_frame_next(buf + checked, end - checked, self.frame_bytes_max, &f)
            if state == ESC_FRAME_NEED_MORE:
                break
            if state == ESC_FRAME_TOO_LONG:
                s.inbound.length = 0
                raise FrameError(f"frame length prefix {f.body_len} exceeds the limit of {self.frame_bytes_max} bytes")
            if state == ESC_FRAME_BAD_CRC:
                s.inbound.length = 0
                raise FrameError(f"frame CRC mismatch: header says {f.head_crc:#010x}, body has {f.body_crc:#010x}")
            checked += ESC_FRAME_HEAD_BYTES + f.body_len
        pos = 0
        handed = None
        while pos < checked:
            length = esc_load_u32(buf + pos)
            body = buf + pos + ESC_FRAME_HEAD_BYTES
            if length >= ESC_CLIENT_REQUEST_HEAD_BYTES and body[0] == ESC_CLIENT_OP_APPEND and s.in_flight < self.in_flight_max:
                pos += ESC_FRAME_HEAD_BYTES + length
                s.in_flight += 1
                s.requests += 1
                self._take_append(<uint32_t>slot, s, body, length, now, accepting)
                continue
            handed = PyBytes_FromStringAndSize(<const char *>body, length)
            pos += ESC_FRAME_HEAD_BYTES + length
            break
        # Keep what was not taken (a request handed to Python may be followed by more).
        if buf == s.inbound.data:
            if pos:
                memmove(s.inbound.data, s.inbound.data + pos, end - pos)
                s.inbound.length = end - pos
        elif pos < end:
            _reserve(&s.inbound, end - pos)
            memcpy(s.inbound.data, buf + pos, end - pos)
            s.inbound.length = end - pos
        return handed

    cdef int _take_append(self, uint32_t slot, Slot *s, const uint8_t *body, size_t length, double now,
                          bint accepting) except -1:
        cdef uint64_t request_id = esc_load_u64(body + 1)
        cdef BatchCheck c
        cdef size_t event_bytes
        cdef Waiter *w
        _check_batch(body + ESC_CLIENT_REQUEST_HEAD_BYTES, length - ESC_CLIENT_REQUEST_HEAD_BYTES, &c)
        message = _refusal_text(&c, self.queue_count)
        if message is not None:
            self.refusals.append((slot, request_id, REFUSED_INVALID, message))
        elif not accepting:
            self.refusals.append((slot, request_id, REFUSED_NOT_ACCEPTING, None))
        elif self.pending_bytes > self.pending_bytes_max:
            self.refusals.append((slot, request_id, REFUSED_OVERLOADED, None))
        else:
            event_bytes = length - ESC_CLIENT_REQUEST_HEAD_BYTES - ESC_BATCH_HEADER_BYTES
            _reserve(&self._pending, event_bytes)
            memcpy(self._pending.data + self._pending.length,
                   body + ESC_CLIENT_REQUEST_HEAD_BYTES + ESC_BATCH_HEADER_BYTES, event_bytes)
            self._pending.length += event_bytes
            if self._waiters_end == self._waiters_capacity:
                self._grow_waiters()
            w = &self._waiters[self._waiters_end]
            self._waiters_end += 1
            w.slot = slot
            w.gen = s.gen
            w.request_id = request_id
            w.event_count = c.count
            w.first_event = 0
            w.event_bytes = <uint32_t>event_bytes
            w.arrival = now
            self.pending_events += c.count
            self.pending_bytes += event_bytes
        return 0

    cdef int _grow_waiters(self) except -1:
        cdef Py_ssize_t live = self._waiters_end - self._waiters_start
        cdef Py_ssize_t capacity
        cdef Waiter *grown
        if self._waiters_start and live * 2 <= self._waiters_capacity:
            memmove(self._waiters, self._waiters + self._waiters_start, live * sizeof(Waiter))
        else:
            capacity = self._waiters_capacity * 2 if self._waiters_capacity else 256
            grown = <Waiter *>realloc(self._waiters, capacity * sizeof(Waiter))
            if grown == NULL:
                raise MemoryError()
            self._waiters = grown
            self._waiters_capacity = capacity
            if self._waiters_start:
                memmove(self._waiters, self._waiters + self._waiters_start, live * sizeof(Waiter))
        self._waiters_start = 0
        self._waiters_end = live
        return 0

    def take_refusals(self):
        refusals, self.refusals = self.refusals, []
        return refusals

    # -- entries --------------------------------------------------------------------------
    def __len__(self):
        """Requests waiting for an entry."""
        return self._waiters_end - self._waiters_start

    def take(self, uint64_t batch_size, uint64_t batch_bytes_max, int64_t first_seen_us):
        """(data, waiters) of the next SET_EVENT_AT entry, or None when nothing waits; its ids
        are to be remembered as first seen at first_seen_us (the leader's clock now).

        Takes requests in arrival order until adding the next would pass batch_size events or
        batch_bytes_max bytes; a single request larger than that forms an entry of its own.
        """
        cdef Py_ssize_t i, n = 0
        cdef uint64_t events = 0, size = 0
        cdef Waiter *w
        if self._waiters_end == self._waiters_start:
            return None
        for i in range(self._waiters_start, self._waiters_end):
            w = &self._waiters[i]
            if n and (events + w.event_count > batch_size or size + w.event_bytes > batch_bytes_max):
                break
            w.first_event = <uint32_t>events
            events += w.event_count
            size += w.event_bytes
            n += 1
        if events > 0xFFFFFFFFu or size + ESC_BATCH_HEADER_BYTES > 0xFFFFFFFFu:
            raise ValueError(f"an entry of {events} events and {size} bytes does not fit a batch header")
        data = PyBytes_FromStringAndSize(NULL, ESC_SET_EVENT_AT_HEAD_BYTES + ESC_BATCH_HEADER_BYTES + size)
        cdef uint8_t *out = <uint8_t *>PyBytes_AS_STRING(data)
        out[0] = ESC_COMMAND_SET_EVENT_AT
        esc_store_u64(out + 1, <uint64_t>first_seen_us)
        esc_batch_write_header(out + ESC_SET_EVENT_AT_HEAD_BYTES, <uint32_t>events, <uint32_t>(ESC_BATCH_HEADER_BYTES + size))
        if size:
            memcpy(out + ESC_SET_EVENT_AT_HEAD_BYTES + ESC_BATCH_HEADER_BYTES, self._pending.data + self._pending_start, size)
        waiters = _entry_waiters(self._waiters + self._waiters_start, n)
        self._waiters_start += n
        self._consume_pending(size)
        self.pending_events -= events
        return data, waiters

    cdef void _consume_pending(self, uint64_t size) noexcept:
        self._pending_start += size
        self.pending_bytes -= size
        if self._waiters_start == self._waiters_end:
            self._waiters_start = self._waiters_end = 0
            self._pending_start = self._pending.length = 0
        elif self._pending_start * 2 > self._pending.length:
            # Compact once the taken prefix outweighs what is left: each byte moves O(1) times.
            memmove(self._pending.data, self._pending.data + self._pending_start,
                    self._pending.length - self._pending_start)
            self._pending.length -= self._pending_start
            self._pending_start = 0

    def drain(self):
        """Remove and return every waiting request (this node stopped leading)."""
        waiters = _entry_waiters(self._waiters + self._waiters_start, self._waiters_end - self._waiters_start)
        self._waiters_start = self._waiters_end = 0
        self._pending_start = self._pending.length = 0
        self.pending_events = 0
        self.pending_bytes = 0
        return waiters

    # -- answers out ----------------------------------------------------------------------
    cdef int _queue(self, uint32_t index, Slot *s, size_t size, uint8_t **at) except -1:
        """Reserve size bytes at the end of a connection's outbound buffer, marking it dirty."""
        _reserve(&s.outbound, size)
        at[0] = s.outbound.data + s.outbound.length
        s.outbound.length += size
        if not s.dirty:
            s.dirty = True
            self._dirty[self._dirty_count] = index
            self._dirty_count += 1
        return 0

    cdef inline void _observe(self, double seconds) noexcept:
        cdef Py_ssize_t b = 0
        while b < self._bound_count and self._bounds[b] < seconds:
            b += 1
        self._bucket_counts[b] += 1
        self.latency_sum += seconds

    def answer(self, EntryWaiters waiters, uint64_t index, statuses, queues, offsets, refused_table,
               uint32_t duplicate_status, double now):
        """Queue the APPEND OK answer of every waiter of the entry at `index` (result columns
        as in frame_append_answers). Returns (refused, duplicates): refused lists (slot, gen,
        request_id, flag) of waiters with a refused event, flag the largest refused_table value
        among its events, for the caller to answer with an error."""
        cdef _ResultViews r = _ResultViews(statuses, queues, offsets, refused_table)
        cdef Py_ssize_t i
        cdef Waiter *w
        cdef Slot *s
        cdef uint8_t *at
        cdef long long duplicates = 0
        cdef uint32_t j
        cdef uint8_t flag
        cdef list refused = []
        for i in range(waiters.n):
            w = &waiters.items[i]
            if <Py_ssize_t>w.first_event + w.event_count > r.cols.events:
                raise ValueError(f"waiter events {w.first_event}..{w.first_event + w.event_count} "
                                 f"outside the entry's {r.cols.events}")
        for i in range(waiters.n):
            w = &waiters.items[i]
            flag = _any_refused(r.cols.statuses + w.first_event, w.event_count, r.cols.refused)
            if flag:
                refused.append((w.slot, w.gen, w.request_id, flag))
                continue
            self._observe(now - w.arrival)
            s = self._live(w.slot, w.gen)
            if s == NULL:
                # The connection is gone; its duplicates still count as answered events.
                for j in range(w.event_count):
                    duplicates += r.cols.statuses[w.first_event + j] == duplicate_status
                continue
            s.in_flight -= 1
            self._queue(w.slot, s, _ok_frame_bytes(w.event_count), &at)
            duplicates += _write_ok_frame(at, w.request_id, index, w.event_count,
                                          r.cols.statuses + w.first_event,
                                          r.cols.queues + 4 * <size_t>w.first_event,
                                          r.cols.offsets + 8 * <size_t>w.first_event, duplicate_status)
        return refused, duplicates

    cdef int _queue_error(self, uint32_t index, Slot *s, uint8_t status, uint64_t request_id,
                          const uint8_t *message, size_t message_len, uint64_t leader_id) except -1:
        cdef size_t body_len = ESC_CLIENT_ANSWER_HEAD_BYTES + ESC_CLIENT_ERROR_FIXED_BYTES + message_len
        cdef uint8_t *at
        cdef uint8_t *body
        self._queue(index, s, ESC_FRAME_HEAD_BYTES + body_len, &at)
        body = at + ESC_FRAME_HEAD_BYTES
        body[0] = status
        esc_store_u64(body + 1, request_id)
        esc_store_u64(body + ESC_CLIENT_ANSWER_HEAD_BYTES, leader_id)
        if message_len:
            memcpy(body + ESC_CLIENT_ANSWER_HEAD_BYTES + ESC_CLIENT_ERROR_FIXED_BYTES, message, message_len)
        esc_frame_store_head(at, body, <uint32_t>body_len)
        return 0

    def fail(self, EntryWaiters waiters, uint8_t status, bytes message, uint64_t leader_id=0):
        """Queue the same error answer (client_protocol.encode_error) to every waiter whose
        connection is still open; returns how many waiters there were."""
        cdef Py_ssize_t i
        cdef Waiter *w
        cdef Slot *s
        if <uint64_t>(ESC_CLIENT_ANSWER_HEAD_BYTES + ESC_CLIENT_ERROR_FIXED_BYTES + len(message)) > self.frame_bytes_max:
            raise ValueError("error message longer than a frame")
        for i in range(waiters.n):
            w = &waiters.items[i]
            s = self._live(w.slot, w.gen)
            if s != NULL:
                s.in_flight -= 1
                self._queue_error(w.slot, s, status, w.request_id, <const uint8_t *><const char *>message,
                                  len(message), leader_id)
        return waiters.n

    def reply(self, uint32_t slot, uint32_t gen, body):
        """Queue one answer body (framed here) to a connection; False when it is gone."""
        cdef Slot *s = self._live(slot, gen)
        cdef const unsigned char[::1] view = as_byte_view(body)
        cdef size_t length = view.shape[0]
        cdef uint8_t *at
        if s == NULL:
            return False
        if length > self.frame_bytes_max:
            raise FrameError(f"frame body of {length} bytes exceeds the limit of {self.frame_bytes_max}")
        s.in_flight -= 1
        self._queue(slot, s, ESC_FRAME_HEAD_BYTES + length, &at)
        if length:
            memcpy(at + ESC_FRAME_HEAD_BYTES, &view[0], length)
        esc_frame_store_head(at, at + ESC_FRAME_HEAD_BYTES, <uint32_t>length)
        return True

    @property
    def dirty_count(self):
        """Connections with answers queued and not yet flushed."""
        return self._dirty_count

    def flush(self):
        """Write every queued answer: one send() per connection with the GIL released.
        Returns [(slot, bytes)] of what must go through the connection's transport instead
        (the socket's buffer was full, the connection has no fd, or is backlogged)."""
        cdef Py_ssize_t i, count = self._dirty_count
        cdef Slot *s
        cdef size_t sent
        cdef ssize_t n
        cdef int error
        cdef list rest = []
        with nogil:
            for i in range(count):
                s = &self._slots[self._dirty[i]]
                if not s.open or s.backlogged or s.fd < 0 or s.outbound.length == 0:
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
            s = &self._slots[self._dirty[i]]
            s.dirty = False
            if s.open and s.outbound.length:
                rest.append((self._dirty[i], PyBytes_FromStringAndSize(<const char *>s.outbound.data,
                                                                       s.outbound.length)))
                s.outbound.length = 0
        self._dirty_count = 0
        return rest

    def take_output(self, Py_ssize_t slot):
        """Everything queued for one connection, removed (to write it before closing)."""
        cdef Slot *s = self._slot(slot)
        out = PyBytes_FromStringAndSize(<const char *>s.outbound.data, s.outbound.length)
        s.outbound.length = 0
        return out

    # -- latency --------------------------------------------------------------------------
    def latency_counts(self):
        """Answers per histogram bucket (the last: above every bound), receipt to answer."""
        return [self._bucket_counts[i] for i in range(self._bound_count + 1)]
