# distutils: sources = csrc/crc32c.c
"""Native WAL kernels for eventstream.storage.segment_log: framing, segment writes, scans and
range reads, and the append path itself (LogTail, which SegmentLog extends).

Every loop over records is here; SegmentLog (Python) calls each once per batch or per segment.
Record layout: csrc/wal_format.h.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from cpython.bytes cimport PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsUnsignedLongLong
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, strerror
from posix.types cimport off_t
from posix.uio cimport iovec
from posix.unistd cimport ftruncate

import array

from byte_views cimport as_byte_view
from wal_format_h cimport *


cdef object _errors_module = None


cdef object _errors():
    """eventstream.storage.errors, imported on first use because eventstream.storage imports
    this module while the package initialises."""
    global _errors_module
    if _errors_module is None:
        import eventstream.storage.errors as errors
        _errors_module = errors
    return _errors_module


cdef object _storage_error(str message):
    return _errors().StorageError(message)


cdef object _corruption_error(str message):
    return _errors().CorruptionError(message)


cdef extern from "Python.h":
    PyObject *PyTuple_GET_ITEM(object t, Py_ssize_t i)


cdef extern from "segment_write.h" nogil:
    int esc_pwritev_all(int fd, iovec *iov, int count, off_t offset)
    int esc_preallocate(int fd, off_t offset, off_t length)
    int esc_zero_fill(int fd, off_t offset, off_t length)


WAL_VERSION = ESC_WAL_VERSION
WAL_TYPE_ENTRY = ESC_WAL_TYPE_ENTRY
WAL_HEADER_BYTES = ESC_WAL_HEADER_BYTES
WAL_PAYLOAD_BYTES_MAX = ESC_WAL_PAYLOAD_BYTES_MAX
WAL_PAYLOAD_ALIGN_BYTES = ESC_WAL_PAYLOAD_ALIGN_BYTES
WAL_ALIGN_PAYLOAD_BYTES_MIN = ESC_WAL_ALIGN_PAYLOAD_BYTES_MIN

# Every SPARSE_STRIDE-th record of a segment has its file offset in the in-memory index, so a
# lookup is one array read plus at most SPARSE_STRIDE - 1 header hops.
cdef enum:
    _SPARSE_STRIDE = 64
SPARSE_STRIDE = _SPARSE_STRIDE

cdef enum:
    # Batches whose payloads average this much go to the kernel straight from the caller's
    # buffers (one vectored write) instead of being copied behind their headers first.
    _VECTORED_PAYLOAD_BYTES_MIN = 16 * 1024
    # Blocks are reserved this far ahead of the write position (segment_write.h).
    _PREALLOCATE_BYTES = 8 * 1024 * 1024
    # A zero-filled segment is written with zeros this far ahead of the write position.
    _ZERO_FILL_BYTES = 1024 * 1024


cdef struct _item:
    const uint8_t *payload
    size_t length
    uint64_t index
    uint64_t term


cdef class PreparedRecords:
    """A validated batch of records ready to be framed into one or more segments.

    Validation covers the whole batch before any byte is framed, so a bad record anywhere
    rejects the batch and nothing is written.
    Invariant: items[i].index == first_index + i and items[i].term never decreases.
    """

    cdef _item *items
    cdef readonly Py_ssize_t count
    cdef readonly uint64_t first_index
    cdef readonly uint64_t last_term
    cdef readonly size_t payload_bytes
    cdef readonly list term_starts
    cdef object owners
    cdef list payload_objects  # tuples path: the payload bytes of each record
    cdef _item single  # items for a batch of one, the common append, without a malloc

    def __cinit__(self):
        self.items = NULL
        self.count = 0

    def __dealloc__(self):
        if self.items != &self.single:
            free(self.items)

    cdef int _allocate(self, Py_ssize_t count) except -1:
        if count <= 1:
            self.items = &self.single
        else:
            self.items = <_item *>malloc(count * sizeof(_item))
            if self.items == NULL:
                raise MemoryError()
        self.count = count
        return 0

    cdef int _check_sequence(self, Py_ssize_t i, uint64_t prev_term) except -1:
        """Index contiguity and non-decreasing terms (Raft paper 5.3, Log Matching)."""
        cdef _item *item = &self.items[i]
        cdef uint64_t expected = self.first_index + <uint64_t>i
        cdef uint64_t before = self.items[i - 1].term if i > 0 else prev_term
        if item.index != expected:
            raise _storage_error(
                f"record {i}: index {item.index} is not the next index {expected}"
            )
        if item.term < before:
            raise _storage_error(
                f"record {i}: term {item.term} is below the previous term {before}"
            )
        if item.length > ESC_WAL_PAYLOAD_BYTES_MAX:
            raise _storage_error(
                f"record {i}: payload of {item.length} bytes above the limit "
                f"{ESC_WAL_PAYLOAD_BYTES_MAX}"
            )
        if item.term != before:
            self.term_starts.append((item.index, item.term))
        self.payload_bytes += item.length
        return 0

    cdef Py_ssize_t _fit(self, Py_ssize_t start, Py_ssize_t room_bytes, bint force_first,
                         uint64_t segment_records, size_t *total, Py_ssize_t *sparse_count) except -1:
        """How many records from `start` fit in `room_bytes` (at least one when force_first)."""
        cdef Py_ssize_t end = start
        cdef size_t size
        if start < 0 or start > self.count:
            raise IndexError("start outside the prepared records")
        total[0] = 0
        sparse_count[0] = 0
        while end < self.count:
            size = esc_wal_record_bytes(self.items[end].length)
            if total[0] + size > <size_t>room_bytes and not (end == start and force_first):
                break
            total[0] += size
            if (segment_records + <uint64_t>(end - start)) % _SPARSE_STRIDE == 0:
                sparse_count[0] += 1
            end += 1
        return end

    def frame(self, Py_ssize_t start, Py_ssize_t room_bytes, bint force_first,
              uint64_t segment_records, uint64_t segment_offset):
        """Frames records from `start` on while they fit in `room_bytes` (at least one when
        `force_first`). Returns (framed bytes, records consumed, sparse offsets as u64 bytes)
        where the sparse offsets are file offsets given the segment already holds
        `segment_records` records in `segment_offset` bytes."""
        cdef size_t total
        cdef Py_ssize_t i, sparse_count
        cdef Py_ssize_t end = self._fit(start, room_bytes, force_first, segment_records, &total,
                                        &sparse_count)
        framed = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>total)
        sparse = PyBytes_FromStringAndSize(NULL, sparse_count * sizeof(uint64_t))
        cdef uint64_t *sparse_out = <uint64_t *>PyBytes_AS_STRING(sparse)
        cdef uint8_t *out = <uint8_t *>PyBytes_AS_STRING(framed)
        cdef size_t offset = 0
        sparse_count = 0
        for i in range(start, end):
            if (segment_records + <uint64_t>(i - start)) % _SPARSE_STRIDE == 0:
                sparse_out[sparse_count] = segment_offset + offset
                sparse_count += 1
            offset += esc_wal_record_bytes(self.items[i].length)
        with nogil:
            self._frame_into(out, start, end)
        return framed, end - start, sparse

    cdef size_t _frame_into(self, uint8_t *out, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
        """Copies records start .. end - 1 behind their headers into `out`, back to back;
        returns the bytes written. self.owners and self.payload_objects hold the payloads, so
        the pointers stay valid without the GIL."""
        cdef size_t offset = 0
        cdef Py_ssize_t i
        cdef _item *item
        for i in range(start, end):
            item = &self.items[i]
            if item.length:
                memcpy(out + offset + ESC_WAL_HEADER_BYTES, item.payload, item.length)
            offset += esc_wal_seal_record(out + offset, ESC_WAL_TYPE_ENTRY,
                                          <uint32_t>item.length, item.index, item.term)
        return offset


cdef class SegmentFile:
    """One segment file: its descriptor, extent and sparse index. SegmentLog keeps one per
    segment and writes only through the last (active) one, with write().

    Invariant: records first_index .. first_index + count - 1 occupy bytes [0, size) of the
    file, and sparse[k] is the file offset of record first_index + k * SPARSE_STRIDE.
    """

    cdef readonly str path
    cdef readonly uint64_t first_index
    cdef public uint64_t count
    cdef public uint64_t size
    cdef public int fd
    cdef readonly object sparse
    # Blocks are reserved up to here; past `size` the reservation keeps the file size as is,
    # except in a zero-filled segment, where the file holds zeros up to here.
    cdef uint64_t preallocated_end
    # Set for logs that fdatasync every append (wal_sync): the file is extended with zeros
    # ahead of the writes instead of reserving blocks (esc_zero_fill says why). Recovery reads
    # an all-zero tail as the end of the log.
    cdef public bint zero_fill

    def __init__(self, str path, uint64_t first_index, int fd):
        self.path = path
        self.first_index = first_index
        self.fd = fd
        self.count = 0
        self.size = 0
        self.sparse = array.array("Q")
        self.preallocated_end = 0
        self.zero_fill = False

    @property
    def last_index(self):
        return <object>self.first_index + <object>self.count - 1

    def locate(self, uint64_t index):
        """(file offset, index) of the indexed record at or before `index`."""
        cdef uint64_t k = (index - self.first_index) // _SPARSE_STRIDE
        return self.sparse[k], self.first_index + k * _SPARSE_STRIDE

    def end_offset(self, uint64_t index_end):
        """An offset at or after the end of record index_end - 1 that is a record boundary."""
        cdef uint64_t k = (index_end - self.first_index + _SPARSE_STRIDE - 1) // _SPARSE_STRIDE
        return self.sparse[k] if k < <uint64_t>len(self.sparse) else self.size

    def keep_records(self, uint64_t count, uint64_t size):
        """Forgets records past the first `count`, after the file was cut to `size` bytes (a
        cut also frees the blocks reserved past it)."""
        self.count = count
        self.size = size
        self.preallocated_end = size
        del self.sparse[(count + _SPARSE_STRIDE - 1) // _SPARSE_STRIDE :]

    def release_preallocation(self):
        """Frees blocks reserved past the end of the data: the segment takes no more writes
        (sealed, or the log is closing). Truncating to the current size keeps every byte."""
        if self.preallocated_end > self.size:
            # Best effort, like the reservation: a failure only leaves disk space in use.
            ftruncate(self.fd, <off_t>self.size)
        self.preallocated_end = self.size

    cpdef Py_ssize_t write(self, PreparedRecords prepared, Py_ssize_t start,
                           uint64_t segment_bytes, bint align_alone) except -1:
        """Frames and writes prepared records from `start` on while they fit in the segment's
        `segment_bytes` (at least one into an empty segment). Returns how many were written;
        0 means the segment is full.

        With align_alone, a batch of exactly one record whose payload has at least
        WAL_ALIGN_PAYLOAD_BYTES_MIN bytes gets padding before its header that puts its payload
        at a multiple of WAL_PAYLOAD_ALIGN_BYTES in the file (csrc/wal_format.h says why); the
        padding is left as a hole, and dropped when only the unpadded record fits. Longer writes fill large
        page-cache folios anyway, and padding inside them would only add copies of zeros. Raises OSError when the write fails: the file may then
        hold part of a record past `size`, which the caller must cut.
        """
        cdef uint64_t room = segment_bytes - self.size if segment_bytes > self.size else 0
        cdef size_t total = 0, pad = 0
        cdef Py_ssize_t sparse_count, i
        cdef Py_ssize_t end = prepared._fit(start, room, self.count == 0, self.count, &total,
                                            &sparse_count)
        cdef Py_ssize_t n = end - start
        if n == 0:
            return 0
        cdef _item *item = &prepared.items[start]
        if align_alone and prepared.count == 1 and item.length >= ESC_WAL_ALIGN_PAYLOAD_BYTES_MIN:
            pad = esc_wal_align_pad_bytes(self.size)
            if self.count and self.size + total + pad > segment_bytes:
                pad = 0  # padding never rolls a segment: the record goes in unpadded
            total += pad
        cdef uint64_t write_end = self.size + total
        cdef uint64_t reserve_end
        cdef int fd = self.fd, rc = 0
        cdef uint64_t fill_from
        if write_end > self.preallocated_end:
            if self.zero_fill:
                # Zeros first, then the records over them: a crash in between leaves a zero
                # tail, which recovery reads as the end of the log.
                reserve_end = max(write_end, min(write_end + _ZERO_FILL_BYTES, segment_bytes))
                fill_from = max(self.preallocated_end, write_end)
                with nogil:
                    rc = esc_zero_fill(fd, <off_t>fill_from, <off_t>(reserve_end - fill_from))
                if rc != 0:
                    raise OSError(rc, strerror(rc).decode(), self.path)
            else:
                reserve_end = max(write_end, min(self.size + _PREALLOCATE_BYTES, segment_bytes))
                with nogil:
                    esc_preallocate(fd, <off_t>self.size, <off_t>(reserve_end - self.size))
            self.preallocated_end = reserve_end
        if pad:
            rc = self._write_padded(item, pad)
        elif prepared.payload_bytes >= _VECTORED_PAYLOAD_BYTES_MIN * <size_t>prepared.count:
            rc = self._write_vectored(prepared, start, end)
        else:
            rc = self._write_copied(prepared, start, end, total)
        if rc != 0:
            raise OSError(rc, strerror(rc).decode(), self.path)
        cdef uint64_t offset = self.size
        for i in range(start, end):
            if (self.count + <uint64_t>(i - start)) % _SPARSE_STRIDE == 0:
                self.sparse.append(offset)
            offset += esc_wal_record_bytes(prepared.items[i].length)
        self.count += <uint64_t>n
        self.size = write_end
        return n

    cdef int _write_padded(self, _item *item, size_t pad) except -1:
        """One record after `pad` bytes of padding (a hole): header and payload in one write."""
        cdef uint8_t header[ESC_WAL_HEADER_BYTES]
        cdef iovec iov[2]
        with nogil:
            esc_wal_seal_header(header, ESC_WAL_TYPE_ENTRY, <uint32_t>pad, item.payload,
                                <uint32_t>item.length, item.index, item.term)
            iov[0].iov_base = header
            iov[0].iov_len = ESC_WAL_HEADER_BYTES
            iov[1].iov_base = <void *>item.payload
            iov[1].iov_len = item.length
            return esc_pwritev_all(self.fd, iov, 2, <off_t>(self.size + pad))

    cdef int _write_vectored(self, PreparedRecords prepared, Py_ssize_t start,
                             Py_ssize_t end) except -1:
        """Headers framed into one buffer; payloads go to the kernel from the caller's buffers."""
        cdef Py_ssize_t n = end - start, i
        cdef uint8_t *headers = <uint8_t *>malloc(n * ESC_WAL_HEADER_BYTES)
        cdef iovec *iov = <iovec *>malloc(2 * n * sizeof(iovec))
        cdef _item *item
        cdef int rc = 0
        if headers == NULL or iov == NULL:
            free(headers)
            free(iov)
            raise MemoryError()
        # prepared holds the payload objects, so the pointers stay valid without the GIL.
        with nogil:
            for i in range(n):
                item = &prepared.items[start + i]
                esc_wal_seal_header(headers + i * ESC_WAL_HEADER_BYTES, ESC_WAL_TYPE_ENTRY, 0,
                                    item.payload, <uint32_t>item.length, item.index, item.term)
                iov[2 * i].iov_base = headers + i * ESC_WAL_HEADER_BYTES
                iov[2 * i].iov_len = ESC_WAL_HEADER_BYTES
                iov[2 * i + 1].iov_base = <void *>item.payload
                iov[2 * i + 1].iov_len = item.length
            rc = esc_pwritev_all(self.fd, iov, <int>(2 * n), <off_t>self.size)
        free(headers)
        free(iov)
        return rc

    cdef int _write_copied(self, PreparedRecords prepared, Py_ssize_t start, Py_ssize_t end,
                           size_t total) except -1:
        """Small payloads: copied behind their headers into one buffer, one write."""
        cdef uint8_t *out = <uint8_t *>malloc(total if total else 1)
        cdef iovec iov
        cdef int rc
        if out == NULL:
            raise MemoryError()
        with nogil:
            iov.iov_base = out
            iov.iov_len = prepared._frame_into(out, start, end)
            rc = esc_pwritev_all(self.fd, &iov, 1, <off_t>self.size)
        free(out)
        return rc


