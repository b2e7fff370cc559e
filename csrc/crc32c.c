/* CRC-32C: SSE4.2 instruction path with a slicing-by-8 fallback. See crc32c.h. */
#include "crc32c.h"

#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ESC_CRC32C_X86 1
#include <nmmintrin.h>
#endif

#define ESC_CRC32C_POLY 0x82F63B78u

/* tables[k][b] is the CRC of byte b followed by k zero bytes; slicing-by-8 folds 8 bytes per step. */
static uint32_t tables[8][256];
static volatile int tables_ready = 0;
static uint32_t (*crc_impl)(uint32_t, const uint8_t *, size_t) = 0;

static void build_tables(void)
{
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int bit = 0; bit < 8; bit++)
            c = (c & 1) ? (c >> 1) ^ ESC_CRC32C_POLY : c >> 1;
        tables[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = tables[0][b];
        for (int k = 1; k < 8; k++) {
            c = tables[0][c & 0xff] ^ (c >> 8);
            tables[k][b] = c;
        }
    }
    tables_ready = 1;
}

static uint32_t crc_table(uint32_t crc, const uint8_t *p, size_t len)
{
    uint32_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = tables[0][(c ^ *p++) & 0xff] ^ (c >> 8);
        len--;
    }
    while (len >= 8) {
        /* Byte-wise loads keep this correct on any byte order. */
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                      (uint32_t)p[7] << 24;
        c = tables[7][lo & 0xff] ^ tables[6][(lo >> 8) & 0xff] ^ tables[5][(lo >> 16) & 0xff] ^
            tables[4][lo >> 24] ^ tables[3][hi & 0xff] ^ tables[2][(hi >> 8) & 0xff] ^
            tables[1][(hi >> 16) & 0xff] ^ tables[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        c = tables[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

#ifdef ESC_CRC32C_X86
/*
 * The crc32 instruction has a latency of 3 cycles but a throughput of 1 per cycle, so one
 * dependent chain runs at a third of the instruction's speed. Large buffers are cut into three
 * adjacent blocks checksummed by independent chains; CRC is linear over GF(2), so the chains
 * combine as crc(A||B) = shift(crc(A), |B|) ^ crc(B), where shift() feeds |B| zero bytes and is
 * a 32x32 bit matrix applied through four 256-entry tables (built once, at load time).
 */
#define ESC_CRC_LONG_BYTES 8192
#define ESC_CRC_SHORT_BYTES 256

static uint32_t shift_long[4][256];
static uint32_t shift_short[4][256];

__attribute__((target("sse4.2"))) static uint32_t feed_zeros(uint32_t crc, size_t len)
{
    uint64_t c = crc;
    for (size_t i = 0; i < len / 8; i++)
        c = _mm_crc32_u64(c, 0);
    return (uint32_t)c;
}

static void build_shift_table(uint32_t table[4][256], size_t len)
{
    uint32_t basis[32];
    for (int bit = 0; bit < 32; bit++)
        basis[bit] = feed_zeros(1u << bit, len);
    for (int k = 0; k < 4; k++) {
        for (uint32_t b = 0; b < 256; b++) {
            uint32_t v = 0;
            for (int bit = 0; bit < 8; bit++)
                if (b & (1u << bit))
                    v ^= basis[8 * k + bit];
            table[k][b] = v;
        }
    }
}

static inline uint32_t shift_crc(uint32_t table[4][256], uint32_t crc)
{
    return table[0][crc & 0xff] ^ table[1][(crc >> 8) & 0xff] ^ table[2][(crc >> 16) & 0xff] ^
           table[3][crc >> 24];
}

/* Three chains over blocks of `block` bytes each, as long as 3 blocks remain. */
__attribute__((target("sse4.2"))) static inline uint64_t crc_three_way(
    uint64_t c, const uint8_t **pp, size_t *lenp, size_t block, uint32_t table[4][256])
{
    const uint8_t *p = *pp;
    size_t len = *lenp;
    while (len >= 3 * block) {
        uint64_t c1 = 0, c2 = 0;
        const uint8_t *end = p + block;
        do {
            uint64_t w0, w1, w2;
            memcpy(&w0, p, 8);
            memcpy(&w1, p + block, 8);
            memcpy(&w2, p + 2 * block, 8);
            c = _mm_crc32_u64(c, w0);
            c1 = _mm_crc32_u64(c1, w1);
            c2 = _mm_crc32_u64(c2, w2);
            p += 8;
        } while (p < end);
        c = shift_crc(table, (uint32_t)c) ^ (uint32_t)c1;
        c = shift_crc(table, (uint32_t)c) ^ (uint32_t)c2;
        p += 2 * block;
        len -= 3 * block;
    }
    *pp = p;
    *lenp = len;
    return c;
}

__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t crc, const uint8_t *p,
                                                           size_t len)
{
    uint64_t c = (uint32_t)~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    c = crc_three_way(c, &p, &len, ESC_CRC_LONG_BYTES, shift_long);
    c = crc_three_way(c, &p, &len, ESC_CRC_SHORT_BYTES, shift_short);
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#endif

static void choose_impl(void)
{
    build_tables();
#ifdef ESC_CRC32C_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) {
        build_shift_table(shift_long, ESC_CRC_LONG_BYTES);
        build_shift_table(shift_short, ESC_CRC_SHORT_BYTES);
        crc_impl = crc_sse42;
        return;
    }
#endif
    crc_impl = crc_table;
}

/* Runs when the extension is loaded, before any caller can race on the dispatch pointer. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((constructor)) static void esc_crc32c_load(void) { choose_impl(); }
#endif

uint32_t esc_crc32c(uint32_t crc, const void *data, size_t len)
{
    if (!crc_impl)
        choose_impl();
    return crc_impl(crc, (const uint8_t *)data, len);
}

uint32_t esc_crc32c_sw(uint32_t crc, const void *data, size_t len)
{
    if (!tables_ready)
        build_tables();
    return crc_table(crc, (const uint8_t *)data, len);
}

int esc_crc32c_hw_available(void)
{
#ifdef ESC_CRC32C_X86
    if (!crc_impl)
        choose_impl();
    return crc_impl == crc_sse42;
#else
    return 0;
#endif
}
