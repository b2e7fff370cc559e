# Declarations of csrc/append_stream.h for cimport; link with `# distutils: sources = csrc/append_stream.c`.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from entry_ring_h cimport esc_entry_ring
from frame_format_h cimport ESC_FRAME_HEAD_BYTES
from peer_message_h cimport ESC_MESSAGE_HEAD_BYTES
from tls_link_h cimport esc_tls


cdef extern from "append_stream.h" nogil:
    int ESC_STREAM_LAPPED
    int ESC_STREAM_SEND_FAILED

    ctypedef struct esc_append_head:
        uint64_t to, sender, term, prev_index, prev_term, commit

    ctypedef struct esc_stream:
        int fd
        int error
        uint64_t bytes_sent
        uint64_t sends

    int64_t esc_append_frame_encode(const esc_entry_ring *ring, const esc_append_head *head, uint64_t pos,
                                    uint64_t lo, uint64_t hi, uint8_t *out, size_t room)
    int esc_stream_init(esc_stream *stream, int fd, int timeout_ms, size_t local_bytes)
    void esc_stream_free(esc_stream *stream)
    void esc_stream_reset(esc_stream *stream, int fd, esc_tls *tls)
    int esc_stream_queue_frame(esc_stream *stream, const uint8_t *head, size_t head_n, const uint8_t *body, size_t n)
    int esc_stream_queue_message(esc_stream *stream, const uint8_t *body, size_t n)
    int64_t esc_stream_queue_append(esc_stream *stream, const esc_entry_ring *ring, const esc_append_head *head,
                                    uint64_t pos, uint64_t lo, uint64_t hi)
    int esc_stream_flush(esc_stream *stream)
