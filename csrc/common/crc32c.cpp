// CRC-32C: SSE4.2 crc32 instruction on three interleaved streams, else slicing-by-8 tables.
#include "crc32c.hpp"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace hauler::crc {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli

struct Tables {
  uint32_t t[8][256];
};

const Tables& tables() {
  static const Tables tab = [] {
    Tables x{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (kPoly & (0u - (c & 1u)));
      x.t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) x.t[s][i] = (x.t[s - 1][i] >> 8) ^ x.t[0][x.t[s - 1][i] & 0xFF];
    return x;
  }();
  return tab;
}

// The raw register update (no pre/post inversion) over n bytes.
uint32_t raw_table(uint32_t c, const unsigned char* p, size_t n) {
  const Tables& T = tables();
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);  // little-endian, any alignment
    w ^= c;
    c = T.t[7][w & 0xFF] ^ T.t[6][(w >> 8) & 0xFF] ^ T.t[5][(w >> 16) & 0xFF] ^ T.t[4][(w >> 24) & 0xFF] ^
        T.t[3][(w >> 32) & 0xFF] ^ T.t[2][(w >> 40) & 0xFF] ^ T.t[1][(w >> 48) & 0xFF] ^ T.t[0][w >> 56];
  }
  for (; n; ++p, --n) c = (c >> 8) ^ T.t[0][(c ^ *p) & 0xFF];
  return c;
}

#if defined(__x86_64__)
// Three streams hide the instruction's 3-cycle latency (throughput 1/cycle). Each block of
// 3 * kStride bytes runs the streams from states (c, 0, 0) and joins them with the linear maps
// "append kStride / 2 * kStride zero bytes": raw(c, ABC) = Z2(raw(c, A)) ^ Z1(raw(0, B)) ^ raw(0, C).
constexpr size_t kStride = 4096;

struct Shift {
  uint32_t t[4][256];  // the map on each byte of the register
  uint32_t apply(uint32_t c) const {
    return t[0][c & 0xFF] ^ t[1][(c >> 8) & 0xFF] ^ t[2][(c >> 16) & 0xFF] ^ t[3][c >> 24];
  }
};

Shift make_shift(size_t zeros) {
  static const unsigned char zero[kStride] = {};
  uint32_t basis[32];
  for (int b = 0; b < 32; ++b) {
    uint32_t c = 1u << b;
    for (size_t left = zeros; left; left -= std::min(left, kStride))
      c = raw_table(c, zero, std::min(left, kStride));
    basis[b] = c;
  }
  Shift s{};
  for (int k = 0; k < 4; ++k)
    for (uint32_t v = 0; v < 256; ++v) {
      uint32_t r = 0;
      for (int b = 0; b < 8; ++b)
        if (v >> b & 1) r ^= basis[8 * k + b];
      s.t[k][v] = r;
    }
  return s;
}

__attribute__((target("sse4.2"))) uint32_t raw_hw(uint32_t c, const unsigned char* p, size_t n) {
  if (n >= 3 * kStride) {
    static const Shift z1 = make_shift(kStride), z2 = make_shift(2 * kStride);
    for (; n >= 3 * kStride; p += 3 * kStride, n -= 3 * kStride) {
      uint64_t a = c, b = 0, d = 0;
      for (size_t i = 0; i < kStride; i += 8) {
        uint64_t wa, wb, wd;
        std::memcpy(&wa, p + i, 8);
        std::memcpy(&wb, p + kStride + i, 8);
        std::memcpy(&wd, p + 2 * kStride + i, 8);
        a = _mm_crc32_u64(a, wa);
        b = _mm_crc32_u64(b, wb);
        d = _mm_crc32_u64(d, wd);
      }
      c = z2.apply(uint32_t(a)) ^ z1.apply(uint32_t(b)) ^ uint32_t(d);
    }
  }
  uint64_t c64 = c;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c64 = _mm_crc32_u64(c64, w);
  }
  c = uint32_t(c64);
  for (; n; ++p, --n) c = _mm_crc32_u8(c, *p);
  return c;
}
#endif

}  // namespace

bool has_hardware() {
#if defined(__x86_64__)
  static const bool yes = __builtin_cpu_supports("sse4.2");
  return yes;
#else
  return false;
#endif
}

const char* implementation() { return has_hardware() ? "sse4.2" : "table"; }

uint32_t crc32c_table(const void* p, size_t n, uint32_t crc) {
  return ~raw_table(~crc, static_cast<const unsigned char*>(p), n);
}

uint32_t crc32c_hardware(const void* p, size_t n, uint32_t crc) {
#if defined(__x86_64__)
  return ~raw_hw(~crc, static_cast<const unsigned char*>(p), n);
#else
  return crc32c_table(p, n, crc);
#endif
}

uint32_t crc32c(const void* p, size_t n, uint32_t crc) {
  return has_hardware() ? crc32c_hardware(p, n, crc) : crc32c_table(p, n, crc);
}

}  // namespace hauler::crc
