# distutils: sources = csrc/dedup_table.c csrc/murmur3.c csrc/crc32c.c
"""Native core of the EventStreamCore state machine (eventstream.state).

Holds the compact dedup table (dedup_table.c), the MurmurHash3 functions used for queue routing
and id digests, the SET_EVENT / DEDUP_ADD apply loops and the queue record codec
(check_event_record and its neighbours, below). The Python side (eventstream/state/) calls these once per batch or per read;
no per-event Python object is built on the apply path.
"""

cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

from batch_codec_h cimport *
from byte_order_h cimport esc_load_u16, esc_load_u32, esc_load_u64


cdef extern from "murmur3.h":
    uint32_t esc_murmur3_32(const uint8_t *data, size_t len, uint32_t seed) nogil
    void esc_murmur3_128(const uint8_t *data, size_t len, uint32_t seed,
                         uint64_t *h1, uint64_t *h2) nogil


cdef extern from "dedup_table.h":
    ctypedef struct esc_dedup_entry:
        uint64_t h1
        uint64_t h2
        int64_t offset
        int64_t first_seen_us
        int32_t queue

    ctypedef struct esc_dedup_table:
        uint64_t head
        uint64_t tail
        uint64_t ids_max

    int ESC_DEDUP_CHUNK_SHIFT
    uint64_t ESC_DEDUP_CHUNK_ENTRIES
    uint64_t ESC_DEDUP_IDS_MAX
    int ESC_DEDUP_ENTRY_BYTES
    int ESC_DEDUP_INSERTED
    int ESC_DEDUP_PRESENT
    int ESC_DEDUP_NO_MEMORY
    int ESC_DEDUP_FULL

    void esc_dedup_init(esc_dedup_table *t, uint64_t ids_max) nogil
    void esc_dedup_free(esc_dedup_table *t) nogil
    uint64_t esc_dedup_count(const esc_dedup_table *t) nogil
    const esc_dedup_entry *esc_dedup_find(const esc_dedup_table *t, uint64_t h1, uint64_t h2) nogil
    int esc_dedup_insert(esc_dedup_table *t, uint64_t h1, uint64_t h2, int32_t queue,
                         int64_t offset, int64_t first_seen_us,
                         const esc_dedup_entry **existing) nogil
    uint64_t esc_dedup_expire(esc_dedup_table *t, int64_t cutoff_us) nogil
    uint64_t esc_dedup_bytes(const esc_dedup_table *t) nogil

    ctypedef struct esc_dedup_view:
        uint64_t head
        uint64_t tail

    int esc_dedup_view_take(const esc_dedup_table *t, esc_dedup_view *v) nogil
    void esc_dedup_view_release(esc_dedup_view *v) nogil
    const esc_dedup_entry *esc_dedup_view_at(const esc_dedup_view *v, uint64_t i) nogil


DEDUP_ENTRY_BYTES = ESC_DEDUP_ENTRY_BYTES
DEDUP_IDS_MAX = ESC_DEDUP_IDS_MAX


class DedupFullError(Exception):
    """The dedup table holds its configured maximum of ids; expire some before adding more."""


cdef class DedupView:
    """Frozen entries of a DedupTable (see DedupTable.freeze); safe to read from another thread
    while the table keeps applying."""

    cdef esc_dedup_view view

    def __dealloc__(self):
        esc_dedup_view_release(&self.view)

    def __len__(self):
        return self.view.tail - self.view.head

    def export_range(self, uint64_t first, uint64_t count):
        """Entries first .. first+count-1 (arrival order) in the export_entries layout."""
        cdef uint64_t total = self.view.tail - self.view.head
        if first > total or count > total - first:
            raise IndexError(f"entries [{first}, {first + count}) of a view holding {total}")
        out = PyBytes_FromStringAndSize(NULL, count * ESC_DEDUP_ENTRY_BYTES)
        cdef char *dst = PyBytes_AS_STRING(out)
        cdef uint64_t i = 0, run, seq
        with nogil:
            while i < count:
                seq = self.view.head + first + i
                # Entries are contiguous inside a chunk: copy a chunk's run at once.
                run = ESC_DEDUP_CHUNK_ENTRIES - (seq & (ESC_DEDUP_CHUNK_ENTRIES - 1))
                if run > count - i:
                    run = count - i
                memcpy(dst + i * ESC_DEDUP_ENTRY_BYTES, esc_dedup_view_at(&self.view, first + i),
                       run * ESC_DEDUP_ENTRY_BYTES)
                i += run
        return out

    def pieces(self, uint64_t entries_per_piece=65536):
        """The export_entries image in pieces of at most entries_per_piece entries."""
        cdef uint64_t total = self.view.tail - self.view.head
        cdef uint64_t first = 0
        while first < total:
            count = min(entries_per_piece, total - first)
            yield self.export_range(first, count)
            first += count


