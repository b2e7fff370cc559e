# Queue segments: their record codec, sparse index and appends:
# part of the eventstream.state._state extension; csrc/_state.pyx includes it after the
# declarations and shared names it uses.

# Queue segment files are WAL segment images (csrc/wal_format.h): one record per stored event,
# record index = the event's queue offset, record term = the Raft index of the entry that stored
# it (non-decreasing, as the format demands of terms), payload = the event's batch_codec.h bytes
# copied unchanged. One framing and one parser serve the Raft log and the queues.

# A queue segment remembers the byte position of every QUEUE_INDEX_STRIDE-th record only; a
# read walks at most QUEUE_INDEX_STRIDE - 1 records from there. 4 bytes per 64 events.
cdef enum:
    INDEX_STRIDE = 64

QUEUE_INDEX_STRIDE = INDEX_STRIDE


cdef class PositionIndex:
    """Sparse index of one queue segment file: the byte position of records 0, STRIDE, 2*STRIDE..

    Invariant: positions strictly increase; a segment file is below 4 GiB (u32 positions), which
    queue_segment_bytes (at most 1 GiB, plus one batch) guarantees.
    """

    cdef uint32_t *data
    cdef size_t used
    cdef size_t capacity
    cdef uint64_t records  # records covered, so appends know which ones to keep

    def __dealloc__(self):
        free(self.data)

    def __len__(self):
        return self.used

    @property
    def record_count(self):
        return self.records

    cdef int reserve(self, size_t more) except -1:
        cdef size_t want = self.used + more
        if want <= self.capacity:
            return 0
        cdef size_t cap = self.capacity * 2 if self.capacity else 64
        while cap < want:
            cap *= 2
        cdef uint32_t *grown = <uint32_t *>realloc(self.data, cap * sizeof(uint32_t))
        if grown == NULL:
            raise MemoryError()
        self.data = grown
        self.capacity = cap
        return 0

    cdef int note(self, uint64_t position) except -1:
        if self.records % INDEX_STRIDE == 0:
            self.reserve(1)
            self.data[self.used] = <uint32_t>position
            self.used += 1
        self.records += 1
        return 0

    def extend(self, const uint8_t[::1] positions, uint64_t base):
        """Take native-endian u32 record positions (relative to `base`, the file size they were
        written at) of appended records, keeping every STRIDE-th."""
        if positions.shape[0] % 4:
            raise ValueError("positions must be whole u32 values")
        self.extend_raw(<const uint32_t *>data_ptr(positions), positions.shape[0] // 4, base)

    cdef int extend_raw(self, const uint32_t *src, size_t n, uint64_t base) except -1:
        self.reserve(n // INDEX_STRIDE + 1)
        cdef size_t i
        for i in range(n):
            self.note(src[i] + base)
        return 0

    def locate(self, uint64_t record):
        """(byte position, records to skip from it) to reach record number `record`."""
        if record >= self.records:
            raise IndexError(f"record {record} of a segment holding {self.records}")
        return self.data[record // INDEX_STRIDE], record % INDEX_STRIDE


cdef class QueueSegment:
    """One segment file of a queue: the offset of its first event, its path, its sparse index,
    its size and the newest event time in it; sealed once it reached queue_segment_bytes and
    never appended to again (eventstream/state/queues.py)."""

    cdef public uint64_t base_offset
    cdef public str path
    cdef public PositionIndex index
    cdef public uint64_t size_bytes
    cdef public int64_t max_timestamp_us
    cdef public bint sealed

    def __init__(self, uint64_t base_offset, str path, PositionIndex index, uint64_t size_bytes,
                 int64_t max_timestamp_us, bint sealed):
        self.base_offset = base_offset
        self.path = path
        self.index = index
        self.size_bytes = size_bytes
        self.max_timestamp_us = max_timestamp_us
        self.sealed = sealed

    @property
    def count(self):
        return self.index.records

    def __repr__(self):
        return (f"QueueSegment({self.base_offset}, {self.path!r}, {self.index.records} records, "
                f"{self.size_bytes} bytes, newest {self.max_timestamp_us}, sealed={self.sealed})")


cdef class QueueLogCore:
    """What applying an entry changes in one queue, typed, so the apply step costs no
    interpreter time per queue: an entry of single-event requests touches most queues, and
    that per-queue Python was a fifth of a follower's apply. eventstream/state/queues.py
    QueueLog derives from it and owns the files: it provides start_segment(), flush() and
    close(), which _append() (driven by append_touched) calls when a segment starts, the
    gathered bytes are due, or a segment is full.
    """

    cdef public list segments
    cdef public int64_t next_offset
    cdef public int64_t newest_timestamp_us
    cdef public int64_t bytes_total
    # Records applied but not yet written to the active segment file (QueueLog.flush).
    cdef public bytearray unwritten

    def __cinit__(self, *args, **kwargs):
        self.segments = []
        self.unwritten = bytearray()

    cdef int _append(self, const uint8_t *records, size_t length, const uint32_t *positions,
                     uint32_t count, int64_t max_ts, uint64_t roll_bytes,
                     size_t write_behind_bytes) except -1:
        """Store `length` bytes of records, `count` events at the u32 `positions` (relative to
        the first record), the newest at max_ts."""
        cdef Py_ssize_t last = len(self.segments) - 1
        if last < 0 or (<QueueSegment>self.segments[last]).sealed:
            self.start_segment(max_ts)
            last = len(self.segments) - 1
            if last < 0:
                raise RuntimeError("start_segment() added no segment")
        cdef QueueSegment segment = <QueueSegment>self.segments[last]
        cdef Py_ssize_t held = PyByteArray_GET_SIZE(self.unwritten)
        if length:
            PyByteArray_Resize(self.unwritten, held + <Py_ssize_t>length)
            memcpy(PyByteArray_AS_STRING(self.unwritten) + held, records, length)
        if held + <Py_ssize_t>length >= <Py_ssize_t>write_behind_bytes:
            self.flush()
        cdef uint64_t size = segment.size_bytes
        segment.index.extend_raw(positions, count, size)
        size += length
        segment.size_bytes = size
        if max_ts > segment.max_timestamp_us:
            segment.max_timestamp_us = max_ts
        self.bytes_total += <int64_t>length
        if max_ts > self.newest_timestamp_us or self.next_offset == 0:
            self.newest_timestamp_us = max_ts
        self.next_offset += count
        if size >= roll_bytes:
            segment.sealed = True
            self.close()
        return 0

    def start_segment(self, int64_t max_ts):
        raise NotImplementedError("QueueLog opens segment files")

    def flush(self):
        raise NotImplementedError("QueueLog writes segment files")

    def close(self):
        raise NotImplementedError("QueueLog closes segment files")


def append_touched(dict logs, list touched, const uint8_t[::1] records,
                   const uint8_t[::1] positions, const int64_t[::1] next_offsets,
                   uint64_t roll_bytes, size_t write_behind_bytes, object recent,
                   object open_log, object note_open, object retain):
    """Store what apply_set_event grouped per queue: for each (queue, byte_start, byte_end,
    position_start, count, max_ts) of `touched`, append its records to logs[queue] (a
    QueueLogCore; open_log(queue) creates a missing one), check that the log now ends where
    the apply loop's next_offsets says, call retain(queue, log) when the log holds more than
    one segment, and mark the queue most recently appended in the OrderedDict `recent`
    (note_open(queue, log) when it is not there). Returns the first queue whose log ends
    elsewhere than next_offsets says (the caller raises), or -1."""
    cdef Py_ssize_t t, n = len(touched)
    cdef tuple item
    cdef QueueLogCore log
    cdef int64_t queue
    cdef size_t byte_start, byte_end, position_start
    cdef uint32_t count
    cdef const uint8_t *records_at = data_ptr(records)
    cdef const uint8_t *positions_at = data_ptr(positions)
    move_to_end = recent.move_to_end
    for t in range(n):
        item = <tuple>touched[t]
        queue = item[0]
        byte_start = item[1]
        byte_end = item[2]
        position_start = item[3]
        count = item[4]
        if (queue < 0 or queue >= next_offsets.shape[0] or byte_end < byte_start
                or byte_end > <size_t>records.shape[0]
                or (position_start + count) * 4 > <size_t>positions.shape[0]):
            raise ValueError(f"touched {item} is outside the apply result")
        found = logs.get(queue)
        if found is None:
            found = open_log(queue)
        log = <QueueLogCore?>found
        log._append(records_at + byte_start, byte_end - byte_start,
                    <const uint32_t *>(positions_at + position_start * 4), count, item[5],
                    roll_bytes, write_behind_bytes)
        if log.next_offset != next_offsets[queue]:
            return queue
        if len(log.segments) > 1:  # retention drops whole sealed segments, never the last
            retain(queue, log)
        if queue in recent:
            move_to_end(queue)
        else:
            note_open(queue, log)
    return -1


cdef int check_event_record(const uint8_t *buf, size_t length, size_t pos, uint64_t offset,
                            uint64_t min_log_index, esc_wal_record_t *rec, esc_event_t *ev,
                            size_t *next_pos) noexcept nogil:
    """0, or an error code: WAL status, or -1 wrong offset, -2 log index going back, -3 payload
    not exactly one codec event."""
    cdef int status = esc_wal_read_record(buf, length, pos, rec, next_pos)
    if status != ESC_WAL_OK:
        return status
    if rec.index != offset:
        return -1
    if rec.term < min_log_index:
        return -2
    cdef size_t event_end = 0
    if (esc_batch_read_event(rec.payload, rec.payload_len, 0, ev, &event_end) != ESC_BATCH_OK
            or event_end != rec.payload_len):
        return -3
    return 0


cdef str record_error(int code, uint64_t offset, size_t pos):
    if code == -1:
        reason = "record holds a different offset than expected"
    elif code == -2:
        reason = "record's log index is lower than the previous record's"
    elif code == -3:
        reason = "payload is not exactly one event"
    else:
        reason = esc_wal_status_text(code).decode()
    return f"record {offset} at byte {pos}: {reason}"


def scan_queue_segment(const uint8_t[::1] data, uint64_t base_offset, PositionIndex index):
    """Check every record of a segment file image and index it.

    Returns (count, max_timestamp_us); raises QueueDataError naming the byte position of the
    first record that fails a check, because a snapshot or restored segment must be whole.
    """
    cdef size_t length = data.shape[0]
    cdef const uint8_t *buf = data_ptr(data)
    cdef size_t pos = 0, next_pos = 0
    cdef uint64_t n = 0, log_index = 0
    cdef int64_t max_ts = 0
    cdef int code = 0
    cdef esc_wal_record_t rec
    cdef esc_event_t ev
    memset(&rec, 0, sizeof(rec))
    memset(&ev, 0, sizeof(ev))
    while pos < length:
        with nogil:
            code = check_event_record(buf, length, pos, base_offset + n, log_index, &rec, &ev,
                                      &next_pos)
        if code != 0:
            raise QueueDataError(record_error(code, base_offset + n, pos))
        index.note(pos)
        log_index = rec.term
        if n == 0 or ev.timestamp_us > max_ts:
            max_ts = ev.timestamp_us
        n += 1
        pos = next_pos
    return n, max_ts


def decode_queue_records(const uint8_t[::1] data, size_t start, uint64_t first_offset,
                         uint32_t skip, uint32_t limit, uint64_t max_bytes, bint take_first,
                         object factory):
    """Read events from a segment image: walk `skip` records from byte `start` (where record
    `first_offset` sits), then decode up to `limit` events while their records total at most
    `max_bytes` (the first regardless, when take_first). Every record walked is checked.

    Returns (events, record_bytes): events are factory(offset, event_id, key, queue,
    timestamp_us, payload, id_generated).
    """
    cdef size_t length = data.shape[0]
    cdef const uint8_t *buf = data_ptr(data)
    cdef size_t pos = start, next_pos = 0, taken_bytes = 0
    cdef uint64_t offset = first_offset
    cdef int code
    cdef uint32_t walked = 0
    cdef esc_wal_record_t rec
    cdef esc_event_t ev
    memset(&rec, 0, sizeof(rec))
    memset(&ev, 0, sizeof(ev))
    out = []
    while pos < length and len(out) < limit:
        code = check_event_record(buf, length, pos, offset, 0, &rec, &ev, &next_pos)
        if code != 0:
            raise QueueDataError(record_error(code, offset, pos))
        if walked < skip:
            walked += 1
        else:
            if (out or not take_first) and taken_bytes + (next_pos - pos) > max_bytes:
                break
            taken_bytes += next_pos - pos
            out.append(factory(
                offset,
                ev.event_id[:ev.id_len] if ev.event_id != NULL else None,
                ev.key[:ev.key_len] if ev.key != NULL else None,
                ev.queue if ev.flags & ESC_EVENT_HAS_QUEUE else None,
                ev.timestamp_us,
                ev.payload[:ev.payload_len],
                bool(ev.flags & ESC_EVENT_ID_GENERATED),
            ))
        offset += 1
        pos = next_pos
    return out, taken_bytes