def prepare_records(records, uint64_t next_index, uint64_t prev_term):
    """Validates (index, term, payload) tuples that must start at `next_index`."""
    return _prepare_records(records, next_index, prev_term)


cdef PreparedRecords _prepare_records(records, uint64_t next_index, uint64_t prev_term):
    cdef list seq = records if type(records) is list else list(records)
    cdef PreparedRecords prepared = PreparedRecords.__new__(PreparedRecords)
    cdef Py_ssize_t i, count = len(seq)
    cdef list payload_objects = []
    cdef _item *item
    cdef object record, payload
    prepared.payload_objects = payload_objects
    prepared.first_index = next_index
    prepared.term_starts = []
    prepared.payload_bytes = 0
    prepared._allocate(count)
    for i in range(count):
        record = seq[i]
        if not PyTuple_Check(record) or PyTuple_GET_SIZE(record) != 3:
            raise _storage_error(f"record {i}: expected an (index, term, payload) tuple")
        item = &prepared.items[i]
        try:
            item.index = PyLong_AsUnsignedLongLong(<object>PyTuple_GET_ITEM(record, 0))
            item.term = PyLong_AsUnsignedLongLong(<object>PyTuple_GET_ITEM(record, 1))
        except (TypeError, OverflowError):
            raise _storage_error(
                f"record {i}: index and term must be ints in [0, 2**64)"
            ) from None
        payload = <object>PyTuple_GET_ITEM(record, 2)
        if not PyBytes_CheckExact(payload):
            try:
                payload = bytes(memoryview(payload))
            except TypeError:
                raise _storage_error(
                    f"record {i}: payload must be bytes-like, not {type(payload).__name__}"
                ) from None
        item.payload = <const uint8_t *>PyBytes_AS_STRING(payload)
        item.length = PyBytes_GET_SIZE(payload)
        payload_objects.append(payload)
        prepared._check_sequence(i, prev_term)
    prepared.owners = seq
    prepared.last_term = prepared.items[count - 1].term if count else prev_term
    return prepared