def routing_hash(const uint8_t[::1] key):
    """MurmurHash3 x86_32 of `key`, seed 0, unsigned: equals mmh3.hash(key, signed=False)."""
    return esc_murmur3_32(&key[0] if key.shape[0] else <const uint8_t *>b"", key.shape[0], 0)


def id_digest(const uint8_t[::1] event_id):
    """(h1, h2) of MurmurHash3 x64_128, seed 0: mmh3.hash128(id) == h2 << 64 | h1."""
    cdef uint64_t h1, h2
    esc_murmur3_128(&event_id[0] if event_id.shape[0] else <const uint8_t *>b"",
                    event_id.shape[0], 0, &h1, &h2)
    return h1, h2


@cython.final  # so apply's per-event insert() is a direct, inlinable call, not a vtable one
cdef class DedupTable:
    """Remembered event ids: 128-bit digests with their original (queue, offset), in arrival order.

    Two classes of ids, each in its own arrival order so each expires by its own cut-off:
    ids the caller chose (kept for dedup_window_ms) and ids the client library generated
    (batch_codec.h's ESC_EVENT_ID_GENERATED; kept for the shorter dedup_generated_window_ms,
    since nobody but that library's retry loop can ever send them again). An id's class is part
    of its identity: each class is checked only against itself.

    Invariant: at most `ids_max` ids in both classes together; a full table refuses adds
    (DedupFullError) rather than forgetting an id early, because forgetting early would let a
    retry apply twice.
    """

    cdef esc_dedup_table table
    cdef esc_dedup_table generated
    cdef uint64_t cap

    def __cinit__(self, uint64_t ids_max=0):
        esc_dedup_init(&self.table, ESC_DEDUP_IDS_MAX)
        esc_dedup_init(&self.generated, ESC_DEDUP_IDS_MAX)
        self.cap = ids_max if 0 < ids_max <= ESC_DEDUP_IDS_MAX else ESC_DEDUP_IDS_MAX

    def __dealloc__(self):
        esc_dedup_free(&self.table)
        esc_dedup_free(&self.generated)

    def __len__(self):
        return esc_dedup_count(&self.table) + esc_dedup_count(&self.generated)

    @property
    def generated_count(self):
        """How many of the remembered ids the client library generated."""
        return esc_dedup_count(&self.generated)

    @property
    def ids_max(self):
        return self.cap

    def set_ids_max(self, uint64_t ids_max):
        """Change the cap; below the current count, adds are refused until enough expire."""
        self.cap = ids_max if 0 < ids_max <= ESC_DEDUP_IDS_MAX else ESC_DEDUP_IDS_MAX

    @property
    def memory_bytes(self):
        """Bytes held by the tables' slots and entry chunks."""
        return esc_dedup_bytes(&self.table) + esc_dedup_bytes(&self.generated)

    cdef inline int insert(self, bint generated, uint64_t h1, uint64_t h2, int32_t queue, int64_t offset,
                    int64_t first_seen_us, const esc_dedup_entry **existing) noexcept nogil:
        """esc_dedup_insert into the id's class, under the cap the two classes share."""
        cdef esc_dedup_table *t = &self.generated if generated else &self.table
        cdef const esc_dedup_table *other = &self.table if generated else &self.generated
        cdef uint64_t others = other.tail - other.head
        t.ids_max = self.cap - others if self.cap > others else 0
        return esc_dedup_insert(t, h1, h2, queue, offset, first_seen_us, existing)

    def add(self, const uint8_t[::1] event_id, int32_t queue, int64_t offset,
            int64_t first_seen_us, bint generated=False):
        """Check-and-add: None when the id is new (now remembered), else the original
        (queue, offset)."""
        cdef uint64_t h1, h2
        cdef const esc_dedup_entry *existing = NULL
        esc_murmur3_128(&event_id[0] if event_id.shape[0] else <const uint8_t *>b"",
                        event_id.shape[0], 0, &h1, &h2)
        rc = self.insert(generated, h1, h2, queue, offset, first_seen_us, &existing)
        return self._add_result(rc, existing)

    cdef object _add_result(self, int rc, const esc_dedup_entry *existing):
        if rc == ESC_DEDUP_INSERTED:
            return None
        if rc == ESC_DEDUP_PRESENT:
            return (existing.queue, existing.offset)
        if rc == ESC_DEDUP_FULL:
            raise DedupFullError(f"dedup table holds its maximum of {self.cap} ids")
        raise MemoryError("dedup table could not grow")

    def lookup(self, const uint8_t[::1] event_id, bint generated=False):
        """The original (queue, offset) of a remembered id, or None."""
        cdef uint64_t h1, h2
        esc_murmur3_128(&event_id[0] if event_id.shape[0] else <const uint8_t *>b"",
                        event_id.shape[0], 0, &h1, &h2)
        cdef const esc_dedup_entry *e = esc_dedup_find(&self.generated if generated else &self.table,
                                                       h1, h2)
        if e == NULL:
            return None
        return (e.queue, e.offset)

    def expire(self, int64_t cutoff_us, generated_cutoff_us=None):
        """Forget ids, oldest arrival first, while first seen before the cut-off of their class
        (generated ids: generated_cutoff_us, or cutoff_us when it is None); returns the count.

        An older id that arrived after a newer one waits for it: ids are kept a little longer,
        never forgotten early, and the result depends only on the applied commands.
        """
        cdef int64_t generated_cutoff = cutoff_us if generated_cutoff_us is None else generated_cutoff_us
        cdef uint64_t n
        with nogil:
            n = esc_dedup_expire(&self.table, cutoff_us)
            n += esc_dedup_expire(&self.generated, generated_cutoff)
        return n

    def freeze(self):
        """(caller ids, generated ids) as DedupViews of the entries as they are now: costs one
        pointer per 65,536 ids, and the table goes on changing while the views stay as they
        were (chunks are shared)."""
        return _freeze(&self.table), _freeze(&self.generated)

    def export_entries(self, bint generated=False):
        """One class's entries in arrival order as packed 36-byte little-endian records:
        h1 u64, h2 u64, offset i64, first_seen_us i64, queue i32."""
        view = _freeze(&self.generated if generated else &self.table)
        return view.export_range(0, len(view))

    def import_entries(self, const uint8_t[::1] packed, bint generated=False):
        """Append entries exported by export_entries to one class (arrival order kept). Refuses
        a partial record or a digest already present, which only a damaged image can contain."""
        cdef Py_ssize_t n = packed.shape[0]
        if n % ESC_DEDUP_ENTRY_BYTES:
            raise ValueError(f"dedup image of {n} bytes is not a whole number of "
                             f"{ESC_DEDUP_ENTRY_BYTES}-byte entries")
        cdef Py_ssize_t i
        cdef int rc = ESC_DEDUP_INSERTED
        cdef esc_dedup_entry e
        cdef const esc_dedup_entry *existing = NULL
        with nogil:
            i = 0
            while i < n:
                memcpy(&e, &packed[i], ESC_DEDUP_ENTRY_BYTES)
                rc = self.insert(generated, e.h1, e.h2, e.queue, e.offset, e.first_seen_us, &existing)
                if rc != ESC_DEDUP_INSERTED:
                    break
                i += ESC_DEDUP_ENTRY_BYTES
        if rc == ESC_DEDUP_PRESENT:
            raise ValueError(f"dedup image repeats a digest at byte {i}")
        self._add_result(rc, existing)


