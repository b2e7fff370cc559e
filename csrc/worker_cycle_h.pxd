# Declarations of csrc/worker_cycle.h for cimport; link with `# distutils: sources = csrc/worker_cycle.c`.
from libc.stdint cimport uint8_t, uint64_t

from append_stream_h cimport esc_stream
from entry_ring_h cimport esc_entry_ring
from spsc_ring_h cimport esc_ring
from tls_link_h cimport esc_tls


cdef extern from "worker_cycle.h" nogil:
    int ESC_ORDER_MESSAGE
    int ESC_ORDER_APPEND
    int ESC_ORDER_APPEND_BYTES
    int ESC_STATUS_CONNECTED
    int ESC_STATUS_UNREACHABLE
    int ESC_STATUS_RESPONSE
    int ESC_STATUS_STALE
    int ESC_WAIT_BOUNDS_MAX
    int ESC_RESPONSE_BYTES
    int ESC_RECV_BYTES
    int ESC_RUN_DEADLINE
    int ESC_RUN_IDLE
    int ESC_RUN_LOST
    int ESC_RUN_RING_CORRUPT
    int ESC_RUN_ORPHANED
    int ESC_LOST_RECV_FAILED
    int ESC_LOST_CLOSED
    int ESC_LOST_FRAME_TOO_LONG
    int ESC_LOST_FRAME_CRC
    int ESC_LOST_SEND_FAILED
    int ESC_LOST_LAPPED

    ctypedef struct esc_worker_config:
        uint64_t node_id, peer_id, append_bytes_max, append_entries_max, answer_frame_max
        int doorbell_fd, node_bell_fd, send_timeout_ms, poll_ms, status_retry_ms
        int n_wait_bounds
        uint64_t wait_bounds_ns[16]

    ctypedef struct esc_worker:
        esc_worker_config cfg
        esc_stream stream
        int fd
        uint8_t (*pending)[56]
        int pending_n
        uint64_t messages, dropped, stale, sleeps, doorbell_wakes, missed_wakeups, order_wait_ns
        uint64_t wait_buckets[17]
        uint64_t malformed_answers, unexpected_answers, unknown_orders, answers_relayed
        int lost_reason, lost_errno
        uint64_t lost_a, lost_b

    int esc_worker_init(esc_worker *w, const esc_worker_config *cfg, const esc_entry_ring *entries,
                        esc_ring *control, esc_ring *status)
    void esc_worker_free(esc_worker *w)
    void esc_worker_link(esc_worker *w, int fd, esc_tls *tls)
    int esc_worker_run(esc_worker *w, uint64_t deadline_ns)
    int esc_worker_feed(esc_worker *w, const uint8_t *data, size_t n)
