# Client connections as slots: their buffers, generations and free list:
# part of the eventstream.transport._append_intake extension; csrc/_append_intake.pyx includes
# it after the declarations and shared names it uses.

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
    # The queues this connection's token may append to, ascending; NULL: any queue.
    uint32_t *append_queues
    Py_ssize_t append_queue_count
    # Over native TLS: the connection's session (owned by its TlsServerSession) and whether
    # outbound holds records already encrypted (the socket was full) rather than answers.
    esc_tls *tls
    bint outbound_records


cdef struct Connections:
    # Connections are slots; a closed slot's index goes on the free list for the next one.
    Slot *slots
    Py_ssize_t capacity
    Py_ssize_t count
    uint32_t *free_list
    Py_ssize_t free_count
    uint32_t *dirty       # slots with answers queued since the last flush
    Py_ssize_t dirty_count


cdef int _connections_grow(Connections *t) except -1:
    cdef Py_ssize_t capacity = t.capacity * 2 if t.capacity else 64
    cdef Slot *slots = <Slot *>realloc(t.slots, capacity * sizeof(Slot))
    if slots == NULL:
        raise MemoryError()
    t.slots = slots
    cdef uint32_t *free_list = <uint32_t *>realloc(t.free_list, capacity * sizeof(uint32_t))
    if free_list == NULL:
        raise MemoryError()
    t.free_list = free_list
    cdef uint32_t *dirty = <uint32_t *>realloc(t.dirty, capacity * sizeof(uint32_t))
    if dirty == NULL:
        raise MemoryError()
    t.dirty = dirty
    t.capacity = capacity
    return 0


cdef uint32_t _connections_open(Connections *t, int fd) except? 0xFFFFFFFF:
    """A slot for a new connection whose socket is fd (duplicated here, so the caller keeps its
    own), or -1 to write through Python."""
    cdef uint32_t index
    cdef Slot *s
    cdef int own = -1
    if fd >= 0:
        own = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        if own < 0:
            raise OSError(errno, f"cannot duplicate socket descriptor {fd}")
    if t.free_count:
        t.free_count -= 1
        index = t.free_list[t.free_count]
    else:
        if t.count == t.capacity:
            _connections_grow(t)
        index = <uint32_t>t.count
        t.count += 1
        t.slots[index].gen = 0
        # A reused slot keeps its dirty flag: it may still be listed for the next flush.
        t.slots[index].dirty = False
    s = &t.slots[index]
    s.fd = own
    s.open = True
    s.backlogged = False
    s.in_flight = 0
    s.requests = 0
    s.inbound.data = NULL
    s.inbound.length = s.inbound.capacity = 0
    s.outbound.data = NULL
    s.outbound.length = s.outbound.capacity = 0
    s.append_queues = NULL
    s.append_queue_count = 0
    s.tls = NULL
    s.outbound_records = False
    return index


cdef Slot *_connections_get(Connections *t, Py_ssize_t slot) except NULL:
    if slot < 0 or slot >= t.count or not t.slots[slot].open:
        raise ValueError(f"slot {slot} is not an open connection")
    return &t.slots[slot]


cdef inline Slot *_connections_live(Connections *t, uint32_t slot, uint32_t gen) noexcept nogil:
    """The slot if it still holds the connection of generation gen, else NULL."""
    if slot >= t.count:
        return NULL
    cdef Slot *s = &t.slots[slot]
    if not s.open or s.gen != gen:
        return NULL
    return s


cdef void _connections_close(Connections *t, uint32_t slot) noexcept nogil:
    """Forget an open connection; answers still owed to it are dropped when they come."""
    cdef Slot *s = &t.slots[slot]
    _release(&s.inbound)
    _release(&s.outbound)
    free(s.append_queues)
    s.append_queues = NULL
    s.append_queue_count = 0
    s.tls = NULL
    s.outbound_records = False
    s.open = False
    s.gen += 1
    if s.fd >= 0:
        close(s.fd)
    s.fd = -1
    t.free_list[t.free_count] = slot
    t.free_count += 1


cdef void _connections_free(Connections *t) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(t.count):
        if t.slots[i].open and t.slots[i].fd >= 0:
            close(t.slots[i].fd)
        _release(&t.slots[i].inbound)
        _release(&t.slots[i].outbound)
    free(t.slots)
    free(t.free_list)
    free(t.dirty)
    t.slots = NULL
    t.free_list = NULL
    t.dirty = NULL
    t.count = t.capacity = t.free_count = t.dirty_count = 0
