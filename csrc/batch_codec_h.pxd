# Declarations of csrc/batch_codec.h for cimport (header-only; nothing to link).
from libc.stdint cimport int64_t, uint8_t, uint32_t


cdef extern from "batch_codec.h" nogil:
    enum:
        ESC_BATCH_VERSION
        ESC_BATCH_HEADER_BYTES
        ESC_EVENT_HEADER_BYTES
        ESC_BATCH_EVENTS_MAX
        ESC_BATCH_BYTES_MAX
        ESC_EVENT_BYTES_MAX
        ESC_EVENT_ID_BYTES_MAX
        ESC_EVENT_KEY_BYTES_MAX
        ESC_EVENT_HAS_ID
        ESC_EVENT_HAS_KEY
        ESC_EVENT_HAS_QUEUE
        ESC_EVENT_ID_GENERATED
        ESC_BATCH_OK

    ctypedef struct esc_event_t:
        const uint8_t *event_id
        const uint8_t *key
        const uint8_t *payload
        uint32_t id_len
        uint32_t key_len
        uint32_t payload_len
        uint32_t queue
        int64_t timestamp_us
        uint8_t flags

    const char *esc_batch_status_text(int status)
    size_t esc_event_encoded_bytes(size_t id_len, size_t key_len, size_t payload_len)
    int esc_batch_read_header(const uint8_t *buf, size_t length, uint32_t *event_count)
    int esc_batch_read_event(const uint8_t *buf, size_t length, size_t offset,
                             esc_event_t *ev, size_t *next_offset)
    int esc_batch_validate(const uint8_t *buf, size_t length, uint32_t *event_count,
                           uint32_t *offsets, size_t *error_offset)
    void esc_batch_write_header(uint8_t *dst, uint32_t event_count, uint32_t batch_bytes)
    size_t esc_batch_write_event(uint8_t *dst, const esc_event_t *ev)