cdef DedupView _freeze(const esc_dedup_table *t):
    cdef DedupView view = DedupView.__new__(DedupView)
    if esc_dedup_view_take(t, &view.view) != 0:
        raise MemoryError()
    return view


from wal_format_h cimport *

# Queue segment files are WAL segment images (csrc/wal_format.h): one record per stored event,
# record index = the event's queue offset, record term = the Raft index of the entry that stored
# it (non-decreasing, as the format demands of terms), payload = the event's batch_codec.h bytes
# copied unchanged. One framing and one parser serve the Raft log and the queues.

# A queue segment remembers the byte position of every QUEUE_INDEX_STRIDE-th record only; a
# read walks at most QUEUE_INDEX_STRIDE - 1 records from there. 4 bytes per 64 events.
cdef enum:
    INDEX_STRIDE = 64

QUEUE_INDEX_STRIDE = INDEX_STRIDE

# Per-event outcome of SET_EVENT (and per-id outcome of DEDUP_ADD).
cdef enum:
    ST_STORED = 0
    ST_DUPLICATE = 1       # id already remembered: (queue, offset) are the original ones
    ST_BAD_QUEUE = 2       # explicit queue not below queue_count at apply time: not stored
    ST_DEDUP_FULL = 3      # dedup table at dedup_ids_max: not stored, the client may retry

