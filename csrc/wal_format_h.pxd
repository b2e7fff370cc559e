# Declarations of csrc/wal_format.h for cimport; link with `# distutils: sources = csrc/crc32c.c`.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "wal_format.h" nogil:
    enum:
        ESC_WAL_VERSION
        ESC_WAL_TYPE_ENTRY
        ESC_WAL_HEADER_BYTES
        ESC_WAL_PAYLOAD_BYTES_MAX
        ESC_WAL_PAYLOAD_ALIGN_BYTES
        ESC_WAL_ALIGN_PAYLOAD_BYTES_MIN
        ESC_WAL_OK
        ESC_WAL_SHORT_HEADER
        ESC_WAL_SHORT_PAYLOAD
        ESC_WAL_BAD_INDEX
        ESC_WAL_BAD_TERM

    ctypedef struct esc_wal_record_t:
        const uint8_t *payload
        uint32_t payload_len
        uint32_t pad_bytes
        uint8_t type
        uint64_t index
        uint64_t term

    const char *esc_wal_status_text(int status)
    size_t esc_wal_record_bytes(size_t payload_len)
    size_t esc_wal_align_pad_bytes(uint64_t boundary)
    size_t esc_wal_seal_record(uint8_t *dst, uint8_t type, uint32_t payload_len,
                               uint64_t index, uint64_t term)
    size_t esc_wal_seal_header(uint8_t *dst, uint8_t type, uint32_t pad_bytes, const uint8_t *payload,
                               uint32_t payload_len, uint64_t index, uint64_t term)
    int esc_wal_read_record(const uint8_t *buf, size_t length, size_t offset,
                            esc_wal_record_t *rec, size_t *next_offset)
    int esc_wal_read_record_at(const uint8_t *buf, size_t length, size_t offset,
                               uint64_t file_base, esc_wal_record_t *rec, size_t *next_offset)
    size_t esc_wal_bytes_needed(const uint8_t *buf, size_t length, size_t offset,
                                uint64_t file_base)
