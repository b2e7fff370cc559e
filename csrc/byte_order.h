/*
 * Little-endian loads and stores at any alignment. Every on-disk and wire integer in
 * EventStreamCore is little-endian; memcpy lets the compiler emit one plain move on x86-64.
 */
#ifndef ESC_BYTE_ORDER_H
#define ESC_BYTE_ORDER_H

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define ESC_SWAP16(x) __builtin_bswap16(x)
#define ESC_SWAP32(x) __builtin_bswap32(x)
#define ESC_SWAP64(x) __builtin_bswap64(x)
#else
#define ESC_SWAP16(x) (x)
#define ESC_SWAP32(x) (x)
#define ESC_SWAP64(x) (x)
#endif

static inline uint16_t esc_load_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return ESC_SWAP16(v); }
static inline uint32_t esc_load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return ESC_SWAP32(v); }
static inline uint64_t esc_load_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return ESC_SWAP64(v); }
static inline void esc_store_u16(uint8_t *p, uint16_t v) { v = ESC_SWAP16(v); memcpy(p, &v, 2); }
static inline void esc_store_u32(uint8_t *p, uint32_t v) { v = ESC_SWAP32(v); memcpy(p, &v, 4); }
static inline void esc_store_u64(uint8_t *p, uint64_t v) { v = ESC_SWAP64(v); memcpy(p, &v, 8); }

#endif /* ESC_BYTE_ORDER_H */
