/* CRC-32C: VPCLMULQDQ folding and SSE4.2 instruction paths with a slicing-by-8 fallback.
 * See crc32c.h. */
#include "crc32c.h"

#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ESC_CRC32C_X86 1
#include <immintrin.h>
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

/*
 * Carry-less multiplication folding (VPCLMULQDQ on 256-bit registers) for long buffers. The
 * crc32 instruction tops out at 8 bytes per cycle; folding with carry-less products moves 32
 * bytes per register per step. The scheme is the one Intel describes in "Fast CRC Computation
 * for Generic Polynomials Using PCLMULQDQ", in reflected bit order:
 *
 * A 128-bit lane X (low 64 bits XL first in memory, then XH) stands for XL*x^64 + XH. Moving it
 * D bits further down the message multiplies it by x^D, which modulo P is
 *     clmul(XL, k_lo) ^ clmul(XH, k_hi)   with k_lo = x^(D+31) mod P, k_hi = x^(D-33) mod P
 * (the offsets absorb the extra factor x of a reflected carry-less product and the 32-bit
 * placement of the constants). The result is congruent to X*x^D, fits in 128 bits and is XORed
 * into the lane D bits on. Once one lane is left, two crc32 instructions reduce it to the CRC
 * register, since crc32(crc32(0, XL), XH) == (XL*x^64 + XH)*x^32 mod P, which is exactly the
 * register after those 16 bytes. The constants are computed at load time (fold_constants).
 *
 * Why not 512-bit registers: a zmm version checksummed 64 KiB faster by itself here (0.94 us
 * against 1.18 us), yet a whole 64 KiB WAL append cost the same CPU with either (16.3 us,
 * alternated runs); 256-bit folding needs only AVX2 and VPCLMULQDQ, and stays clear of the
 * clock drop that 512-bit instructions cause on some Xeons.
 */
#define ESC_CRC_FOLD_BYTES_MIN 1024
#define ESC_CRC32C_POLY_NORMAL 0x11EDC6F41ull

static int fold_available = 0;
static uint64_t fold_1024[2], fold_256[2], fold_128[2];

/* a*b mod P in normal bit order (bit i holds the coefficient of x^i); a, b below x^32. */
static uint64_t poly_mulmod(uint64_t a, uint64_t b)
{
    uint64_t product = 0;
    for (int bit = 0; bit < 32; bit++) {
        if (b & (1ull << bit))
            product ^= a;
        a <<= 1;
        if (a >> 32)
            a ^= ESC_CRC32C_POLY_NORMAL;
    }
    return product;
}

/* x^n mod P as a reflected 32-bit value (bit i holds the coefficient of x^(31-i)). */
static uint32_t xpow_mod_reflected(uint32_t n)
{
    uint64_t result = 1, base = 2;
    for (; n; n >>= 1) {
        if (n & 1)
            result = poly_mulmod(result, base);
        base = poly_mulmod(base, base);
    }
    uint32_t reflected = 0;
    for (int bit = 0; bit < 32; bit++)
        if (result & (1ull << bit))
            reflected |= 1u << (31 - bit);
    return reflected;
}

static void fold_constants(uint64_t k[2], uint32_t distance_bits)
{
    k[0] = xpow_mod_reflected(distance_bits + 31);
    k[1] = xpow_mod_reflected(distance_bits - 33);
}

#define ESC_FOLD_TARGET "avx2,vpclmulqdq,pclmul,sse4.2"

/* Both 128-bit lanes of x moved on by the distance of k, XORed into next. */
__attribute__((target(ESC_FOLD_TARGET))) static inline __m256i fold_lanes(__m256i x, __m256i k,
                                                                          __m256i next)
{
    __m256i lo = _mm256_clmulepi64_epi128(x, k, 0x00);
    __m256i hi = _mm256_clmulepi64_epi128(x, k, 0x11);
    return _mm256_xor_si256(_mm256_xor_si256(lo, hi), next);
}

__attribute__((target(ESC_FOLD_TARGET))) static inline __m256i broadcast_constants(
    const uint64_t k[2])
{
    return _mm256_broadcastsi128_si256(_mm_set_epi64x((long long)k[1], (long long)k[0]));
}