STATUS_STORED = ST_STORED
STATUS_DUPLICATE = ST_DUPLICATE
STATUS_BAD_QUEUE = ST_BAD_QUEUE
STATUS_DEDUP_FULL = ST_DEDUP_FULL
QUEUE_RECORD_HEADER_BYTES = ESC_WAL_HEADER_BYTES


class MalformedCommandError(ValueError):
    """A command body that does not parse; in a committed entry this means corruption."""


class QueueDataError(ValueError):
    """Queue segment bytes that fail their checks; the message names the byte position."""


cdef inline const uint8_t *data_ptr(const uint8_t[::1] view) noexcept nogil:
    return &view[0] if view.shape[0] else <const uint8_t *>b""


def apply_set_event(const uint8_t[::1] batch, uint32_t queue_count, DedupTable dedup,
                    int64_t[::1] next_offsets, uint64_t log_index, first_seen_us=None):
    """Apply one SET_EVENT batch (batch_codec.h layout) to the dedup table and offsets.

    Ids are remembered as first seen at first_seen_us (SET_EVENT_AT: the leader's clock at
    proposal), or at each event's own timestamp when it is None (SET_EVENT).

    Routes each event (explicit queue, else mmh3(key) mod queue_count), checks-and-adds its id,
    assigns offsets from next_offsets (updated in place), and builds the queue records grouped by
    queue so the caller writes each touched queue once. The batch is validated whole before
    anything changes. Returns (statuses u8[n], queues i32[n], offsets i64[n], records,
    positions u32[stored], touched) where touched lists (queue, byte_start, byte_end,
    position_start, count, max_timestamp_us) in queue order and positions are relative to the
    queue's byte_start.
    """
    cdef size_t length = batch.shape[0]
    cdef const uint8_t *buf = data_ptr(batch)
    cdef uint32_t count = 0
    cdef size_t error_offset = 0
    if queue_count == 0 or <size_t>next_offsets.shape[0] < queue_count:
        raise ValueError(f"next_offsets holds {next_offsets.shape[0]} queues, "
                         f"queue_count is {queue_count}")
    cdef int status = esc_batch_read_header(buf, length, &count)
    if status != ESC_BATCH_OK:
        raise MalformedCommandError(
            f"SET_EVENT batch: {esc_batch_status_text(status).decode()} at byte 0")
    cdef uint32_t *starts = <uint32_t *>malloc((<size_t>count + 1) * sizeof(uint32_t))
    cdef uint32_t *q_count = <uint32_t *>calloc(queue_count, sizeof(uint32_t))
    cdef uint64_t *q_bytes = <uint64_t *>calloc(queue_count, sizeof(uint64_t))
    cdef int64_t *q_ts = <int64_t *>malloc(queue_count * sizeof(int64_t))
    if starts == NULL or q_count == NULL or q_bytes == NULL or q_ts == NULL:
        free(starts); free(q_count); free(q_bytes); free(q_ts)
        raise MemoryError()
    try:
        status = esc_batch_validate(buf, length, &count, starts, &error_offset)
        if status != ESC_BATCH_OK:
            raise MalformedCommandError(
                f"SET_EVENT batch: {esc_batch_status_text(status).decode()} "
                f"at byte {error_offset}")
        starts[count] = <uint32_t>length
        return _apply_validated(buf, length, count, starts, queue_count, dedup,
                                next_offsets, q_count, q_bytes, q_ts, log_index,
                                first_seen_us is not None,
                                <int64_t>first_seen_us if first_seen_us is not None else 0)
    finally:
        free(starts); free(q_count); free(q_bytes); free(q_ts)


