// What the kernels' index headers (datatype/pack_index.cuh, gather/gather_index.cuh) share. Those
// headers are compiled twice: by nvcc into the kernels and by the host compiler into the grid
// emulator, so everything here compiles both ways.
#pragma once
#include <stdint.h>

#ifdef __CUDACC__
#define HAULER_HD __host__ __device__
#else
#define HAULER_HD
#endif

namespace hauler {

// Largest power of two <= 16 dividing v (16 for v == 0): the widest aligned access an address,
// size or stride allows.
HAULER_HD inline int word_align(uint64_t v) {
  if (v % 16 == 0) return 16;
  if (v % 8 == 0) return 8;
  if (v % 4 == 0) return 4;
  if (v % 2 == 0) return 2;
  return 1;
}

// Word<W>::type, the type of one W-byte access: the vector types nvcc turns into single 16/8-byte
// loads; on the host, may_alias types (the buffers hold arbitrary data) of the same size and
// alignment, so a misaligned access is undefined there too and the sanitizer build flags it.
// Code that needs the may_alias attribute takes the type from this trait: a typedef passed as a
// template argument would drop it.
#ifdef __CUDACC__
template <int W> struct Word;
template <> struct Word<16> { using type = uint4; };
template <> struct Word<8> { using type = uint2; };
template <> struct Word<4> { using type = uint32_t; };
template <> struct Word<2> { using type = uint16_t; };
template <> struct Word<1> { using type = uint8_t; };
#else
struct alignas(16) HostWord16 {
  uint64_t lo, hi;
} __attribute__((may_alias));
typedef uint64_t __attribute__((may_alias)) HostWord8;
typedef uint32_t __attribute__((may_alias)) HostWord4;
typedef uint16_t __attribute__((may_alias)) HostWord2;
template <int W> struct Word;
template <> struct Word<16> { using type = HostWord16; };
template <> struct Word<8> { using type = HostWord8; };
template <> struct Word<4> { using type = HostWord4; };
template <> struct Word<2> { using type = HostWord2; };
template <> struct Word<1> { using type = uint8_t; };
#endif

}  // namespace hauler