/* The CRC register after four consecutive 32-byte accumulators (x0 first in the message). */
__attribute__((target(ESC_FOLD_TARGET))) static inline uint64_t reduce_accumulators(
    __m256i x0, __m256i x1, __m256i x2, __m256i x3)
{
    __m256i k = broadcast_constants(fold_256);
    x1 = fold_lanes(x0, k, x1);
    x2 = fold_lanes(x1, k, x2);
    x3 = fold_lanes(x2, k, x3);
    __m128i first = _mm256_castsi256_si128(x3);
    __m128i k128 = _mm_set_epi64x((long long)fold_128[1], (long long)fold_128[0]);
    __m128i lane = _mm_xor_si128(_mm256_extracti128_si256(x3, 1),
                                 _mm_xor_si128(_mm_clmulepi64_si128(first, k128, 0x00),
                                               _mm_clmulepi64_si128(first, k128, 0x11)));
    uint64_t c = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(lane));
    return _mm_crc32_u64(c, (uint64_t)_mm_extract_epi64(lane, 1));
}

/*
 * Consumes whole 128-byte blocks from *pp (the caller guarantees at least one) with four 32-byte
 * accumulators, whose independent products hide the multiplier's latency. `c` is the raw CRC
 * register on entry; returns the register after the consumed bytes.
 */
__attribute__((target(ESC_FOLD_TARGET))) static uint64_t crc_fold(uint64_t c, const uint8_t **pp,
                                                                  size_t *lenp)
{
    const uint8_t *p = *pp;
    size_t len = *lenp;
    __m256i x0 = _mm256_loadu_si256((const __m256i *)p);
    __m256i x1 = _mm256_loadu_si256((const __m256i *)(p + 32));
    __m256i x2 = _mm256_loadu_si256((const __m256i *)(p + 64));
    __m256i x3 = _mm256_loadu_si256((const __m256i *)(p + 96));
    /* The running register enters as the first 32 bits of the data. */
    x0 = _mm256_xor_si256(x0, _mm256_set_epi64x(0, 0, 0, (long long)(uint32_t)c));
    p += 128;
    len -= 128;
    __m256i k = broadcast_constants(fold_1024);
    while (len >= 128) {
        x0 = fold_lanes(x0, k, _mm256_loadu_si256((const __m256i *)p));
        x1 = fold_lanes(x1, k, _mm256_loadu_si256((const __m256i *)(p + 32)));
        x2 = fold_lanes(x2, k, _mm256_loadu_si256((const __m256i *)(p + 64)));
        x3 = fold_lanes(x3, k, _mm256_loadu_si256((const __m256i *)(p + 96)));
        p += 128;
        len -= 128;
    }
    *pp = p;
    *lenp = len;
    return reduce_accumulators(x0, x1, x2, x3);
}

/*
 * Hybrid blocks. Folding keeps the carry-less multiplier busy and leaves the crc32 unit idle; a
 * block of ESC_CRC_HYBRID_BYTES runs both: 128-byte folding steps over its first part while three
 * crc32 chains walk three equal tails, then the four registers are combined. CRC registers are
 * linear, so reg(A || B) = reg(A) * x^(8|B|) ^ reg_from_zero(B), and multiplying a register by
 * x^(8n) is crc32(0, clmul(reg, x^(8n-33) mod P)): the product of two 32-bit values is below
 * 2^63, and crc32 over it supplies the x^32 and the reduction (same bookkeeping as the fold
 * constants above).
 */
#define ESC_HYBRID_STEPS 64
#define ESC_HYBRID_TAIL_BYTES (16 * ESC_HYBRID_STEPS)
#define ESC_HYBRID_FOLD_BYTES (128 * ESC_HYBRID_STEPS)
#define ESC_CRC_HYBRID_BYTES (ESC_HYBRID_FOLD_BYTES + 3 * ESC_HYBRID_TAIL_BYTES)

/* x^(8n-33) mod P for n = three, two and one tails. */
static uint64_t hybrid_shift[3];

__attribute__((target(ESC_FOLD_TARGET))) static inline uint64_t shift_register(uint64_t c,
                                                                               uint64_t k)
{
    __m128i product = _mm_clmulepi64_si128(_mm_cvtsi64_si128((long long)c),
                                           _mm_cvtsi64_si128((long long)k), 0x00);
    return _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(product));
}

