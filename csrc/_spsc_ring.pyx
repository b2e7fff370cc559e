# distutils: sources = csrc/spsc_ring.c csrc/entry_ring.c csrc/crc32c.c csrc/send_all.c csrc/append_stream.c csrc/worker_cycle.c csrc/tls_link.c
"""Python face of the replication pool's shared-memory rings.

SpscRing (csrc/spsc_ring.h has the layout and the memory-ordering argument): one object is one
end: the producer process calls write*, wake_needed; the consumer process calls read,
prepare_wait. Using both ends of one ring from two processes at once is the
contract; two producers (or two consumers) are not.

EntryRing (csrc/entry_ring.h): the leader appends each new log entry once; every worker builds
AppendEntries frames from it at its own positions (encode_append), and learns when the leader
has overwritten what it was asked to send.

AppendStream (csrc/append_stream.h): a worker's frames to its follower, AppendEntries sent with
their entry bytes straight from the entry ring (no copy into a send buffer), each frame's last
byte held back until a check after the send proves the kernel copied untorn bytes.

WorkerCycle (csrc/worker_cycle.h): a replication worker's whole cycle (answers in, orders out,
reports, sleep) run without the GIL until a deadline or until the worker's Python code is needed.

TlsClient (csrc/tls_link.h): the cluster CA and this node's certificate, for a worker's link to
its follower over TLS (WorkerCycle.link_tls): the worker then encrypts in C, off the node."""

import os

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from append_stream_h cimport (
    ESC_FRAME_HEAD_BYTES, ESC_MESSAGE_HEAD_BYTES, ESC_STREAM_LAPPED, ESC_STREAM_SEND_FAILED, esc_append_frame_encode, esc_append_head,
    esc_stream,
    esc_stream_flush, esc_stream_free, esc_stream_init, esc_stream_queue_append, esc_stream_queue_frame,
    esc_stream_queue_message,
    esc_stream_reset,
)

from byte_views cimport as_byte_view
from posix.uio cimport iovec
from tls_link_h cimport (
    ESC_TLS_ERROR_BYTES, esc_tls, esc_tls_available, esc_tls_ctx, esc_tls_ctx_free, esc_tls_ctx_new, esc_tls_free,
    esc_tls_handshake, esc_tls_new, esc_tls_peer_node, esc_tls_write_all,
)
from worker_cycle_h cimport (
    ESC_LOST_CLOSED, ESC_LOST_FRAME_CRC, ESC_LOST_FRAME_TOO_LONG, ESC_LOST_LAPPED, ESC_LOST_RECV_FAILED,
    ESC_LOST_SEND_FAILED, ESC_ORDER_APPEND, ESC_ORDER_APPEND_BYTES, ESC_ORDER_MESSAGE, ESC_STATUS_CONNECTED,
    ESC_STATUS_RESPONSE, ESC_STATUS_STALE, ESC_STATUS_UNREACHABLE, ESC_RECV_BYTES, ESC_RESPONSE_BYTES, ESC_RUN_DEADLINE, ESC_RUN_IDLE, ESC_RUN_LOST,
    ESC_RUN_ORPHANED, ESC_RUN_RING_CORRUPT, ESC_WAIT_BOUNDS_MAX, esc_worker, esc_worker_config, esc_worker_feed, esc_worker_free, esc_worker_init,
    esc_worker_link, esc_worker_run,
)
from entry_ring_h cimport (
    ESC_ENTRY_HEADER_BYTES, ESC_ENTRY_MIN_CAPACITY, ESC_ENTRY_MISMATCH, ESC_ENTRY_NO_ROOM, ESC_ENTRY_OK,
    ESC_ENTRY_STALE, ESC_ENTRY_TOO_LARGE, esc_entry_ring, esc_entry_ring_append, esc_entry_ring_attach,
    esc_entry_ring_init, esc_entry_ring_low, esc_entry_ring_max_payload,
    esc_entry_ring_tail,
)
from spsc_ring_h cimport (
    ESC_RING_BAD_MAPPING, ESC_RING_CORRUPT, ESC_RING_EMPTY, ESC_RING_FULL, ESC_RING_HEADER_BYTES,
    ESC_RING_MIN_CAPACITY, ESC_RING_OK, ESC_RING_TOO_LARGE, esc_ring, esc_ring_attach,
    esc_ring_consume, esc_ring_consumed, esc_ring_init, esc_ring_max_payload, esc_ring_peek,
    esc_ring_prepare_wait,
    esc_ring_publish, esc_ring_reserve, esc_ring_used, esc_ring_wake_needed,
)

