# distutils: sources = csrc/crc32c.c csrc/murmur3.c csrc/tls_link.c
"""The node's APPEND hot path in native code: requests checked, queued and answered in bulk.

A leader under many single-event clients handles one APPEND request and one answer per event;
in Python the per-request parsing, batch validation, queueing and answer encoding cost more
than the Raft and storage work they feed. AppendIntake does all of it per connection read and
per applied entry, with the requests that wait for an entry held in C arrays; check_appends and
frame_append_answers are the same checks and encoders over lists, for tests and benchmarks.

One extension, its parts in their own files along the seams of the work:
  append_checks.pxi       requests in: frame checks and APPEND batch checks
  append_connections.pxi  client connections as slots (buffers, generations, free list)
  append_entries.pxi      the waiting requests, cut into SET_EVENT_AT entries
  append_answers.pxi      answers out: OK and error frames, per-connection output, latency
This file holds AppendIntake, which ties them together for the node.
Byte layouts: csrc/client_protocol.h (requests and answers), csrc/frame_format.h (frames) and
csrc/state_commands.h (the entry it builds); the Python encoders in eventstream/transport/ stay
the reference the tests compare these with.
"""

import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
cdef extern from "Python.h":
    # Grows or shrinks a bytes object nobody else holds yet (refcount 1), in place when it can.
    int _PyBytes_Resize(PyObject **bytes, Py_ssize_t size) except -1

from libc.errno cimport EAGAIN, EINTR, ENOMEM, EPIPE, errno
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memmove

from batch_codec_h cimport *
from byte_order_h cimport esc_load_u32, esc_load_u64, esc_store_u32, esc_store_u64
from byte_views cimport as_byte_view
from client_protocol_h cimport *
from frame_format_h cimport *
from tls_link_h cimport (
    esc_tls, esc_tls_ctx, esc_tls_ctx_free, esc_tls_error_text, esc_tls_free, esc_tls_handshake_step,
    esc_tls_mem_feed, esc_tls_mem_outgoing, esc_tls_mem_take, esc_tls_new_server, esc_tls_peer_node, esc_tls_read,
    esc_tls_server_ctx_new, esc_tls_write,
)
from state_commands_h cimport ESC_COMMAND_SET_EVENT_AT, ESC_SET_EVENT_AT_HEAD_BYTES

from eventstream.transport.frames import FrameError


cdef extern from "murmur3.h" nogil:
    uint32_t esc_murmur3_32(const uint8_t *data, size_t len, uint32_t seed)

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

# Why an APPEND was refused at intake (AppendIntake.take_refusals); the node words the answer.
REFUSED_INVALID = 1        # malformed batch or queue out of range; the message says which
REFUSED_NOT_ACCEPTING = 2  # this node does not take appends now (not leader, transfer)
REFUSED_OVERLOADED = 3     # the proposal queue is past its byte limit
REFUSED_QUEUE_DENIED = 4   # the connection's token may not append to a queue an event goes to

include "append_checks.pxi"
include "append_connections.pxi"
include "append_entries.pxi"
include "append_tls.pxi"
include "append_answers.pxi"