__attribute__((target(ESC_FOLD_TARGET))) static inline uint64_t load_u64(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/* One ESC_CRC_HYBRID_BYTES block at p; `c` is the raw register before it, returns the one after. */
__attribute__((target(ESC_FOLD_TARGET))) static uint64_t crc_hybrid_block(uint64_t c,
                                                                          const uint8_t *p)
{
    const uint8_t *t1 = p + ESC_HYBRID_FOLD_BYTES;
    const uint8_t *t2 = t1 + ESC_HYBRID_TAIL_BYTES;
    const uint8_t *t3 = t2 + ESC_HYBRID_TAIL_BYTES;
    uint64_t c1 = 0, c2 = 0, c3 = 0;
    __m256i x0 = _mm256_loadu_si256((const __m256i *)p);
    __m256i x1 = _mm256_loadu_si256((const __m256i *)(p + 32));
    __m256i x2 = _mm256_loadu_si256((const __m256i *)(p + 64));
    __m256i x3 = _mm256_loadu_si256((const __m256i *)(p + 96));
    x0 = _mm256_xor_si256(x0, _mm256_set_epi64x(0, 0, 0, (long long)(uint32_t)c));
    __m256i k = broadcast_constants(fold_1024);
    for (size_t step = 0; step < ESC_HYBRID_STEPS; step++) {
        if (step) {
            const uint8_t *q = p + 128 * step;
            x0 = fold_lanes(x0, k, _mm256_loadu_si256((const __m256i *)q));
            x1 = fold_lanes(x1, k, _mm256_loadu_si256((const __m256i *)(q + 32)));
            x2 = fold_lanes(x2, k, _mm256_loadu_si256((const __m256i *)(q + 64)));
            x3 = fold_lanes(x3, k, _mm256_loadu_si256((const __m256i *)(q + 96)));
        }
        size_t at = 16 * step;
        c1 = _mm_crc32_u64(c1, load_u64(t1 + at));
        c2 = _mm_crc32_u64(c2, load_u64(t2 + at));
        c3 = _mm_crc32_u64(c3, load_u64(t3 + at));
        c1 = _mm_crc32_u64(c1, load_u64(t1 + at + 8));
        c2 = _mm_crc32_u64(c2, load_u64(t2 + at + 8));
        c3 = _mm_crc32_u64(c3, load_u64(t3 + at + 8));
    }
    uint64_t a = reduce_accumulators(x0, x1, x2, x3);
    return shift_register(a, hybrid_shift[0]) ^ shift_register(c1, hybrid_shift[1]) ^
           shift_register(c2, hybrid_shift[2]) ^ c3;
}

/* Called once with the SSE4.2 path chosen; __builtin_cpu_supports checks the OS saves ymm state. */
static void choose_fold(void)
{
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("vpclmulqdq") &&
          __builtin_cpu_supports("pclmul")))
        return;
    fold_constants(fold_1024, 1024);
    fold_constants(fold_256, 256);
    fold_constants(fold_128, 128);
    for (int tails = 3; tails >= 1; tails--)
        hybrid_shift[3 - tails] = xpow_mod_reflected(8 * ESC_HYBRID_TAIL_BYTES * tails - 33);
    fold_available = 1;
}

/* The crc32-instruction path; `fold` lets long buffers take the VPCLMULQDQ path first. */
__attribute__((target("sse4.2"))) static uint32_t crc_sse42_with(int fold, uint32_t crc,
                                                                const uint8_t *p, size_t len)
{
    uint64_t c = (uint32_t)~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    while (fold && len >= ESC_CRC_HYBRID_BYTES) {
        c = crc_hybrid_block(c, p);
        p += ESC_CRC_HYBRID_BYTES;
        len -= ESC_CRC_HYBRID_BYTES;
    }
    if (fold && len >= ESC_CRC_FOLD_BYTES_MIN)
        c = crc_fold(c, &p, &len);
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

static uint32_t crc_sse42(uint32_t crc, const uint8_t *p, size_t len)
{
    return crc_sse42_with(fold_available, crc, p, len);
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
        choose_fold();
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

uint32_t esc_crc32c_no_fold(uint32_t crc, const void *data, size_t len)
{
#ifdef ESC_CRC32C_X86
    if (!crc_impl)
        choose_impl();
    if (crc_impl == crc_sse42)
        return crc_sse42_with(0, crc, (const uint8_t *)data, len);
#endif
    return esc_crc32c(crc, data, len);
}

int esc_crc32c_fold_available(void)
{
#ifdef ESC_CRC32C_X86
    if (!crc_impl)
        choose_impl();
    return fold_available;
#else
    return 0;
#endif
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
