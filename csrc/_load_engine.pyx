# distutils: sources = csrc/load_engine.c csrc/crc32c.c csrc/tls_link.c
"""esc-bench's native load engine (csrc/load_engine.h): Python's handle on it.

The boundary is coarse on purpose: Python sets the target and the schedule, calls run() once
per report interval (the loop runs without the GIL until then), and reads the counters and the
latency tallies afterwards. Nothing crosses per request. encode_append_request() and
read_answer() expose the engine's own encoder and answer parser to the differential tests.
"""

import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from byte_views cimport as_byte_view
from frame_format_h cimport *
from load_engine_h cimport *

# Error kinds by outcome code (csrc/load_engine.h, enum esc_load_outcome); index 0 is OK.
OUTCOME_NAMES = (
    "ok",
    "NotLeader",
    "Unavailable",
    "Overloaded",
    "Timeout",
    "Refused",
    "BadFrame",
    "BadAnswer",
    "ConnectionClosed",
    "ConnectFailed",
    "NoAnswer",
)
assert len(OUTCOME_NAMES) == ESC_LOAD_OUTCOME_COUNT

RUN_UNTIL = ESC_LOAD_RUN_UNTIL
RUN_DONE = ESC_LOAD_RUN_DONE
RUN_LOOKUP = ESC_LOAD_RUN_LOOKUP
EVENT_ID_BYTES = ESC_LOAD_EVENT_ID_BYTES
SLOTS_MAX = ESC_LOAD_SLOTS_MAX


def encode_append_request(uint64_t request_id, uint32_t batch_size, ids, uint64_t key_first,
                          uint64_t keys, payload, int64_t timestamp_us):
    """One whole APPEND request frame, as the engine sends it. ids: 16 bytes per event, or None."""
    cdef const unsigned char[::1] payload_view = as_byte_view(payload)
    cdef const unsigned char[::1] ids_view
    cdef const uint8_t *ids_ptr = NULL
    cdef const uint8_t *payload_ptr = NULL
    if batch_size == 0 or keys == 0:
        raise ValueError("batch_size and keys must be >= 1")
    if ids is not None:
        ids_view = as_byte_view(ids)
        if ids_view.shape[0] != batch_size * ESC_LOAD_EVENT_ID_BYTES:
            raise ValueError(f"ids must be {ESC_LOAD_EVENT_ID_BYTES} bytes per event")
        ids_ptr = &ids_view[0]
    if payload_view.shape[0]:
        payload_ptr = &payload_view[0]
    cdef size_t capacity = esc_load_request_bytes_max(batch_size, <uint32_t>payload_view.shape[0], keys)
    out = PyBytes_FromStringAndSize(NULL, capacity)
    cdef size_t length = esc_load_encode_request(<uint8_t *>PyBytes_AS_STRING(out), request_id,
                                                 batch_size, ids_ptr, key_first, keys, payload_ptr,
                                                 <uint32_t>payload_view.shape[0], timestamp_us)
    return out[:length]


def read_answer(frame, uint64_t request_id, uint32_t batch_size, size_t body_bytes_max=1 << 20):
    """Check one whole answer frame as the engine does: (outcome name, duplicates, message).

    The frame must be exactly one frame; a shorter buffer reads as "incomplete", longer as
    "BadAnswer", like a second frame on a connection with one request in flight."""
    cdef const unsigned char[::1] view = as_byte_view(frame)
    cdef size_t length = view.shape[0]
    cdef esc_frame f
    cdef esc_load_answer_t answer
    cdef const uint8_t *base = &view[0] if length else NULL
    cdef int status = esc_frame_next(base, length, body_bytes_max, &f)
    if status == ESC_FRAME_NEED_MORE:
        return "incomplete", 0, ""
    if status != ESC_FRAME_WHOLE:
        return OUTCOME_NAMES[ESC_LOAD_BAD_FRAME], 0, ""
    if length != ESC_FRAME_HEAD_BYTES + f.body_len:
        return OUTCOME_NAMES[ESC_LOAD_BAD_ANSWER], 0, ""
    esc_load_parse_answer(base + ESC_FRAME_HEAD_BYTES, f.body_len, request_id, batch_size, &answer)
    message = ""
    if answer.message_len:
        message = (<const char *>answer.message)[:answer.message_len].decode("utf-8", "replace")
    return OUTCOME_NAMES[answer.outcome], answer.duplicates, message


cdef list _drain(esc_load_tally_t *tally):
    """The tally's (microseconds, count) pairs, emptied."""
    cdef list pairs = []
    cdef uint32_t us
    cdef size_t i
    if tally.lo <= tally.hi:
        for us in range(tally.lo, tally.hi + 1):
            if tally.exact[us]:
                pairs.append((us, tally.exact[us]))
    for i in range(tally.over_len):
        pairs.append((tally.over[i], 1))
    esc_load_tally_clear(tally)
    return pairs