HEADER_BYTES = ESC_RING_HEADER_BYTES
MIN_CAPACITY = ESC_RING_MIN_CAPACITY
class RingError(ValueError):
    """The mapping is not a ring, or its contents break the ring's invariants."""


class RecordTooLargeError(ValueError):
    """A record larger than the ring's max_payload: it can never be written."""


cdef class _SharedMapping:
    """One process's end of a ring in shared bytes (an mmap both processes map). Subclasses
    format the bytes (create) or check another process's format (attach) in their __cinit__."""
    cdef unsigned char[::1] view
    cdef object mapping
    cdef bint attached
    cdef readonly uint64_t capacity  # bytes of record space, set once the ring is bound

    def __cinit__(self, mapping, bint create):
        self.view = mapping
        self.mapping = mapping

    cdef int _refuse(self, str what, size_t min_bytes) except -1:
        cdef Py_ssize_t size = len(self.mapping)
        self.view = None
        self.mapping = None
        raise RingError(
            f"a {size}-byte mapping is not a usable {what} (64-byte aligned, at least {min_bytes} bytes, "
            f"formatted by create())"
        )

    @classmethod
    def create(cls, mapping):
        """Format `mapping` (a writable buffer, e.g. an mmap) as an empty ring."""
        return cls(mapping, True)

    @classmethod
    def attach(cls, mapping):
        """Use a ring that another process formatted in the same shared bytes."""
        return cls(mapping, False)

    cdef inline void _check(self) except *:
        if not self.attached:
            raise RingError("ring is closed")

    def close(self):
        """Drop this end's view of the mapping (the mapping can then be closed)."""
        self.attached = False
        self.view = None
        self.mapping = None


cdef class SpscRing(_SharedMapping):
    cdef esc_ring ring

    def __cinit__(self, mapping, bint create):
        cdef int rc
        if create:
            rc = esc_ring_init(&self.ring, &self.view[0], self.view.shape[0])
        else:
            rc = esc_ring_attach(&self.ring, &self.view[0], self.view.shape[0])
        if rc != ESC_RING_OK:
            self._refuse("ring", ESC_RING_HEADER_BYTES + ESC_RING_MIN_CAPACITY)
        self.capacity = self.ring.capacity
        self.attached = True

    @property
    def max_payload(self):
        return esc_ring_max_payload(&self.ring)

    @property
    def used(self):
        """Bytes written and not yet read (record heads and padding included)."""
        self._check()
        return esc_ring_used(&self.ring)

    @property
    def consumed(self):
        """Bytes the consumer has released since the ring was made; grows only with progress."""
        self._check()
        return esc_ring_consumed(&self.ring)

    # -- producer ------------------------------------------------------------------------------
    def write(self, unsigned int kind, data):
        """Append one record; False when the ring has no room now (nothing is written)."""
        return self.write_parts(kind, (data,))

    def write_parts(self, unsigned int kind, parts):
        """Append one record whose payload is the concatenation of `parts` (buffers), copied
        straight into the ring: the message is never joined in process memory first."""
        self._check()
        cdef list views = [as_byte_view(p) for p in parts]
        cdef const unsigned char[::1] v
        cdef size_t total = 0
        cdef size_t n
        cdef uint8_t *out
        cdef int rc
        for v in views:
            total += v.shape[0]
        rc = esc_ring_reserve(&self.ring, kind, total, &out)
        if rc == ESC_RING_FULL:
            return False
        if rc == ESC_RING_TOO_LARGE:
            raise RecordTooLargeError(f"record of {total} bytes exceeds the ring's limit of {esc_ring_max_payload(&self.ring)}")
        for v in views:
            n = v.shape[0]
            if n:
                memcpy(out, &v[0], n)
                out += n
        esc_ring_publish(&self.ring)
        return True

    def wake_needed(self):
        """After writing: True when the consumer sleeps and its doorbell must be rung."""
        self._check()
        return esc_ring_wake_needed(&self.ring) == 1

    # -- consumer ------------------------------------------------------------------------------
    cdef bint _peek(self, uint32_t *kind, const uint8_t **payload, uint32_t *length) except -1:
        """True with the oldest record's fields, False when empty; corruption raises."""
        self._check()
        cdef int rc = esc_ring_peek(&self.ring, kind, payload, length)
        if rc == ESC_RING_EMPTY:
            return False
        if rc != ESC_RING_OK:
            raise RingError("ring corrupt: a record head points outside the published bytes")
        return True

    def read(self):
        """The oldest record as (kind, payload bytes), consumed; None when the ring is empty."""
        cdef uint32_t kind, length
        cdef const uint8_t *payload
        if not self._peek(&kind, &payload, &length):
            return None
        data = payload[:length]
        esc_ring_consume(&self.ring)
        return kind, data

    def prepare_wait(self):
        """Announce that the consumer is about to sleep on its doorbell. True: still empty, sleep;
        False: a record arrived meanwhile, read it instead."""
        self._check()
        return esc_ring_prepare_wait(&self.ring) == 1



