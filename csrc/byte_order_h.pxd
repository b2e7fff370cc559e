# Declarations of csrc/byte_order.h for cimport: little-endian loads and stores at any alignment.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "byte_order.h" nogil:
    uint16_t esc_load_u16(const uint8_t *p)
    uint32_t esc_load_u32(const uint8_t *p)
    uint64_t esc_load_u64(const uint8_t *p)
    void esc_store_u16(uint8_t *p, uint16_t v)
    void esc_store_u32(uint8_t *p, uint32_t v)
    void esc_store_u64(uint8_t *p, uint64_t v)
