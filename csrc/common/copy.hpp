// Block copy functors of the host kernels (datatype/pack.cpp, gather/gather.cpp): each copies
// one block of bytes() bytes from s to d, and the kernels are templates over them, so the copy
// inlines into their loops.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace hauler::copy {

// Fixed sizes compile to straight-line loads and stores (all loads of a block issued before its
// stores, up to 256 B, by GCC/Clang's expansion); x86 handles unaligned scalar and vector
// accesses at full speed, so alignment only matters to the GPU kernels.
template <int B>
struct Fixed {
  int64_t bytes() const { return B; }
  void operator()(uint8_t* d, const uint8_t* s) const { std::memcpy(d, s, B); }
};

// n words of W bytes: small blocks of no fixed size.
template <int W>
struct Words {
  int64_t n;
  int64_t bytes() const { return n * W; }
  void operator()(uint8_t* d, const uint8_t* s) const {
    for (int64_t i = 0; i < n; ++i) std::memcpy(d + i * W, s + i * W, W);
  }
};

// Any size: libc memcpy, which already picks the widest vector path for large blocks.
struct Bytes {
  int64_t b;
  int64_t bytes() const { return b; }
  void operator()(uint8_t* d, const uint8_t* s) const { std::memcpy(d, s, static_cast<size_t>(b)); }
};

#if defined(__x86_64__)
// Streaming (non-temporal) stores, for output written once and not read back soon: bypassing
// the cache saves the read-for-ownership of every output line. The destination must be aligned
// (8 bytes for Stream8, 16 for the others: the caller checks) and the caller ends its window
// with an sfence, since these stores are weakly ordered.
struct Stream8 {
  int64_t bytes() const { return 8; }
  void operator()(uint8_t* d, const uint8_t* s) const {
    long long v;
    std::memcpy(&v, s, 8);
    _mm_stream_si64(reinterpret_cast<long long*>(d), v);
  }
};

// b a multiple of 16. Up to 128 B of loads are issued before their stores: a store to an
// address whose low 12 bits match a pending load stalls it (4 KiB aliasing), which
// block-by-block strided copies otherwise hit regularly.
struct Stream16 {
  int64_t b;
  int64_t bytes() const { return b; }
  void operator()(uint8_t* d, const uint8_t* s) const {
    int64_t i = 0;
    for (; i + 128 <= b; i += 128) {
      __m128i x[8];
      for (int k = 0; k < 8; ++k) x[k] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16 * k));
      for (int k = 0; k < 8; ++k) _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 16 * k), x[k]);
    }
    for (; i + 64 <= b; i += 64) {
      __m128i x[4];
      for (int k = 0; k < 4; ++k) x[k] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16 * k));
      for (int k = 0; k < 4; ++k) _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 16 * k), x[k]);
    }
    for (; i < b; i += 16)
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
  }
};

template <int B>
struct StreamFixed : Stream16 {
  static_assert(B % 16 == 0, "streamed blocks are whole 16-byte words");
  StreamFixed() : Stream16{B} {}
};
#endif

}  // namespace hauler::copy