cdef object _apply_validated(const uint8_t *buf, size_t length, uint32_t count,
                             const uint32_t *starts, uint32_t queue_count, DedupTable dedup,
                             int64_t[::1] next_offsets, uint32_t *q_count, uint64_t *q_bytes,
                             int64_t *q_ts, uint64_t log_index, bint seen_given, int64_t seen_us):
    statuses_obj = PyBytes_FromStringAndSize(NULL, count)
    queues_obj = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>count * 4)
    offsets_obj = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>count * 8)
    cdef uint8_t *statuses = <uint8_t *>PyBytes_AS_STRING(statuses_obj)
    cdef int32_t *queues = <int32_t *>PyBytes_AS_STRING(queues_obj)
    cdef int64_t *offsets = <int64_t *>PyBytes_AS_STRING(offsets_obj)
    cdef esc_event_t ev
    memset(&ev, 0, sizeof(ev))
    cdef size_t next_pos
    cdef uint32_t i, q
    cdef uint64_t h1, h2
    cdef int64_t ts
    cdef int rc
    cdef bint out_of_memory = False
    cdef const esc_dedup_entry *existing = NULL
    cdef uint64_t stored = 0, total_bytes = 0

    with nogil:
        for i in range(count):
            esc_batch_read_event(buf, length, starts[i], &ev, &next_pos)
            if ev.flags & ESC_EVENT_HAS_QUEUE:
                if ev.queue >= queue_count:
                    statuses[i] = ST_BAD_QUEUE
                    queues[i] = -1
                    offsets[i] = -1
                    continue
                q = ev.queue
            else:
                q = esc_murmur3_32(ev.key if ev.key != NULL else <const uint8_t *>b"",
                                   ev.key_len, 0) % queue_count
            if ev.flags & ESC_EVENT_HAS_ID:
                esc_murmur3_128(ev.event_id, ev.id_len, 0, &h1, &h2)
                rc = dedup.insert(ev.flags & ESC_EVENT_ID_GENERATED, h1, h2, <int32_t>q,
                                  next_offsets[q], seen_us if seen_given else ev.timestamp_us,
                                  &existing)
                if rc == ESC_DEDUP_PRESENT:
                    statuses[i] = ST_DUPLICATE
                    queues[i] = existing.queue
                    offsets[i] = existing.offset
                    continue
                if rc == ESC_DEDUP_FULL:
                    statuses[i] = ST_DEDUP_FULL
                    queues[i] = -1
                    offsets[i] = -1
                    continue
                if rc != ESC_DEDUP_INSERTED:
                    out_of_memory = True
                    break
            statuses[i] = ST_STORED
            queues[i] = <int32_t>q
            offsets[i] = next_offsets[q]
            next_offsets[q] += 1
            # Age retention judges segments by their newest event; an event stamped past the
            # leader's clock (a client clock ahead, a unit slip) counts as stamped then, or it
            # would age out every segment before it.
            ts = seen_us if seen_given and ev.timestamp_us > seen_us else ev.timestamp_us
            if q_count[q] == 0 or ts > q_ts[q]:
                q_ts[q] = ts
            q_count[q] += 1
            q_bytes[q] += ESC_WAL_HEADER_BYTES + (starts[i + 1] - starts[i])
            stored += 1
            total_bytes += ESC_WAL_HEADER_BYTES + (starts[i + 1] - starts[i])
    if out_of_memory:
        # Ids before this one are already added: the state is no longer trustworthy.
        raise MemoryError("dedup table could not grow while applying SET_EVENT")

    records_obj = PyBytes_FromStringAndSize(NULL, total_bytes)
    positions_obj = PyBytes_FromStringAndSize(NULL, stored * 4)
    cdef uint8_t *records = <uint8_t *>PyBytes_AS_STRING(records_obj)
    cdef uint32_t *positions = <uint32_t *>PyBytes_AS_STRING(positions_obj)
    # Reuse q_bytes as each queue's write cursor and q_count as its position cursor, after
    # remembering where each queue's slice starts.
    touched = []
    cdef uint64_t byte_start = 0, byte_len
    cdef uint32_t pos_start = 0, pos_len, event_bytes
    cdef uint64_t *slice_start = <uint64_t *>malloc(queue_count * sizeof(uint64_t))
    if slice_start == NULL:
        raise MemoryError()
    try:
        for q in range(queue_count):
            if q_count[q] == 0:
                continue
            byte_len = q_bytes[q]
            pos_len = q_count[q]
            touched.append((q, byte_start, byte_start + byte_len, pos_start, pos_len, q_ts[q]))
            slice_start[q] = byte_start
            q_bytes[q] = byte_start
            q_count[q] = pos_start
            byte_start += byte_len
            pos_start += pos_len
        with nogil:
            for i in range(count):
                if statuses[i] != ST_STORED:
                    continue
                q = <uint32_t>queues[i]
                positions[q_count[q]] = <uint32_t>(q_bytes[q] - slice_start[q])
                q_count[q] += 1
                event_bytes = starts[i + 1] - starts[i]
                memcpy(records + q_bytes[q] + ESC_WAL_HEADER_BYTES, buf + starts[i], event_bytes)
                q_bytes[q] += esc_wal_seal_record(records + q_bytes[q], ESC_WAL_TYPE_ENTRY,
                                                  event_bytes, <uint64_t>offsets[i], log_index)
    finally:
        free(slice_start)
    return statuses_obj, queues_obj, offsets_obj, records_obj, positions_obj, touched