ENTRY_HEADER_BYTES = ESC_ENTRY_HEADER_BYTES
ENTRY_MIN_CAPACITY = ESC_ENTRY_MIN_CAPACITY
# encode_append results other than a frame length.
GATHER_STALE = ESC_ENTRY_STALE
GATHER_MISMATCH = ESC_ENTRY_MISMATCH
# The frame head (u32 length, u32 CRC-32C; eventstream/transport/frames.py) and the fixed head of
# a peer message (eventstream/transport/peer_codec.py) before an AppendEntries' entry table: its
# byte layout is written field by field in csrc/append_stream.c, and a differential test holds
# it to encode_message.
APPEND_OVERHEAD_BYTES = ESC_FRAME_HEAD_BYTES + ESC_MESSAGE_HEAD_BYTES
# AppendStream.queue_append: the entries were overwritten while the kernel copied them; the frame
# was left without its last byte and the link must be closed.
SEND_LAPPED = ESC_STREAM_LAPPED
# AppendStream.queue_append: more entries than one gather list takes; nothing was sent (copy the
# frame out with encode_append and queue_frame it).
SEND_TOO_MANY = ESC_ENTRY_NO_ROOM


cdef class EntryRing(_SharedMapping):
    cdef esc_entry_ring ring

    def __cinit__(self, mapping, bint create):
        cdef int rc
        if create:
            rc = esc_entry_ring_init(&self.ring, &self.view[0], self.view.shape[0])
        else:
            rc = esc_entry_ring_attach(&self.ring, &self.view[0], self.view.shape[0])
        if rc != ESC_ENTRY_OK:
            self._refuse("entry ring", ESC_ENTRY_HEADER_BYTES + ESC_ENTRY_MIN_CAPACITY)
        self.capacity = self.ring.capacity
        self.attached = True

    @property
    def max_payload(self):
        return esc_entry_ring_max_payload(&self.ring)

    @property
    def tail(self):
        """Position after the last record published."""
        self._check()
        return esc_entry_ring_tail(&self.ring)

    @property
    def low(self):
        """Records at positions below this may be overwritten: they are gone."""
        self._check()
        return esc_entry_ring_low(&self.ring)

    def append(self, uint64_t index, uint64_t term, data):
        """Publish one entry; returns its record's position (for encode_append)."""
        self._check()
        cdef const unsigned char[::1] v = as_byte_view(data)
        cdef uint64_t pos = 0
        cdef size_t n = v.shape[0]
        cdef const uint8_t *p = &v[0] if n else NULL
        cdef int rc
        with nogil:
            rc = esc_entry_ring_append(&self.ring, index, term, p, n, &pos)
        if rc == ESC_ENTRY_TOO_LARGE:
            raise RecordTooLargeError(
                f"entry {index} of {n} bytes exceeds the entry ring's limit of {esc_entry_ring_max_payload(&self.ring)}")
        return pos

    def encode_append(self, out, size_t offset, uint64_t to, uint64_t sender, uint64_t term, uint64_t prev_index,
                      uint64_t prev_term, uint64_t commit, uint64_t pos, uint64_t lo, uint64_t hi):
        """Write one framed AppendEntries message (frame header with CRC-32C, then the body that
        eventstream/transport/peer_codec.py encodes) carrying entries lo..hi, read from the record
        at `pos` on, into out[offset:]. Returns the frame's length, or GATHER_STALE when the
        records were overwritten before they were copied out, or GATHER_MISMATCH when `pos` does
        not hold entry lo (then nothing may be sent). ValueError when out is too small."""
        self._check()
        cdef unsigned char[::1] dst = out
        cdef int64_t n
        cdef esc_append_head head
        if offset > <size_t>dst.shape[0] or dst.shape[0] - offset < ESC_FRAME_HEAD_BYTES + ESC_MESSAGE_HEAD_BYTES:
            raise ValueError("out has no room for an AppendEntries head")
        head.to, head.sender, head.term = to, sender, term
        head.prev_index, head.prev_term, head.commit = prev_index, prev_term, commit
        with nogil:
            n = esc_append_frame_encode(&self.ring, &head, pos, lo, hi, &dst[offset], dst.shape[0] - offset)
        if n == ESC_ENTRY_NO_ROOM:
            raise ValueError(f"out has no room for entries {lo}..{hi}")
        return n


