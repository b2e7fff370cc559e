# Declarations of csrc/frame_format.h for cimport; link with `# distutils: sources = csrc/crc32c.c`.
from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef extern from "frame_format.h" nogil:
    unsigned int ESC_FRAME_HEAD_BYTES

    enum:
        ESC_FRAME_NEED_MORE
        ESC_FRAME_WHOLE
        ESC_FRAME_TOO_LONG
        ESC_FRAME_BAD_CRC

    ctypedef struct esc_frame:
        uint32_t body_len
        uint32_t head_crc
        uint32_t body_crc

    void esc_frame_store_head_crc(uint8_t *head, uint32_t body_len, uint32_t body_crc)
    void esc_frame_store_head(uint8_t *head, const uint8_t *body, uint32_t body_len)
    int esc_frame_next(const uint8_t *buf, size_t len, uint64_t body_len_max, esc_frame *f)