cdef class LoadEngine:
    """`slots` connections to one target, each sending one APPEND at a time (load_engine.h)."""

    cdef esc_load_engine_t *engine
    cdef readonly uint32_t batch_size

    def __cinit__(self, uint32_t slots, uint32_t batch_size, payload, uint64_t keys,
                  uint64_t key_first, bint ids, double timeout_s, double backoff_initial_s=0.02,
                  double backoff_max_s=0.5):
        cdef const unsigned char[::1] payload_view = as_byte_view(payload)
        cdef esc_load_config_t config
        if not 1 <= slots <= ESC_LOAD_SLOTS_MAX:
            raise ValueError(f"slots must be 1..{ESC_LOAD_SLOTS_MAX}, not {slots}")
        if batch_size == 0 or keys == 0 or timeout_s <= 0:
            raise ValueError("batch_size, keys and timeout_s must be > 0")
        config.slots = slots
        config.batch_size = batch_size
        config.payload = &payload_view[0] if payload_view.shape[0] else NULL
        config.payload_len = <uint32_t>payload_view.shape[0]
        config.keys = keys
        config.key_first = key_first
        config.with_ids = ids
        config.timeout_ns = <int64_t>(timeout_s * 1e9)
        config.backoff_initial_ns = <int64_t>(backoff_initial_s * 1e9)
        config.backoff_max_ns = <int64_t>(backoff_max_s * 1e9)
        self.engine = esc_load_engine_new(&config)
        if self.engine is NULL:
            raise MemoryError("cannot set up the load engine (memory or epoll)")
        self.batch_size = batch_size

    def __dealloc__(self):
        if self.engine is not NULL:
            esc_load_engine_free(self.engine)
            self.engine = NULL

    def set_target(self, str ip, int port):
        """The leader's numeric address; every later connection goes there."""
        if not 0 < port < 65536 or esc_load_set_target(self.engine, ip.encode(), <uint16_t>port) != 0:
            raise ValueError(f"not a numeric IP address and port: {ip!r} {port}")

    def set_tls(self, ca_file):
        """Every later connection over TLS, the node's certificate checked against ca_file.
        OSError with the reason when the CA cannot be used or the build has no native TLS."""
        cdef char err[256]
        path = os.fsencode(ca_file)
        if esc_load_set_tls(self.engine, path, err, sizeof(err)) != 0:
            raise OSError(err.decode(errors="replace"))

    def set_token(self, str token):
        """Every later connection presents this token (AUTH) before its first request."""
        data = token.encode()
        if esc_load_set_token(self.engine, <const uint8_t *><const char *>data, len(data)) != 0:
            raise MemoryError("no memory for the token")

    def tls_error(self):
        """Why the last TLS handshake failed; "" when none has."""
        return esc_load_tls_error(self.engine).decode(errors="replace")

    def set_schedule(self, double warmup_end_s, double deadline_s, appends_left):
        """Times on time.monotonic()'s clock; appends_left None for no bound on counted requests."""
        esc_load_set_schedule(self.engine, <int64_t>(warmup_end_s * 1e9), <int64_t>(deadline_s * 1e9),
                              -1 if appends_left is None else <int64_t>appends_left)

    def run(self, double until_s):
        """Drive the connections until `until_s`; RUN_UNTIL, RUN_DONE or RUN_LOOKUP."""
        cdef int64_t until_ns = <int64_t>(until_s * 1e9)
        cdef int rc
        with nogil:
            rc = esc_load_run(self.engine, until_ns)
        if rc == ESC_LOAD_RUN_SYSTEM_ERROR:
            raise OSError("epoll_wait failed in the load engine")
        return rc

    def take_hint(self):
        """The last NotLeader message (the leader's address when the node knew it); clears the
        engine's request for a lookup."""
        cdef const char *hint
        cdef size_t n = esc_load_take_hint(self.engine, &hint)
        return hint[:n].decode("utf-8", "replace")

    def take_interval(self):
        """(events acknowledged, errors) since the last call."""
        cdef esc_load_figures_t *f = esc_load_figures(self.engine)
        out = (f.interval_events, f.interval_errors)
        f.interval_events = 0
        f.interval_errors = 0
        return out

    def take_latencies(self):
        """(warm-up pairs, counted pairs) of (microseconds, count) since the last call."""
        cdef esc_load_figures_t *f = esc_load_figures(self.engine)
        return _drain(&f.warmup), _drain(&f.counted)

    def figures(self):
        cdef esc_load_figures_t *f = esc_load_figures(self.engine)
        errors = {OUTCOME_NAMES[k]: f.errors[k] for k in range(1, ESC_LOAD_OUTCOME_COUNT) if f.errors[k]}
        return {
            "events": f.events,
            "requests": f.requests,
            "duplicates": f.duplicates,
            "events_acked": f.events_acked,
            "errors": errors,
            "connects": f.connects,
            "last_answer_s": f.last_answer_ns / 1e9,
            "latency_clamped": f.warmup.clamped + f.counted.clamped,
        }


def monotonic_ns():
    """The engine's clock (CLOCK_MONOTONIC), for tests that compare it with time.monotonic()."""
    return esc_load_monotonic_ns()