def prepare_packed(uint64_t first_index, uint64_t term, uint64_t prev_term, buffer, lengths):
    """Validates records given as one payload buffer plus a buffer of uint32 lengths, all in
    one term: the bulk path that builds no per-record Python object."""
    cdef const unsigned char[::1] data = as_byte_view(buffer)
    cdef const uint32_t[::1] sizes
    try:
        sizes = lengths
    except (ValueError, TypeError):
        sizes = memoryview(lengths).cast("B").cast("I")
    cdef PreparedRecords prepared = PreparedRecords.__new__(PreparedRecords)
    cdef Py_ssize_t i, count = sizes.shape[0]
    cdef size_t offset = 0
    cdef const uint8_t *base = &data[0] if data.shape[0] else <const uint8_t *>b""
    prepared.first_index = first_index
    prepared.term_starts = []
    prepared.payload_bytes = 0
    prepared._allocate(count)
    for i in range(count):
        if sizes[i] > <size_t>data.shape[0] - offset:
            raise _storage_error(
                f"record {i}: lengths add up to more than the {data.shape[0]}-byte buffer"
            )
        prepared.items[i].payload = base + offset
        prepared.items[i].length = sizes[i]
        prepared.items[i].index = first_index + <uint64_t>i
        prepared.items[i].term = term
        offset += sizes[i]
        prepared._check_sequence(i, prev_term)
    if offset != <size_t>data.shape[0]:
        raise _storage_error(
            f"lengths add up to {offset} bytes but the buffer holds {data.shape[0]}"
        )
    prepared.owners = [data]
    prepared.last_term = term if count else prev_term
    return prepared