def apply_dedup_add(const uint8_t[::1] body, DedupTable dedup):
    """Apply a DEDUP_ADD body: u32 count, then per id: u16 id_len, i64 first_seen_us, id bytes.

    Remembered ids get (queue, offset) = (-1, -1): no event was stored for them. The body is
    validated whole before any id is added. Returns one status byte per id.
    """
    cdef size_t length = body.shape[0]
    cdef const uint8_t *buf = data_ptr(body)
    if length < 4:
        raise MalformedCommandError("DEDUP_ADD body shorter than its 4-byte count")
    cdef uint32_t count
    count = esc_load_u32(buf)
    cdef size_t pos = 4
    cdef uint32_t i
    cdef uint16_t id_len
    for i in range(count):
        if length - pos < 10:
            raise MalformedCommandError(f"DEDUP_ADD id {i} header runs past the body at byte {pos}")
        id_len = esc_load_u16(buf + pos)
        if id_len == 0 or id_len > ESC_EVENT_ID_BYTES_MAX:
            raise MalformedCommandError(f"DEDUP_ADD id {i} has length {id_len}, allowed "
                                        f"1..{ESC_EVENT_ID_BYTES_MAX}")
        if length - pos - 10 < id_len:
            raise MalformedCommandError(f"DEDUP_ADD id {i} runs past the body at byte {pos}")
        pos += 10 + id_len
    if pos != length:
        raise MalformedCommandError(f"DEDUP_ADD body has {length - pos} bytes after its last id")
    statuses_obj = PyBytes_FromStringAndSize(NULL, count)
    cdef uint8_t *statuses = <uint8_t *>PyBytes_AS_STRING(statuses_obj)
    cdef int64_t first_seen_us
    cdef uint64_t h1, h2
    cdef int rc = ESC_DEDUP_INSERTED
    cdef const esc_dedup_entry *existing = NULL
    pos = 4
    with nogil:
        for i in range(count):
            id_len = esc_load_u16(buf + pos)
            first_seen_us = <int64_t>esc_load_u64(buf + pos + 2)
            esc_murmur3_128(buf + pos + 10, id_len, 0, &h1, &h2)
            pos += 10 + id_len
            rc = dedup.insert(False, h1, h2, -1, -1, first_seen_us, &existing)
            if rc == ESC_DEDUP_INSERTED:
                statuses[i] = ST_STORED
            elif rc == ESC_DEDUP_PRESENT:
                statuses[i] = ST_DUPLICATE
            elif rc == ESC_DEDUP_FULL:
                statuses[i] = ST_DEDUP_FULL
            else:
                break
    if rc == ESC_DEDUP_NO_MEMORY:
        raise MemoryError("dedup table could not grow while applying DEDUP_ADD")
    return statuses_obj


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