cdef class AppendStream:
    """A worker's frames to its follower over socket fd (non-blocking), written with sendmsg.

    queue_message and queue_append queue frames; an AppendEntries goes to the kernel at once
    (all but its last byte, which leads the next send: csrc/append_stream.h), the rest on
    flush(). Sends wait up to timeout_ms whenever the socket's buffer is full. A send that fails
    raises OSError; the stream then holds part of a frame at most and the link must be closed
    (reset() starts over on a new one)."""
    cdef esc_stream stream

    def __cinit__(self, int fd, int timeout_ms, size_t local_bytes=1 << 18):
        if local_bytes < 4096:
            raise ValueError(f"a local buffer of {local_bytes} bytes is below the 4096 the stream needs")
        if esc_stream_init(&self.stream, fd, timeout_ms, local_bytes) != 0:
            raise MemoryError("no memory for the stream's local buffer")

    def __dealloc__(self):
        esc_stream_free(&self.stream)

    cdef int _failed(self) except -1:
        raise OSError(self.stream.error, os.strerror(self.stream.error))

    def reset(self, int fd):
        """Forget whatever is queued (the link was lost) and write to fd from now on."""
        esc_stream_reset(&self.stream, fd, NULL)

    cdef int _queue(self, data, bint framed) except -1:
        cdef const unsigned char[::1] v = as_byte_view(data)
        cdef const uint8_t *p = &v[0] if v.shape[0] else NULL
        cdef size_t n = v.shape[0]
        cdef int rc
        with nogil:
            if framed:
                rc = esc_stream_queue_frame(&self.stream, NULL, 0, p, n)
            else:
                rc = esc_stream_queue_message(&self.stream, p, n)
        if rc != 0:
            self._failed()
        return 0

    def queue_message(self, payload):
        """Queue one full message (an encoded peer message) as a frame."""
        self._queue(payload, False)

    def queue_frame(self, frame):
        """Queue bytes that are already a whole frame (from EntryRing.encode_append)."""
        self._queue(frame, True)

    def queue_append(self, EntryRing entries, uint64_t to, uint64_t sender, uint64_t term, uint64_t prev_index,
                     uint64_t prev_term, uint64_t commit, uint64_t pos, uint64_t lo, uint64_t hi):
        """Send entries lo..hi of `entries`, read from the record at `pos` on, as one
        AppendEntries frame (the body eventstream/transport/peer_codec.py encodes). Returns the
        frame's length; GATHER_STALE or GATHER_MISMATCH when nothing was sent (as encode_append);
        SEND_TOO_MANY when nothing was sent because the entries are too many for one gather
        list; SEND_LAPPED when the entries were overwritten during the send (close the link)."""
        entries._check()
        cdef esc_append_head head
        cdef int64_t rc
        head.to, head.sender, head.term = to, sender, term
        head.prev_index, head.prev_term, head.commit = prev_index, prev_term, commit
        with nogil:
            rc = esc_stream_queue_append(&self.stream, &entries.ring, &head, pos, lo, hi)
        if rc == ESC_STREAM_SEND_FAILED:
            self._failed()
        return rc

    def flush(self):
        """Send and push everything queued."""
        cdef int rc
        with nogil:
            rc = esc_stream_flush(&self.stream)
        if rc != 0:
            self._failed()

    @property
    def bytes_sent(self):
        """Bytes handed to the kernel since the stream was made."""
        return self.stream.bytes_sent

    @property
    def sends(self):
        """esc_send_all calls (sendmsg batches) since the stream was made."""
        return self.stream.sends


