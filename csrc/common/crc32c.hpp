// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as iSCSI, ext4 and SSE4.2's crc32
// instruction define it: crc32c("123456789") == 0xE3069283. TensorStore checksums entries with it.
#pragma once
#include <cstddef>
#include <cstdint>

namespace hauler::crc {

// CRC-32C of n bytes at p, continuing from `crc` (the CRC of the bytes before, 0 to start):
// crc32c(b, nb, crc32c(a, na)) == crc32c(a + b). The fastest implementation the CPU runs.
uint32_t crc32c(const void* p, size_t n, uint32_t crc = 0);

// The two implementations behind crc32c(), for tests and benchmarks. hardware() is
// SSE4.2's crc32 instruction on three interleaved streams; call it only when has_hardware().
uint32_t crc32c_table(const void* p, size_t n, uint32_t crc = 0);
uint32_t crc32c_hardware(const void* p, size_t n, uint32_t crc = 0);
bool has_hardware();
const char* implementation();  // "sse4.2" or "table"

}  // namespace hauler::crc
