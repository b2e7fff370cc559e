/*
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every WAL record.
 *
 * Plain C so that any extension can link it with `# distutils: sources = csrc/crc32c.c` and call
 * it without the GIL. On x86-64 the SSE4.2 `crc32` instruction is used when the CPU has it
 * (checked once, when the shared object is loaded), and buffers of 1 KiB and more are folded
 * with VPCLMULQDQ when the CPU also has it (with AVX2); elsewhere a slicing-by-8 table runs.
 *
 * Convention (same as the PyPI `crc32c` package and zlib.crc32): `crc` is the value returned by
 * a previous call (0 to start), so crc(a + b) == esc_crc32c(esc_crc32c(0, a), b).
 * Check value: esc_crc32c(0, "123456789", 9) == 0xE3069283.
 */
#ifndef ESC_CRC32C_H
#define ESC_CRC32C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Dispatches to the hardware path when available. Thread-safe, never touches Python. */
uint32_t esc_crc32c(uint32_t crc, const void *data, size_t len);

/* The portable table path, always available; exposed so tests can compare both paths. */
uint32_t esc_crc32c_sw(uint32_t crc, const void *data, size_t len);

/* The instruction path without the VPCLMULQDQ folding, for differential tests; same result. */
uint32_t esc_crc32c_no_fold(uint32_t crc, const void *data, size_t len);

/* 1 when buffers of 1 KiB and more are folded with VPCLMULQDQ (256-bit, AVX2), else 0. */
int esc_crc32c_fold_available(void);

/* 1 when esc_crc32c uses the CPU instruction, 0 when it uses the table. */
int esc_crc32c_hw_available(void);

#ifdef __cplusplus
}
#endif

#endif /* ESC_CRC32C_H */
