"""Native event batch codec: encode_batch / decode_batch / BatchView over csrc/batch_codec.h.

Python touches each batch once; the loops over events run here, and the layout itself is parsed
only by the C header so other extensions walk the very same bytes the same way.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from cpython.bytes cimport PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLong, PyLong_Check
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc

from batch_codec_h cimport *
from byte_views cimport as_byte_view

import array

from eventstream.storage.errors import CodecError
from eventstream.storage.event import Event


cdef extern from "Python.h":
    PyObject *PyTuple_GET_ITEM(object t, Py_ssize_t i)


BATCH_VERSION = ESC_BATCH_VERSION
BATCH_HEADER_BYTES = ESC_BATCH_HEADER_BYTES
EVENT_HEADER_BYTES = ESC_EVENT_HEADER_BYTES
BATCH_EVENTS_MAX = ESC_BATCH_EVENTS_MAX
BATCH_BYTES_MAX = ESC_BATCH_BYTES_MAX
EVENT_BYTES_MAX = ESC_EVENT_BYTES_MAX
EVENT_ID_BYTES_MAX = ESC_EVENT_ID_BYTES_MAX
EVENT_KEY_BYTES_MAX = ESC_EVENT_KEY_BYTES_MAX
QUEUE_LIMIT = 2**31

cdef object _tuple_new = tuple.__new__

cdef enum:
    _COLUMN_TIMESTAMP
    _COLUMN_QUEUE
    _COLUMN_PAYLOAD_LENGTH
cdef long long _QUEUE_LIMIT = 2**31


cdef int _field_bytes(object value, Py_ssize_t index, str name, Py_ssize_t limit, list keep,
                      const uint8_t **ptr, uint32_t *length) except -1:
    """Points `ptr` at the bytes of `value`; non-bytes buffers are copied once into `keep`."""
    cdef Py_ssize_t size
    if not PyBytes_CheckExact(value):
        try:
            value = bytes(memoryview(value))
        except TypeError:
            raise CodecError(
                f"event {index}: {name} must be bytes or None, not {type(value).__name__}"
            ) from None
        keep.append(value)
    size = PyBytes_GET_SIZE(value)
    if limit >= 0 and size > limit:
        raise CodecError(f"event {index}: {name} is {size} bytes, limit {limit}")
    ptr[0] = <const uint8_t *>PyBytes_AS_STRING(value)
    length[0] = <uint32_t>size if size <= ESC_EVENT_BYTES_MAX else ESC_EVENT_BYTES_MAX + 1
    return 0


cdef int _read_event_fields(object event, Py_ssize_t index, list keep, esc_event_t *ev) except -1:
    cdef object value
    cdef long long number
    cdef Py_ssize_t width = PyTuple_GET_SIZE(event) if PyTuple_Check(event) else 0
    if width != 5 and width != 6:
        raise CodecError(
            f"event {index}: expected a 5- or 6-tuple "
            f"(event_id, key, queue, timestamp_us, payload[, id_generated])"
        )
    ev.flags = 0
    ev.id_len = 0
    ev.key_len = 0
    ev.queue = 0
    value = <object>PyTuple_GET_ITEM(event, 0)
    if value is not None:
        _field_bytes(value, index, "event_id", ESC_EVENT_ID_BYTES_MAX, keep, &ev.event_id, &ev.id_len)
        ev.flags |= ESC_EVENT_HAS_ID
    value = <object>PyTuple_GET_ITEM(event, 1)
    if value is not None:
        _field_bytes(value, index, "key", ESC_EVENT_KEY_BYTES_MAX, keep, &ev.key, &ev.key_len)
        ev.flags |= ESC_EVENT_HAS_KEY
    value = <object>PyTuple_GET_ITEM(event, 2)
    if value is not None:
        number = -1
        if PyLong_Check(value):
            try:
                number = PyLong_AsLongLong(value)
            except OverflowError:
                number = -1
        if number < 0 or number >= _QUEUE_LIMIT:
            raise CodecError(f"event {index}: queue must be None or an int in [0, 2**31)")
        ev.queue = <uint32_t>number
        ev.flags |= ESC_EVENT_HAS_QUEUE
    value = <object>PyTuple_GET_ITEM(event, 3)
    if not PyLong_Check(value):
        raise CodecError(f"event {index}: timestamp_us must be an int64")
    try:
        ev.timestamp_us = PyLong_AsLongLong(value)
    except OverflowError:
        raise CodecError(f"event {index}: timestamp_us must be an int64") from None
    value = <object>PyTuple_GET_ITEM(event, 4)
    if value is None:
        raise CodecError(f"event {index}: payload must be bytes, not None")
    _field_bytes(value, index, "payload", -1, keep, &ev.payload, &ev.payload_len)
    if width == 6:
        value = <object>PyTuple_GET_ITEM(event, 5)
        if not isinstance(value, (bool, int)):
            raise CodecError(f"event {index}: id_generated must be a bool")
        if value:
            if not ev.flags & ESC_EVENT_HAS_ID:
                raise CodecError(f"event {index}: id_generated is set but the event has no event_id")
            ev.flags |= ESC_EVENT_ID_GENERATED
    return 0


def encode_batch(events):
    """Encodes (event_id, key, queue, timestamp_us, payload[, id_generated]) tuples (or Events)
    into one batch.

    Raises CodecError naming the first bad event; nothing is partially written.
    """
    cdef list seq = events if type(events) is list else list(events)
    cdef Py_ssize_t count = len(seq)
    cdef Py_ssize_t i
    cdef size_t total = ESC_BATCH_HEADER_BYTES
    cdef size_t size
    cdef list keep = []
    cdef esc_event_t *evs
    cdef uint8_t *out_ptr
    cdef size_t offset
    if count > ESC_BATCH_EVENTS_MAX:
        raise CodecError(f"batch has more than {ESC_BATCH_EVENTS_MAX} events")
    evs = <esc_event_t *>malloc((count + 1) * sizeof(esc_event_t))
    if evs == NULL:
        raise MemoryError()
    try:
        for i in range(count):
            _read_event_fields(seq[i], i, keep, &evs[i])
            size = esc_event_encoded_bytes(evs[i].id_len, evs[i].key_len, evs[i].payload_len)
            if size > ESC_EVENT_BYTES_MAX:
                raise CodecError(f"event {i}: encoded size above the limit {ESC_EVENT_BYTES_MAX}")
            total += size
            if total > ESC_BATCH_BYTES_MAX:
                raise CodecError(f"batch exceeds {ESC_BATCH_BYTES_MAX} bytes")
        out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>total)
        out_ptr = <uint8_t *>PyBytes_AS_STRING(out)
        # The field pointers stay valid without the GIL: `seq` and `keep` hold their owners.
        with nogil:
            esc_batch_write_header(out_ptr, <uint32_t>count, <uint32_t>total)
            offset = ESC_BATCH_HEADER_BYTES
            for i in range(count):
                offset += esc_batch_write_event(out_ptr + offset, &evs[i])
        return out
    finally:
        free(evs)


cdef class BatchView:
    """A validated batch over the caller's buffer: no per-event objects unless asked.

    Indexing or iterating builds Event tuples (payload copied to bytes); the accessors
    (payload(i) as a zero-copy memoryview, timestamps_us(), queues(), ...) do not.
    Native consumers take `buffer` and walk it with csrc/batch_codec.h.
    Invariant: the whole buffer passed esc_batch_validate and `_offsets[i]` is event i's start.
    """

    cdef const unsigned char[::1] _bytes
    cdef object _memory
    cdef uint32_t _count
    cdef uint32_t *_offsets

    def __cinit__(self):
        self._offsets = NULL
        self._count = 0

    def __dealloc__(self):
        free(self._offsets)

    cdef int _load(self, object data) except -1:
        cdef uint32_t count = 0
        cdef size_t error_offset = 0
        cdef int status
        cdef const uint8_t *ptr
        cdef size_t length
        self._bytes = as_byte_view(data)
        length = self._bytes.shape[0]
        ptr = &self._bytes[0] if length else <const uint8_t *>b""
        status = esc_batch_read_header(ptr, length, &count)
        if status == ESC_BATCH_OK:
            self._offsets = <uint32_t *>malloc((count + 1) * sizeof(uint32_t))
            if self._offsets == NULL:
                raise MemoryError()
            with nogil:
                status = esc_batch_validate(ptr, length, &count, self._offsets, &error_offset)
        if status != ESC_BATCH_OK:
            raise CodecError(
                f"batch at offset {error_offset}: {esc_batch_status_text(status).decode()}"
            )
        self._count = count
        self._memory = memoryview(self._bytes)
        return 0

    cdef inline int _event(self, Py_ssize_t index, esc_event_t *ev) except -1:
        cdef size_t next_offset
        if index < 0:
            index += self._count
        if index < 0 or index >= self._count:
            raise IndexError("batch event index out of range")
        cdef int status = esc_batch_read_event(&self._bytes[0], self._bytes.shape[0],
                                               self._offsets[index], ev, &next_offset)
        if status != ESC_BATCH_OK:
            # Only possible if the caller wrote into its buffer after decode_batch validated it;
            # the re-check keeps that from turning into an out-of-bounds read.
            raise CodecError(
                f"batch at offset {self._offsets[index]}: "
                f"{esc_batch_status_text(status).decode()} (buffer changed after validation)"
            )
        return 0

    cdef object _make_event(self, esc_event_t *ev):
        cdef const char *base = <const char *>&self._bytes[0]
        event_id = (
            PyBytes_FromStringAndSize(<const char *>ev.event_id, ev.id_len)
            if ev.flags & ESC_EVENT_HAS_ID else None
        )
        key = (
            PyBytes_FromStringAndSize(<const char *>ev.key, ev.key_len)
            if ev.flags & ESC_EVENT_HAS_KEY else None
        )
        queue = ev.queue if ev.flags & ESC_EVENT_HAS_QUEUE else None
        payload = PyBytes_FromStringAndSize(<const char *>ev.payload, ev.payload_len)
        return _tuple_new(Event, (event_id, key, queue, ev.timestamp_us, payload,
                                  bool(ev.flags & ESC_EVENT_ID_GENERATED)))

    def __len__(self):
        return self._count

    def __getitem__(self, Py_ssize_t index):
        cdef esc_event_t ev
        self._event(index, &ev)
        return self._make_event(&ev)

    def __iter__(self):
        cdef esc_event_t ev
        cdef uint32_t i
        for i in range(self._count):
            self._event(i, &ev)
            yield self._make_event(&ev)

    def events(self):
        """All events as a list of Event tuples."""
        return [self[i] for i in range(self._count)]

    @property
    def buffer(self):
        """The whole validated batch as a memoryview of format 'B' (no copy)."""
        return self._memory

    @property
    def nbytes(self):
        return self._bytes.shape[0]

    def event_id(self, Py_ssize_t index):
        cdef esc_event_t ev
        self._event(index, &ev)
        if not ev.flags & ESC_EVENT_HAS_ID:
            return None
        return PyBytes_FromStringAndSize(<const char *>ev.event_id, ev.id_len)

    def key(self, Py_ssize_t index):
        cdef esc_event_t ev
        self._event(index, &ev)
        if not ev.flags & ESC_EVENT_HAS_KEY:
            return None
        return PyBytes_FromStringAndSize(<const char *>ev.key, ev.key_len)

    def id_generated(self, Py_ssize_t index):
        """Whether the client library generated event `index`'s id (storage.event.Event)."""
        cdef esc_event_t ev
        self._event(index, &ev)
        return bool(ev.flags & ESC_EVENT_ID_GENERATED)

    def queue(self, Py_ssize_t index):
        cdef esc_event_t ev
        self._event(index, &ev)
        return ev.queue if ev.flags & ESC_EVENT_HAS_QUEUE else None

    def timestamp_us(self, Py_ssize_t index):
        cdef esc_event_t ev
        self._event(index, &ev)
        return ev.timestamp_us

    def payload(self, Py_ssize_t index):
        """Event `index`'s payload as a zero-copy memoryview into the batch."""
        cdef esc_event_t ev
        self._event(index, &ev)
        start = ev.payload - &self._bytes[0]
        return self._memory[start : start + ev.payload_len]

    def event_offsets(self):
        """array('I') of each event's start offset in the batch."""
        out = array.array("I", bytes(self._count * sizeof(uint32_t)))
        cdef uint32_t[::1] dst = out
        cdef uint32_t i
        for i in range(self._count):
            dst[i] = self._offsets[i]
        return out

    cdef object _column(self, int field):
        """One int64 per event, read straight from the batch into an array('q')."""
        out = array.array("q", bytes(self._count * sizeof(int64_t)))
        cdef int64_t[::1] dst = out
        cdef esc_event_t ev
        cdef uint32_t i
        for i in range(self._count):
            self._event(i, &ev)
            if field == _COLUMN_TIMESTAMP:
                dst[i] = ev.timestamp_us
            elif field == _COLUMN_QUEUE:
                dst[i] = ev.queue if ev.flags & ESC_EVENT_HAS_QUEUE else -1
            else:
                dst[i] = ev.payload_len
        return out

    def timestamps_us(self):
        """array('q') of every event's timestamp_us."""
        return self._column(_COLUMN_TIMESTAMP)

    def queues(self):
        """array('q') of every event's explicit queue, -1 where none was given."""
        return self._column(_COLUMN_QUEUE)

    def payload_lengths(self):
        """array('q') of every event's payload length."""
        return self._column(_COLUMN_PAYLOAD_LENGTH)

    def __repr__(self):
        return f"<BatchView events={self._count} bytes={self._bytes.shape[0]}>"


def decode_batch(data):
    """Validates a whole batch once and returns a BatchView over it (the buffer is not copied).

    Raises CodecError naming the byte offset of the first malformed header or event.
    """
    cdef BatchView view = BatchView.__new__(BatchView)
    view._load(data)
    return view
