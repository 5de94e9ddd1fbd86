// CRC-32C against a bitwise reference: the check value, random buffers at unaligned starts and
// lengths around the three-stream block size, chaining, and both implementations (the table
// fallback runs on every CPU; the SSE4.2 one where the CPU has it). Also under ASan/UBSan.
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "common/crc32c.hpp"
#include "check.hpp"

using namespace hauler;

static uint32_t bitwise(const uint8_t* p, size_t n, uint32_t crc = 0) {
  uint32_t c = ~crc;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
  }
  return ~c;
}

using Fn = uint32_t (*)(const void*, size_t, uint32_t);

static bool against_reference(const char* name, Fn fn) {
  CHECK(fn("123456789", 9, 0) == 0xE3069283u, "%s: check value %08x", name, fn("123456789", 9, 0));
  CHECK(fn("", 0, 0) == 0, "%s: empty", name);
  std::mt19937_64 rng(7);
  std::vector<uint8_t> buf(3 * 3 * 4096 + 64);
  for (auto& b : buf) b = uint8_t(rng());
  // lengths at and around the 3 x 4096-byte blocks of the hardware path, and small ones
  std::vector<size_t> lens = {1, 2, 7, 8, 9, 15, 16, 63, 4095, 4096, 4097, 12287, 12288, 12289, 24575, 24576,
                              24577, 36864};
  for (int i = 0; i < 40; ++i) lens.push_back(size_t(rng() % (3 * 3 * 4096)));
  for (size_t n : lens)
    for (size_t start : {0, 1, 3, 5, 8, 13}) {
      if (start + n > buf.size()) continue;
      uint32_t want = bitwise(buf.data() + start, n);
      uint32_t got = fn(buf.data() + start, n, 0);
      CHECK(got == want, "%s: %zu bytes at +%zu: %08x, reference %08x", name, n, start, got, want);
      size_t cut = n ? size_t(rng() % n) : 0;  // continuing from the CRC of a prefix
      uint32_t chained = fn(buf.data() + start + cut, n - cut, fn(buf.data() + start, cut, 0));
      CHECK(chained == want, "%s: %zu bytes at +%zu split at %zu: %08x, reference %08x", name, n, start, cut,
            chained, want);
    }
  return true;
}

int main() {
  if (against_reference("table", crc::crc32c_table)) ++g_pass;
  if (against_reference("auto", crc::crc32c)) ++g_pass;
  if (crc::has_hardware()) {
    if (against_reference("sse4.2", crc::crc32c_hardware)) ++g_pass;
  } else {
    std::printf("skip sse4.2: the CPU lacks it (auto runs the table)\n");
  }
  std::printf("test_crc32c (%s): %d passed, %d failed\n", crc::implementation(), g_pass, g_fail);
  return g_fail ? 1 : 0;
}
