# The SET_EVENT and DEDUP_ADD apply loops:
# part of the eventstream.state._state extension; csrc/_state.pyx includes it after the
# declarations and shared names it uses.

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


# The route of an event whose explicit queue does not exist (queue ids are below queue_count).
cdef uint32_t ROUTE_BAD_QUEUE = 0xFFFFFFFF


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

    # Two passes: the first routes and hashes every event and asks for each id's slot in the
    # dedup table ahead (a table of millions of ids misses the cache on nearly every probe, and
    # the misses of one batch then overlap); the second checks-and-adds in order, so the
    # outcome is exactly that of one pass.
    # Pass 1 keeps what pass 2 needs of each header (flags, timestamp), so no event is parsed twice.
    cdef uint32_t *routes = <uint32_t *>malloc((<size_t>count + 1) * sizeof(uint32_t))
    cdef uint64_t *hashes = <uint64_t *>malloc((<size_t>count + 1) * 2 * sizeof(uint64_t))
    cdef int64_t *stamps = <int64_t *>malloc((<size_t>count + 1) * sizeof(int64_t))
    cdef uint8_t *has_id = <uint8_t *>malloc(<size_t>count + 1)
    if routes == NULL or hashes == NULL or stamps == NULL or has_id == NULL:
        free(routes); free(hashes); free(stamps); free(has_id)
        raise MemoryError()
    with nogil:
        for i in range(count):
            esc_batch_read_event(buf, length, starts[i], &ev, &next_pos)
            if ev.flags & ESC_EVENT_HAS_QUEUE:
                routes[i] = ev.queue if ev.queue < queue_count else ROUTE_BAD_QUEUE
            else:
                routes[i] = esc_murmur3_32(ev.key if ev.key != NULL else <const uint8_t *>b"",
                                           ev.key_len, 0) % queue_count
            stamps[i] = ev.timestamp_us
            # 0: no id; 1: a client's id; 2: an id the leader generated (its own dedup class).
            has_id[i] = 0
            if ev.flags & ESC_EVENT_HAS_ID and routes[i] != ROUTE_BAD_QUEUE:
                has_id[i] = 2 if ev.flags & ESC_EVENT_ID_GENERATED else 1
                esc_murmur3_128(ev.event_id, ev.id_len, 0, &hashes[2 * i], &hashes[2 * i + 1])
                dedup.prefetch(has_id[i] == 2, hashes[2 * i])
        for i in range(count):
            q = routes[i]
            if q == ROUTE_BAD_QUEUE:
                statuses[i] = ST_BAD_QUEUE
                queues[i] = -1
                offsets[i] = -1
                continue
            if has_id[i]:
                h1 = hashes[2 * i]
                h2 = hashes[2 * i + 1]
                rc = dedup.insert(has_id[i] == 2, h1, h2, <int32_t>q,
                                  next_offsets[q], seen_us if seen_given else stamps[i],
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
            ts = seen_us if seen_given and stamps[i] > seen_us else stamps[i]
            if q_count[q] == 0 or ts > q_ts[q]:
                q_ts[q] = ts
            q_count[q] += 1
            q_bytes[q] += ESC_WAL_HEADER_BYTES + (starts[i + 1] - starts[i])
            stored += 1
            total_bytes += ESC_WAL_HEADER_BYTES + (starts[i + 1] - starts[i])
    free(routes)
    free(hashes)
    free(stamps)
    free(has_id)
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