def scan_records(data, uint64_t first_index, uint64_t prev_term):
    """Walks the records of one segment image from offset 0.

    Returns (count, valid_bytes, last_term, term_starts, sparse offsets as u64 bytes,
    status, reason): the walk stops at the end of the data (status 0) or at the first record
    that is torn, corrupt or out of sequence, whose offset is valid_bytes.
    """
    cdef const unsigned char[::1] view = as_byte_view(data)
    cdef size_t length = view.shape[0]
    cdef const uint8_t *base = &view[0] if length else <const uint8_t *>b""
    cdef size_t offset = 0, next_offset = 0
    cdef uint64_t count = 0
    cdef uint64_t term = prev_term
    cdef esc_wal_record_t rec
    cdef int status = ESC_WAL_OK
    cdef list term_starts = []
    sparse = bytearray()
    while offset < length:
        status = esc_wal_read_record(base, length, offset, &rec, &next_offset)
        if status == ESC_WAL_OK and rec.index != first_index + count:
            status = ESC_WAL_BAD_INDEX
        if status == ESC_WAL_OK and rec.term < term:
            status = ESC_WAL_BAD_TERM
        if status != ESC_WAL_OK:
            break
        if count % _SPARSE_STRIDE == 0:
            sparse += (<uint64_t>offset).to_bytes(8, "little")
        if rec.term != term:
            term_starts.append((rec.index, rec.term))
            term = rec.term
        count += 1
        offset = next_offset
    return (count, offset, term, term_starts, bytes(sparse), status,
            esc_wal_status_text(status).decode())


