# Entry building: the waiting requests and their event bytes, cut into SET_EVENT_AT entries:
# part of the eventstream.transport._append_intake extension; csrc/_append_intake.pyx includes
# it after the declarations and shared names it uses.

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


cdef struct PendingEntries:
    # Invariant: data[start:] holds, back to back, the event bytes (batch header removed) of
    # waiters[waiters_start:waiters_end] in order; events and bytes are their sums.
    Buffer data
    size_t start
    Waiter *waiters
    Py_ssize_t waiters_start, waiters_end, waiters_capacity
    uint64_t events
    uint64_t bytes


cdef int _pending_grow_waiters(PendingEntries *p) except -1:
    cdef Py_ssize_t live = p.waiters_end - p.waiters_start
    cdef Py_ssize_t capacity
    cdef Waiter *grown
    if p.waiters_start and live * 2 <= p.waiters_capacity:
        memmove(p.waiters, p.waiters + p.waiters_start, live * sizeof(Waiter))
    else:
        capacity = p.waiters_capacity * 2 if p.waiters_capacity else 256
        grown = <Waiter *>realloc(p.waiters, capacity * sizeof(Waiter))
        if grown == NULL:
            raise MemoryError()
        p.waiters = grown
        p.waiters_capacity = capacity
        if p.waiters_start:
            memmove(p.waiters, p.waiters + p.waiters_start, live * sizeof(Waiter))
    p.waiters_start = 0
    p.waiters_end = live
    return 0


cdef int _pending_add(PendingEntries *p, uint32_t slot, uint32_t gen, uint64_t request_id, uint32_t count,
                      const uint8_t *events, size_t event_bytes, double arrival) except -1:
    """Queue one checked APPEND request's events (batch header removed) for the next entry."""
    cdef Waiter *w
    _reserve(&p.data, event_bytes)
    memcpy(p.data.data + p.data.length, events, event_bytes)
    p.data.length += event_bytes
    if p.waiters_end == p.waiters_capacity:
        _pending_grow_waiters(p)
    w = &p.waiters[p.waiters_end]
    p.waiters_end += 1
    w.slot = slot
    w.gen = gen
    w.request_id = request_id
    w.event_count = count
    w.first_event = 0
    w.event_bytes = <uint32_t>event_bytes
    w.arrival = arrival
    p.events += count
    p.bytes += event_bytes
    return 0


cdef void _pending_consume(PendingEntries *p, uint64_t size) noexcept nogil:
    p.start += size
    p.bytes -= size
    if p.waiters_start == p.waiters_end:
        p.waiters_start = p.waiters_end = 0
        p.start = p.data.length = 0
    elif p.start * 2 > p.data.length:
        # Compact once the taken prefix outweighs what is left: each byte moves O(1) times.
        memmove(p.data.data, p.data.data + p.start, p.data.length - p.start)
        p.data.length -= p.start
        p.start = 0


cdef object _pending_take(PendingEntries *p, uint64_t batch_size, uint64_t batch_bytes_max, int64_t first_seen_us):
    """(data, waiters) of the next SET_EVENT_AT entry, or None when nothing waits.

    Takes requests in arrival order until adding the next would pass batch_size events or
    batch_bytes_max bytes; a single request larger than that forms an entry of its own.
    """
    cdef Py_ssize_t i, n = 0
    cdef uint64_t events = 0, size = 0
    cdef Waiter *w
    cdef uint8_t *out
    if p.waiters_end == p.waiters_start:
        return None
    for i in range(p.waiters_start, p.waiters_end):
        w = &p.waiters[i]
        if n and (events + w.event_count > batch_size or size + w.event_bytes > batch_bytes_max):
            break
        w.first_event = <uint32_t>events
        events += w.event_count
        size += w.event_bytes
        n += 1
    if events > 0xFFFFFFFFu or size + ESC_BATCH_HEADER_BYTES > 0xFFFFFFFFu:
        raise ValueError(f"an entry of {events} events and {size} bytes does not fit a batch header")
    data = PyBytes_FromStringAndSize(NULL, ESC_SET_EVENT_AT_HEAD_BYTES + ESC_BATCH_HEADER_BYTES + size)
    out = <uint8_t *>PyBytes_AS_STRING(data)
    out[0] = ESC_COMMAND_SET_EVENT_AT
    esc_store_u64(out + 1, <uint64_t>first_seen_us)
    esc_batch_write_header(out + ESC_SET_EVENT_AT_HEAD_BYTES, <uint32_t>events,
                           <uint32_t>(ESC_BATCH_HEADER_BYTES + size))
    if size:
        memcpy(out + ESC_SET_EVENT_AT_HEAD_BYTES + ESC_BATCH_HEADER_BYTES, p.data.data + p.start, size)
    waiters = _entry_waiters(p.waiters + p.waiters_start, n)
    p.waiters_start += n
    _pending_consume(p, size)
    p.events -= events
    return data, waiters


cdef EntryWaiters _pending_drain(PendingEntries *p):
    """Remove and return every waiting request."""
    waiters = _entry_waiters(p.waiters + p.waiters_start, p.waiters_end - p.waiters_start)
    p.waiters_start = p.waiters_end = 0
    p.start = p.data.length = 0
    p.events = 0
    p.bytes = 0
    return waiters


cdef void _pending_free(PendingEntries *p) noexcept nogil:
    _release(&p.data)
    free(p.waiters)
    p.waiters = NULL
