/* MurmurHash3 (Austin Appleby's public-domain algorithm), written for EventStreamCore.
 *
 * Two variants, both matching the `mmh3` Python package bit for bit (seed 0):
 *   esc_murmur3_32   == mmh3.hash(data, signed=False)           -- queue routing
 *   esc_murmur3_128  == mmh3.hash128(data) split as (h1, h2),   -- event-id digests
 *                       i.e. the 128-bit value is h2 << 64 | h1.
 * Inputs are read byte by byte as little-endian words, so the result does not depend on the
 * host's byte order or on alignment.
 */
#ifndef ESC_MURMUR3_H
#define ESC_MURMUR3_H

#include <stddef.h>
#include <stdint.h>

uint32_t esc_murmur3_32(const uint8_t *data, size_t len, uint32_t seed);
void esc_murmur3_128(const uint8_t *data, size_t len, uint32_t seed, uint64_t *h1, uint64_t *h2);

#endif