def read_records(data, uint64_t first_index, uint64_t lo, uint64_t hi, long long budget_bytes,
                 long long taken_bytes, bint taken_any, str path, unsigned long long file_offset):
    """Collects records lo <= index < hi from a segment image that starts at a record boundary
    holding `first_index` (file offset `file_offset`, for error messages).

    Payloads come back as zero-copy memoryview slices of `data`. Stops before a record that
    would take the payload total past `budget_bytes` (negative: no budget) unless nothing has
    been taken yet (`taken_any` says whether an earlier call took one). Returns (records,
    next_index, consumed_bytes, need_bytes, stop, taken_bytes): need_bytes
    is nonzero when the data ends inside a record (read at least that much from consumed_bytes
    and call again); stop is True when hi or the budget was reached.
    Raises CorruptionError naming path and offset for a record that fails its checks.
    """
    cdef const unsigned char[::1] view = as_byte_view(data)
    cdef size_t length = view.shape[0]
    cdef const uint8_t *base = &view[0] if length else <const uint8_t *>b""
    cdef size_t offset = 0, next_offset = 0
    cdef uint64_t index = first_index
    cdef esc_wal_record_t rec
    cdef int status
    cdef list out = []
    cdef size_t need = 0
    cdef bint stop = index >= hi
    memory = memoryview(view)
    while not stop and offset < length:
        status = esc_wal_read_record_at(base, length, offset, file_offset, &rec, &next_offset)
        if status == ESC_WAL_SHORT_HEADER or status == ESC_WAL_SHORT_PAYLOAD:
            need = esc_wal_bytes_needed(base, length, offset, file_offset)
            break
        if status == ESC_WAL_OK and rec.index != index:
            status = ESC_WAL_BAD_INDEX
        if status != ESC_WAL_OK:
            raise _corruption_error(
                f"{path}: record at offset {file_offset + offset} (index {index}): "
                f"{esc_wal_status_text(status).decode()}"
            )
        if index >= lo:
            if budget_bytes >= 0 and taken_bytes + <long long>rec.payload_len > budget_bytes \
                    and (out or taken_any):
                stop = True
                break
            start = rec.payload - base
            out.append((rec.index, rec.term, memory[start : start + rec.payload_len]))
            taken_bytes += rec.payload_len
        index += 1
        offset = next_offset
        stop = index >= hi
    return out, index, offset, need, stop, taken_bytes


