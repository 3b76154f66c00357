#ifndef IOTC_CRC32C_H
#define IOTC_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32C (Castagnoli) with the processor's own instruction (SSE 4.2 on x86-64), for the kernel's
 * write-ahead log. Not part of the plugin ABI. */

/* Whether this processor has the instruction; iotc_crc32c_hardware must not be called otherwise. */
int iotc_crc32c_hardware_available(void);

/* Continues the CRC register `crc` over `n` bytes at `p` (start with 0xFFFFFFFF; the caller inverts
 * the result). */
uint32_t iotc_crc32c_hardware(uint32_t crc, const uint8_t *p, size_t n);

#endif