cdef bint _denied(const uint8_t *body, size_t length, const Slot *s, uint32_t queue_count,
                  int64_t *denied) noexcept nogil:
    """Whether the APPEND at body has an event bound for a queue the slot may not append to."""
    denied[0] = _first_queue_not_in(body + ESC_CLIENT_REQUEST_HEAD_BYTES, length - ESC_CLIENT_REQUEST_HEAD_BYTES,
                                    s.append_queues, s.append_queue_count, queue_count)
    return denied[0] >= 0


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
    """
    cdef Connections _conns
    cdef PendingEntries _entry
    cdef Latency _latency
    cdef readonly uint64_t frame_bytes_max
    cdef readonly int64_t in_flight_max
    cdef readonly uint64_t pending_bytes_max
    cdef public uint32_t queue_count
    # (slot, request_id, REFUSED_*, message) of APPENDs refused at intake, oldest first.
    cdef readonly list refusals
    cdef dict _sessions  # slot -> TlsServerSession of a native TLS connection

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
        self._sessions = {}
        self._latency.n = len(bounds)
        self._latency.bounds = <double *>realloc(NULL, (len(bounds) + 1) * sizeof(double))
        self._latency.counts = <uint64_t *>realloc(NULL, (len(bounds) + 1) * sizeof(uint64_t))
        if self._latency.bounds == NULL or self._latency.counts == NULL:
            raise MemoryError()
        for i in range(len(bounds)):
            self._latency.bounds[i] = bounds[i]
        for i in range(len(bounds) + 1):
            self._latency.counts[i] = 0

    def __dealloc__(self):
        _connections_free(&self._conns)
        _pending_free(&self._entry)
        free(self._latency.bounds)
        free(self._latency.counts)

    @property
    def pending_events(self):
        """Events of the requests waiting for an entry."""
        return self._entry.events

    @property
    def pending_bytes(self):
        """Event bytes (batch headers removed) of the requests waiting for an entry."""
        return self._entry.bytes

    @property
    def latency_sum(self):
        """Seconds from receipt to answer, summed over every answer counted."""
        return self._latency.sum

    # -- connections ----------------------------------------------------------------------
    def open_slot(self, int fd):
        """A new connection's (slot, gen); fd is its socket (duplicated here, so the caller
        keeps its own), or -1 to write through Python."""
        cdef uint32_t index = _connections_open(&self._conns, fd)
        return index, self._conns.slots[index].gen

    def close_slot(self, Py_ssize_t slot):
        """Forget a connection; answers still owed to it are dropped when they come."""
        _connections_get(&self._conns, slot)
        _connections_close(&self._conns, <uint32_t>slot)
        self._sessions.pop(slot, None)

    def in_flight(self, Py_ssize_t slot):
        """Requests taken from this connection and not yet answered."""
        return _connections_get(&self._conns, slot).in_flight

    def requests(self, Py_ssize_t slot):
        return _connections_get(&self._conns, slot).requests

    def count_request(self, Py_ssize_t slot):
        """A request handled in Python now counts as in flight; returns the new count."""
        cdef Slot *s = _connections_get(&self._conns, slot)
        s.in_flight += 1
        s.requests += 1
        return s.in_flight

    def buffered_bytes(self, Py_ssize_t slot):
        """Bytes of an incomplete frame (or of requests not yet read) held for this connection."""
        return _connections_get(&self._conns, slot).inbound.length

    def set_append_queues(self, Py_ssize_t slot, queues):
        """Limit the connection's APPENDs to these queues (its token's `append:<q>`
        permissions); None lifts the limit. An APPEND with an event bound elsewhere is refused
        whole (REFUSED_QUEUE_DENIED)."""
        cdef Slot *s = _connections_get(&self._conns, slot)
        cdef list ordered = sorted(set(queues)) if queues is not None else []
        cdef uint32_t *table = NULL
        cdef Py_ssize_t i
        if queues is not None:
            table = <uint32_t *>realloc(NULL, max(1, len(ordered)) * sizeof(uint32_t))
            if table == NULL:
                raise MemoryError()
            for i in range(len(ordered)):
                table[i] = ordered[i]
        free(s.append_queues)
        s.append_queues = table
        s.append_queue_count = len(ordered)

    def set_tls(self, Py_ssize_t slot, TlsServerSession session):
        """The connection speaks native TLS: its answers are encrypted with `session` (kept
        alive here until the slot closes) before the flush writes them."""
        cdef Slot *s = _connections_get(&self._conns, slot)
        s.tls = session.tls
        self._sessions[slot] = session

    def set_backlogged(self, Py_ssize_t slot, bint backlogged):
        _connections_get(&self._conns, slot).backlogged = backlogged

    # -- requests in ----------------------------------------------------------------------
    def feed(self, Py_ssize_t slot, data, double now, bint accepting):
        """Take what a connection's socket delivered. APPEND requests are queued for the next
        entry or refused (see refusals); the first other request is returned as its body, and
        the bytes after it stay buffered until feed(slot, b"", ...) is called again, so Python
        serves it after the APPENDs before it and before those after it. Returns None when
        everything complete was taken. A bad frame raises FrameError before anything in this
        read is taken (the connection must then be closed)."""
        cdef Slot *s = _connections_get(&self._conns, slot)
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
        state = _whole_frames(buf, end, self.frame_bytes_max, &checked, &f)
        if state != ESC_FRAME_NEED_MORE:
            s.inbound.length = 0
            raise _frame_error(state, &f, self.frame_bytes_max)
        pos = 0
        handed = None
        while pos < checked:
            length = esc_load_u32(buf + pos)
            body = buf + pos + ESC_FRAME_HEAD_BYTES
            if (length >= ESC_CLIENT_REQUEST_HEAD_BYTES and body[0] == ESC_CLIENT_OP_APPEND
                    and s.in_flight < self.in_flight_max):
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
        cdef int64_t denied = -1
        _check_batch(body + ESC_CLIENT_REQUEST_HEAD_BYTES, length - ESC_CLIENT_REQUEST_HEAD_BYTES, &c)
        message = _refusal_text(&c, self.queue_count)
        if message is not None:
            self.refusals.append((slot, request_id, REFUSED_INVALID, message))
        elif not accepting:
            self.refusals.append((slot, request_id, REFUSED_NOT_ACCEPTING, None))
        elif s.append_queues != NULL and _denied(body, length, s, self.queue_count, &denied):
            self.refusals.append((slot, request_id, REFUSED_QUEUE_DENIED,
                                  f"this connection's token does not allow appending to queue {denied}"))
        elif self._entry.bytes > self.pending_bytes_max:
            self.refusals.append((slot, request_id, REFUSED_OVERLOADED, None))
        else:
            _pending_add(&self._entry, slot, s.gen, request_id, c.count,
                         body + ESC_CLIENT_REQUEST_HEAD_BYTES + ESC_BATCH_HEADER_BYTES,
                         length - ESC_CLIENT_REQUEST_HEAD_BYTES - ESC_BATCH_HEADER_BYTES, now)
        return 0

    def take_refusals(self):
        refusals, self.refusals = self.refusals, []
        return refusals

    # -- entries --------------------------------------------------------------------------
    def __len__(self):
        """Requests waiting for an entry."""
        return self._entry.waiters_end - self._entry.waiters_start

    def take(self, uint64_t batch_size, uint64_t batch_bytes_max, int64_t first_seen_us):
        """(data, waiters) of the next SET_EVENT_AT entry, or None when nothing waits; its ids
        are to be remembered as first seen at first_seen_us (the leader's clock now).

        Takes requests in arrival order until adding the next would pass batch_size events or
        batch_bytes_max bytes; a single request larger than that forms an entry of its own.
        """
        return _pending_take(&self._entry, batch_size, batch_bytes_max, first_seen_us)

    def drain(self):
        """Remove and return every waiting request (this node stopped leading)."""
        return _pending_drain(&self._entry)

    # -- answers out ----------------------------------------------------------------------
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
            _latency_observe(&self._latency, now - w.arrival)
            s = _connections_live(&self._conns, w.slot, w.gen)
            if s == NULL:
                # The connection is gone; its duplicates still count as answered events.
                for j in range(w.event_count):
                    duplicates += r.cols.statuses[w.first_event + j] == duplicate_status
                continue
            s.in_flight -= 1
            _queue_output(&self._conns, w.slot, s, _ok_frame_bytes(w.event_count), &at)
            duplicates += _write_ok_frame(at, w.request_id, index, w.event_count,
                                          r.cols.statuses + w.first_event,
                                          r.cols.queues + 4 * <size_t>w.first_event,
                                          r.cols.offsets + 8 * <size_t>w.first_event, duplicate_status)
        return refused, duplicates

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
            s = _connections_live(&self._conns, w.slot, w.gen)
            if s != NULL:
                s.in_flight -= 1
                _queue_error(&self._conns, w.slot, s, status, w.request_id,
                             <const uint8_t *><const char *>message, len(message), leader_id)
        return waiters.n

    def reply(self, uint32_t slot, uint32_t gen, body):
        """Queue one answer body (framed here) to a connection; False when it is gone."""
        cdef Slot *s = _connections_live(&self._conns, slot, gen)
        cdef const unsigned char[::1] view = as_byte_view(body)
        cdef size_t length = view.shape[0]
        cdef uint8_t *at
        if s == NULL:
            return False
        if length > self.frame_bytes_max:
            raise FrameError(f"frame body of {length} bytes exceeds the limit of {self.frame_bytes_max}")
        s.in_flight -= 1
        _queue_output(&self._conns, slot, s, ESC_FRAME_HEAD_BYTES + length, &at)
        if length:
            memcpy(at + ESC_FRAME_HEAD_BYTES, &view[0], length)
        esc_frame_store_head(at, at + ESC_FRAME_HEAD_BYTES, <uint32_t>length)
        return True

    @property
    def dirty_count(self):
        """Connections with answers queued and not yet flushed."""
        return self._conns.dirty_count

    def flush(self):
        """Write every queued answer: one send() per connection with the GIL released.
        Returns [(slot, bytes, records)] of what must go through the connection's transport
        instead (the socket's buffer was full, the connection has no fd, or is backlogged);
        records: bytes a native TLS session already encrypted."""
        return _flush_output(&self._conns)

    def take_output(self, Py_ssize_t slot):
        """Everything queued for one connection, removed (to write it before closing)."""
        cdef Slot *s = _connections_get(&self._conns, slot)
        out = PyBytes_FromStringAndSize(<const char *>s.outbound.data, s.outbound.length)
        s.outbound.length = 0
        return out

    # -- latency --------------------------------------------------------------------------
    def latency_counts(self):
        """Answers per histogram bucket (the last: above every bound), receipt to answer."""
        return [self._latency.counts[i] for i in range(self._latency.n + 1)]