RUN_DEADLINE = ESC_RUN_DEADLINE
RUN_IDLE = ESC_RUN_IDLE
RUN_LOST = ESC_RUN_LOST
RUN_RING_CORRUPT = ESC_RUN_RING_CORRUPT
RUN_ORPHANED = ESC_RUN_ORPHANED
RECV_BYTES = ESC_RECV_BYTES
# The record kinds and sizes csrc/worker_cycle.h writes and reads, as C compiled them, so a test
# can hold them to the Python side's (eventstream/replication/worker.py).
CYCLE_RECORDS = {
    "ORDER_MESSAGE": ESC_ORDER_MESSAGE, "ORDER_APPEND": ESC_ORDER_APPEND,
    "ORDER_APPEND_BYTES": ESC_ORDER_APPEND_BYTES, "STATUS_CONNECTED": ESC_STATUS_CONNECTED,
    "STATUS_UNREACHABLE": ESC_STATUS_UNREACHABLE, "STATUS_RESPONSE": ESC_STATUS_RESPONSE,
    "STATUS_STALE": ESC_STATUS_STALE, "RESPONSE_BYTES": ESC_RESPONSE_BYTES,
    "WAIT_BOUNDS_MAX": ESC_WAIT_BOUNDS_MAX,
}


class TlsLinkError(OSError):
    """A link over TLS could not be brought up; the message says why."""


TLS_AVAILABLE = bool(esc_tls_available())


cdef class TlsClient:
    """A TLS client context: trust the CA in ca_file, present cert_file/key_file (both or
    neither). TlsLinkError when a file cannot be used, or the build has no native TLS."""
    cdef esc_tls_ctx *ctx

    def __cinit__(self, ca_file, cert_file=None, key_file=None):
        cdef char err[256]
        ca = os.fsencode(ca_file)
        cert = os.fsencode(cert_file) if cert_file is not None else None
        key = os.fsencode(key_file) if key_file is not None else None
        self.ctx = esc_tls_ctx_new(ca, <const char *>cert if cert is not None else NULL,
                                   <const char *>key if key is not None else NULL, err, sizeof(err))
        if self.ctx == NULL:
            raise TlsLinkError(err.decode(errors="replace"))

    def __dealloc__(self):
        esc_tls_ctx_free(self.ctx)