cdef class LogTail:
    """The state of a SegmentLog that every append touches, and the append loop itself, in C:
    an append that fits the active segment then costs one call into native code and no Python
    bookkeeping. SegmentLog (eventstream/storage/segment_log.py) subclasses it and supplies the
    rest: _create_segment, _seal_active, _undo_partial_write, _add_run.

    Invariant: _last_index and _last_term describe the last record written; _written_seq counts
    appends (the group-commit tickets).
    """

    cdef public object _active  # SegmentFile or None
    cdef public long long _last_index
    cdef public long long _last_term
    cdef public long long _written_seq
    cdef public long long _records_appended
    cdef public long long _bytes_appended
    cdef public long long _segment_bytes
    cdef public bint _align_payloads
    cdef public object _lock  # threading.Lock over all of the above
    cdef public bint _closed
    cdef public object _failure  # the OSError that failed the log, or None

    @property
    def last_index(self):
        return self._last_index

    def append_nowait(self, records):
        """append() without waiting for durability, whatever wal_sync says: the records reach
        the OS now. Returns a ticket for wait_durable(). Lets a leader write its log while it
        replicates (Raft thesis 10.2.1) and callers order appends under their own lock while
        sharing the fdatasync outside it."""
        with self._lock:
            if self._closed or self._failure is not None:
                self._check_open()
            return self._write(_prepare_records(records, self._last_index + 1, self._last_term))

    def _write_prepared(self, PreparedRecords prepared):
        """Writes prepared records into the active segment, rolling to new ones as they fill;
        returns the append's ticket. The caller holds _lock."""
        return self._write(prepared)

    cdef long long _write(self, PreparedRecords prepared) except -1:
        """_write_prepared for callers in this module. Runs (term changes) are added as their
        records land, so the log's terms stay right should a later write fail."""
        cdef Py_ssize_t start = 0, consumed = 0, runs_added = 0
        cdef Py_ssize_t run_count = len(prepared.term_starts)
        cdef SegmentFile segment
        cdef uint64_t size_before
        while start < prepared.count:
            if self._active is None:
                self._create_segment(prepared.first_index + start)
            segment = self._active
            size_before = segment.size
            try:
                consumed = segment.write(prepared, start, self._segment_bytes,
                                         self._align_payloads)
            except OSError as error:
                self._undo_partial_write(segment, error)
                raise
            if consumed == 0:
                self._seal_active()
                continue
            start += consumed
            self._last_index += consumed
            self._records_appended += consumed
            self._bytes_appended += segment.size - size_before
            while runs_added < run_count and prepared.term_starts[runs_added][0] <= self._last_index:
                self._add_run(*prepared.term_starts[runs_added])
                runs_added += 1
        self._last_term = prepared.last_term
        self._written_seq += 1
        return self._written_seq