cdef class WorkerCycle:
    """One replication worker's cycle in C (csrc/worker_cycle.h). The rings stay owned by their
    Python objects, which this keeps alive; the status ring's other records (STATS) may be
    written through its SpscRing between runs, never during one."""
    cdef esc_worker w
    cdef bint ready
    cdef object rings

    def __cinit__(self, uint64_t node_id, uint64_t peer_id, EntryRing entries, SpscRing control, SpscRing status,
                  int doorbell_fd, int node_bell_fd, uint64_t append_bytes_max, uint64_t append_entries_max,
                  uint64_t answer_frame_max, int send_timeout_ms, int poll_ms, int status_retry_ms,
                  wait_bounds_ns):
        cdef esc_worker_config cfg
        cdef int n = len(wait_bounds_ns)
        cdef int i
        if n > ESC_WAIT_BOUNDS_MAX:
            raise ValueError(f"{n} order-wait bounds; at most {ESC_WAIT_BOUNDS_MAX}")
        for i in range(n):
            cfg.wait_bounds_ns[i] = wait_bounds_ns[i]
        cfg.n_wait_bounds = n
        cfg.node_id, cfg.peer_id = node_id, peer_id
        cfg.append_bytes_max, cfg.append_entries_max = append_bytes_max, append_entries_max
        cfg.answer_frame_max = answer_frame_max
        cfg.doorbell_fd, cfg.node_bell_fd = doorbell_fd, node_bell_fd
        cfg.send_timeout_ms, cfg.poll_ms, cfg.status_retry_ms = send_timeout_ms, poll_ms, status_retry_ms
        entries._check()
        control._check()
        status._check()
        if esc_worker_init(&self.w, &cfg, &entries.ring, &control.ring, &status.ring) != 0:
            raise MemoryError("no memory for the worker's buffers")
        self.rings = (entries, control, status)
        self.ready = True

    def __dealloc__(self):
        if self.ready:
            esc_worker_free(&self.w)

    def link(self, int fd):
        """The link to the follower is up on fd (CONNECTED is reported), or down (-1)."""
        esc_worker_link(&self.w, fd, NULL)

    def link_tls(self, int fd, TlsClient client, int64_t peer_id, int timeout_ms, first):
        """Bring the link up over TLS on fd (connected, non-blocking): the handshake, within
        timeout_ms; the follower's certificate must name peer_id; then `first` (the hello
        frame) is sent through it and the cycle reads and writes the link through the session.
        Raises TlsLinkError with the reason (the caller closes fd)."""
        cdef const unsigned char[::1] v = as_byte_view(first)
        cdef iovec iov
        cdef char err[256]
        cdef esc_tls *tls = esc_tls_new(client.ctx, fd)
        cdef int rc
        cdef int64_t named
        if tls == NULL:
            raise MemoryError("no memory for a TLS session")
        with nogil:
            rc = esc_tls_handshake(tls, timeout_ms, err, sizeof(err))
        if rc != 0:
            esc_tls_free(tls)
            raise TlsLinkError(err.decode(errors="replace"))
        named = esc_tls_peer_node(tls)
        if named != peer_id:
            esc_tls_free(tls)
            raise TlsLinkError(f"the certificate at the follower's address names "
                               f"{'node ' + str(named) if named >= 0 else 'no node'}, not node {peer_id}")
        iov.iov_base = <void *>&v[0]
        iov.iov_len = v.shape[0]
        with nogil:
            rc = esc_tls_write_all(tls, &iov, 1, timeout_ms)
        if rc != 0:
            esc_tls_free(tls)
            raise TlsLinkError(f"sending the hello failed: {os.strerror(-rc)}")
        esc_worker_link(&self.w, fd, tls)

    def run(self, uint64_t deadline_ns):
        """Cycle until CLOCK_MONOTONIC deadline_ns, an idle sleep, a lost link or a corrupt control
        ring: RUN_DEADLINE, RUN_IDLE, RUN_LOST (see lost_reason), RUN_RING_CORRUPT or RUN_ORPHANED
        (the node closed its end of the doorbell, or died)."""
        cdef int rc
        with nogil:
            rc = esc_worker_run(&self.w, deadline_ns)
        return rc

    def lost_reason(self):
        """Why the last RUN_LOST happened, in words."""
        cdef int reason = self.w.lost_reason
        if reason == ESC_LOST_RECV_FAILED:
            return f"receive failed: {os.strerror(self.w.lost_errno)}"
        if reason == ESC_LOST_CLOSED:
            return "follower closed the replication link"
        if reason == ESC_LOST_FRAME_TOO_LONG:
            return f"bad frame from the follower: length prefix {self.w.lost_a} exceeds the limit"
        if reason == ESC_LOST_FRAME_CRC:
            return (f"bad frame from the follower: frame CRC mismatch: header says {self.w.lost_a:#010x}, "
                    f"body has {self.w.lost_b:#010x}")
        if reason == ESC_LOST_SEND_FAILED:
            return f"send failed: {os.strerror(self.w.lost_errno)}"
        if reason == ESC_LOST_LAPPED:
            return f"entries from {self.w.lost_a} were overwritten while being sent; frame left unfinished"
        return "link lost"

    def feed(self, data):
        """Take received bytes as a read of the link would (tests drive the answer decoder with
        this): 0, -1 after a bad frame (the link is then down), -2 when nothing could be taken."""
        cdef const unsigned char[::1] v = as_byte_view(data)
        return esc_worker_feed(&self.w, &v[0] if v.shape[0] else NULL, v.shape[0])

    def take_pending(self):
        """The RESPONSE records waiting for the status ring, removed from it (tests)."""
        records = [bytes(self.w.pending[k][:ESC_RESPONSE_BYTES]) for k in range(self.w.pending_n)]
        self.w.pending_n = 0
        return records

    def totals(self):
        """messages, bytes, sends, dropped, then the wake counters (worker.py's WakeCounters
        fields): sleeps, doorbell wakes, missed wake-ups, order wait ns, the wait buckets."""
        buckets = [self.w.wait_buckets[k] for k in range(self.w.cfg.n_wait_bounds + 1)]
        return (self.w.messages, self.w.stream.bytes_sent, self.w.stream.sends, self.w.dropped, self.w.sleeps,
                self.w.doorbell_wakes, self.w.missed_wakeups, self.w.order_wait_ns, *buckets)

    @property
    def refusals(self):
        """(malformed answers, unexpected answers, unknown orders) dropped so far."""
        return (self.w.malformed_answers, self.w.unexpected_answers, self.w.unknown_orders)

    @property
    def answers_relayed(self):
        return self.w.answers_relayed
