#include "pack.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../common/checked.hpp"
#include "../common/copy.hpp"
#include "../common/settings.hpp"
#include "../common/thread_pool.hpp"

namespace hauler::dt {

Plan make_plan(Layout l) {
  Plan p;
  p.layout = std::move(l);
  p.prefix.resize(p.layout.runs.size() + 1, 0);
  for (size_t i = 0; i < p.layout.runs.size(); ++i) p.prefix[i + 1] = p.prefix[i] + p.layout.runs[i].length;
  p.run_bytes = p.prefix.back();
  p.total = p.layout.total_bytes();
  layout_span(p.layout, &p.span_lo, &p.span_hi);
  return p;
}

void check_window(const Plan& p, int64_t pos, int64_t n) {
  if (pos < 0 || pos > p.total)
    fail(Status::out_of_range, "position " + std::to_string(pos) + " is outside the packed message of " +
                                   std::to_string(p.total) + " bytes");
  if (n < 0) fail(Status::invalid_argument, "byte count must be >= 0, got " + std::to_string(n));
  if (n > p.total - pos)
    fail(Status::out_of_range, std::to_string(n) + " bytes from position " + std::to_string(pos) +
                                   " run past the end of the packed message of " + std::to_string(p.total) +
                                   " bytes");
}

namespace {

#if defined(__x86_64__)
// Packing tiny blocks (1, 2 or 4 bytes) at a small positive stride is
// bound by one load and one store per block in scalar code. Instead, gather
// 16 output bytes from up to four 16-byte loads with byte shuffles whose
// masks depend on (block, stride) and are built once per call. Unpack can't
// shuffle the same way (full-width stores would rewrite the gaps between
// blocks); it uses AVX-512 masked stores instead, where the CPU has them.
struct Shuffler {
  int loads = 0;       // 16-byte loads per 16 output bytes (0: not usable)
  int per_chunk = 0;   // blocks per 16 output bytes
  int64_t advance = 0; // source bytes per 16 output bytes
  bool stream = false; // non-temporal stores where the output is 16-byte aligned
  __m128i mask[4];
  // Unpack: AVX-512 masked stores over 64-byte windows of the destination. A
  // masked store writes only the mask's bytes, so the gaps between blocks are
  // never touched (not even rewritten with their own value).
  bool expand = false;   // any stride up to 64: expand-load by the window's phase
  bool permute = false;  // stride divides 64: every window alike, one vpermb
  uint64_t window_mask[64];  // by phase: window start offset modulo the stride
  int window_bytes[64];      // popcount of each mask
  uint8_t perm_index[64];    // permute: window byte o <- packed byte perm_index[o]
};

// Unpack of blocks shorter than the stride, the stride at most 64 bytes, over
// `nb` blocks. A stride that divides 64 puts every 64-byte window at the same
// phase: one index vector and one mask (cheap to build) serve all windows.
// Other strides (blocks of 1..7 bytes only) need a mask per phase, a few
// microseconds to build: only worth it for a few KiB. Blocks of 8, 16 or 32
// bytes keep their single-move copy, which is as fast or faster (AMD EPYC).
Shuffler make_expander(int64_t b, int64_t stride, int64_t nb) {
  Shuffler sh;
  if (stride <= b || stride > 64 || (b >= 8 && (b & (b - 1)) == 0) || !__builtin_cpu_supports("avx512bw"))
    return sh;
  if (64 % stride == 0 && __builtin_cpu_supports("avx512vbmi")) {
    sh.permute = true;
    uint64_t m = 0;
    for (int o = 0; o < 64; ++o) {
      const int64_t blk = o / stride, in = o % stride;
      sh.perm_index[o] = static_cast<uint8_t>(in < b ? blk * b + in : 0);
      if (in < b) m |= uint64_t(1) << o;
    }
    sh.window_mask[0] = m;
    sh.window_bytes[0] = __builtin_popcountll(m);
    return sh;
  }
  if (b >= 8 || nb * stride < 4096 || !__builtin_cpu_supports("avx512vbmi2")) return sh;
  sh.expand = true;
  for (int64_t p = 0; p < stride; ++p) {
    uint64_t m = 0;
    for (int o = 0; o < 64; ++o)
      if ((p + o) % stride < b) m |= uint64_t(1) << o;
    sh.window_mask[p] = m;
    sh.window_bytes[p] = __builtin_popcountll(m);
  }
  return sh;
}

// After the windows of an unpack: `used` packed bytes are in place, the last
// window may have cut a block; finishes that block and returns how many
// blocks are done (the caller copies the rest).
inline int64_t finish_cut_block(uint8_t* dst, int64_t stride, int64_t b, const uint8_t* in, int64_t used) {
  int64_t k = used / b, r = used % b;
  if (r != 0) {
    std::memcpy(dst + k * stride + r, in + used, static_cast<size_t>(b - r));
    ++k;
  }
  return k;
}

// Unpacks `n` blocks to `dst`, 64 destination bytes per step while a whole
// window lies inside the run.
__attribute__((target("avx512f,avx512bw,avx512vbmi2"))) int64_t expand_unpack(const Shuffler& sh, uint8_t* dst,
                                                                              int64_t stride, int64_t b,
                                                                              const uint8_t* in, int64_t n) {
  const int64_t end = (n - 1) * stride + b;  // bytes of the run, from dst
  int64_t at = 0, used = 0, phase = 0;
  const int64_t step = 64 % stride;  // phase advance per window: a compare, not a division per window
  while (at + 64 <= end) {
    __mmask64 m = sh.window_mask[phase];
    __m512i v = _mm512_maskz_expandloadu_epi8(m, in + used);
    _mm512_mask_storeu_epi8(dst + at, m, v);
    used += sh.window_bytes[phase];
    at += 64;
    phase += step;
    if (phase >= stride) phase -= stride;
  }
  return finish_cut_block(dst, stride, b, in, used);
}

// The same for a stride that divides 64: each window takes the next `per`
// packed bytes (a masked load: never past the packed input's end), spreads
// them with one byte permute and stores them under the one block mask. Index,
// masks and count stay in registers (the destination's byte stores could
// alias a struct member, forcing a reload per window).
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) int64_t permute_unpack(const Shuffler& sh, uint8_t* dst,
                                                                             int64_t stride, int64_t b,
                                                                             const uint8_t* in, int64_t n) {
  const int64_t windows = ((n - 1) * stride + b) / 64;
  const __m512i idx = _mm512_loadu_si512(sh.perm_index);
  const __mmask64 store = sh.window_mask[0];
  const int64_t per = sh.window_bytes[0];  // < 64: the stride is longer than the block
  const __mmask64 load = (uint64_t(1) << per) - 1;
  for (int64_t w = 0; w < windows; ++w) {
    const __m512i v = _mm512_maskz_loadu_epi8(load, in + w * per);
    _mm512_mask_storeu_epi8(dst + 64 * w, store, _mm512_maskz_permutexvar_epi8(store, idx, v));
  }
  return finish_cut_block(dst, stride, b, in, windows * per);
}

Shuffler make_shuffler(int64_t b, int64_t stride) {
  Shuffler sh;
  if (!(b == 1 || b == 2 || b == 4) || stride <= b || !__builtin_cpu_supports("ssse3")) return sh;
  int per = static_cast<int>(16 / b);
  int64_t span = (per - 1) * stride + b;
  if (span > 64) return sh;
  sh.per_chunk = per;
  sh.advance = per * stride;
  sh.loads = static_cast<int>((span + 15) / 16);
  for (int k = 0; k < sh.loads; ++k) {
    alignas(16) int8_t m[16];
    for (int o = 0; o < 16; ++o) {
      int64_t from = (o / b) * stride + o % b - 16 * k;
      m[o] = from >= 0 && from < 16 ? static_cast<int8_t>(from) : static_cast<int8_t>(0x80);
    }
    sh.mask[k] = _mm_load_si128(reinterpret_cast<const __m128i*>(m));
  }
  return sh;
}

// `chunks` times: 16 output bytes from L 16-byte loads. The masks are copied
// into locals so they live in registers: through the uint8_t* output (which
// may alias anything) the compiler would otherwise reload them from `sh`
// after every store. L is a template parameter so the loads unroll.
template <int L, bool kStream>
__attribute__((target("ssse3"))) void shuffle_chunks(const Shuffler& sh, const uint8_t* src, uint8_t* out,
                                                     int64_t chunks) {
  __m128i mask[L];
  for (int k = 0; k < L; ++k) mask[k] = sh.mask[k];
  const int64_t advance = sh.advance;
  for (int64_t c = 0; c < chunks; ++c, src += advance, out += 16) {
    __m128i v = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)), mask[0]);
    for (int k = 1; k < L; ++k)
      v = _mm_or_si128(v, _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16 * k)),
                                           mask[k]));
    if constexpr (kStream) _mm_stream_si128(reinterpret_cast<__m128i*>(out), v);
    else _mm_storeu_si128(reinterpret_cast<__m128i*>(out), v);
  }
}

template <int L>
void shuffle_chunks_to(const Shuffler& sh, const uint8_t* src, uint8_t* out, int64_t chunks, bool nt) {
  if (nt) shuffle_chunks<L, true>(sh, src, out, chunks);
  else shuffle_chunks<L, false>(sh, src, out, chunks);
}

// Packs `n` blocks starting at `src`; returns how many it did (the rest,
// near the end of the run, is left to the scalar loop so no load reads past
// the last block).
__attribute__((target("ssse3"))) int64_t shuffle_pack(const Shuffler& sh, const uint8_t* src, int64_t stride,
                                                      int64_t b, uint8_t* out, int64_t n) {
  const bool nt = sh.stream && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  // Chunk c reads [c * advance, c * advance + 16 * loads) from src, inside the run's
  // (n - 1) * stride + b bytes, and packs blocks [c * per_chunk, (c + 1) * per_chunk).
  const int64_t room = (n - 1) * stride + b - 16 * sh.loads;
  if (room < 0) return 0;
  const int64_t chunks = std::min(n / sh.per_chunk, room / sh.advance + 1);
  switch (sh.loads) {
    case 1: shuffle_chunks_to<1>(sh, src, out, chunks, nt); break;
    case 2: shuffle_chunks_to<2>(sh, src, out, chunks, nt); break;
    case 3: shuffle_chunks_to<3>(sh, src, out, chunks, nt); break;
    default: shuffle_chunks_to<4>(sh, src, out, chunks, nt); break;
  }
  return chunks * sh.per_chunk;
}
#else
struct Shuffler {
  int loads = 0;
  int per_chunk = 0;
  bool stream = false;
  bool expand = false;
  bool permute = false;
};
Shuffler make_shuffler(int64_t, int64_t) { return {}; }
Shuffler make_expander(int64_t, int64_t, int64_t) { return {}; }
int64_t shuffle_pack(const Shuffler&, const uint8_t*, int64_t, int64_t, uint8_t*, int64_t) { return 0; }
int64_t expand_unpack(const Shuffler&, uint8_t*, int64_t, int64_t, const uint8_t*, int64_t) { return 0; }
int64_t permute_unpack(const Shuffler&, uint8_t*, int64_t, int64_t, const uint8_t*, int64_t) { return 0; }
#endif

using copy::Bytes;
using copy::Fixed;
using copy::Words;
#if defined(__x86_64__)
// Streaming stores for large pack windows: the read-for-ownership they save is a third or more
// of a strided pack's memory traffic.
using copy::Stream16;
using copy::Stream8;
using copy::StreamFixed;
#endif

// Above 64 B libc memcpy wins: it issues all loads of a block before its
// stores, which avoids the 4 KiB-aliasing stalls of an interleaved word loop.
constexpr int64_t kBigBlock = 65;

int word_for(int64_t b) {
  for (int w : {16, 8, 4, 2})
    if (b % w == 0) return w;
  return 1;
}

// Streaming stores pay off (measured on AMD EPYC, 64 MiB packs) when the
// source is read densely: blocks up to 256 B covering at least half of the
// inner stride, +10-35%. With sparser reads, or bigger blocks that libc
// memcpy copies well, they cost up to half the bandwidth, so those keep
// ordinary stores.
inline bool stream_pays(int64_t b, int64_t inner_stride) {
  return b <= 256 && inner_stride > 0 && inner_stride <= 2 * b;
}

template <bool kPack, class C>
inline void move_block(const C& c, uint8_t* mem, uint8_t* stream) {
  if constexpr (kPack) c(stream, mem);
  else c(mem, stream);
}

// `run` blocks `s` bytes apart from `m`, packed to / unpacked from `stream`.
template <bool kPack, class C>
inline void inner_run(const C& c, const Shuffler& sh, uint8_t* m, int64_t s, uint8_t*& stream, int64_t run) {
  const int64_t b = c.bytes();
  if constexpr (kPack) {
    if (sh.loads > 0 && run >= 2 * sh.per_chunk) {
      int64_t done = shuffle_pack(sh, m, s, b, stream, run);
      m += done * s;
      stream += done * b;
      run -= done;
    }
  } else {
    if ((sh.expand || sh.permute) && run * s >= 128) {
      int64_t done = sh.permute ? permute_unpack(sh, m, s, b, stream, run)
                                : expand_unpack(sh, m, s, b, stream, run);
      m += done * s;
      stream += done * b;
      run -= done;
    }
  }
  for (int64_t j = 0; j < run; ++j, m += s, stream += b) move_block<kPack>(c, m, stream);
}

// Full blocks [k0, k0 + nb) of a strided layout. `base` = origin + run offset;
// `stream` points at the packed position of block k0.
template <bool kPack, class C>
void strided_blocks(const C& c, const Dim* dims, int nd, uint8_t* base, uint8_t* stream, int64_t k0,
                    int64_t nb, bool nt) {
  if (nb <= 0) return;
  const int64_t inner_stride = dims[nd - 1].stride;
  Shuffler sh = kPack ? (c.bytes() < 8 ? make_shuffler(c.bytes(), inner_stride) : Shuffler{})
                      : make_expander(c.bytes(), inner_stride, nb);
  sh.stream = nt && stream_pays(c.bytes(), inner_stride);
  if (nd == 1) {
    inner_run<kPack>(c, sh, base + k0 * dims[0].stride, dims[0].stride, stream, nb);
    return;
  }
  if (nd == 2) {
    const int64_t n1 = dims[1].count, s0 = dims[0].stride, s1 = dims[1].stride;
    int64_t i0 = k0 / n1, i1 = k0 % n1;
    while (nb > 0) {
      int64_t run = std::min(nb, n1 - i1);
      inner_run<kPack>(c, sh, base + i0 * s0 + i1 * s1, s1, stream, run);
      nb -= run;
      i1 = 0;
      ++i0;
    }
    return;
  }
  if (nd == 3) {
    const int64_t n1 = dims[1].count, n2 = dims[2].count;
    const int64_t s0 = dims[0].stride, s1 = dims[1].stride, s2 = dims[2].stride;
    int64_t i2 = k0 % n2, q = k0 / n2, i1 = q % n1, i0 = q / n1;
    while (nb > 0) {
      int64_t run = std::min(nb, n2 - i2);
      inner_run<kPack>(c, sh, base + i0 * s0 + i1 * s1 + i2 * s2, s2, stream, run);
      nb -= run;
      i2 = 0;
      if (++i1 == n1) { i1 = 0; ++i0; }
    }
    return;
  }
  // General N-D odometer, innermost dimension as the tight loop.
  int64_t idx[kMaxDims];
  int64_t q = k0;
  for (int d = nd - 1; d >= 0; --d) {
    idx[d] = q % dims[d].count;
    q /= dims[d].count;
  }
  const int last = nd - 1;
  const int64_t nl = dims[last].count, sl = dims[last].stride;
  while (nb > 0) {
    uint8_t* m = base;
    for (int d = 0; d < nd; ++d) m += idx[d] * dims[d].stride;
    int64_t run = std::min(nb, nl - idx[last]);
    inner_run<kPack>(c, sh, m, sl, stream, run);
    nb -= run;
    idx[last] = 0;
    for (int d = last - 1; d >= 0; --d) {
      if (++idx[d] < dims[d].count) break;
      idx[d] = 0;
    }
  }
}

template <bool kPack>
void strided_dispatch(const Plan& p, uint8_t* base, uint8_t* stream, int64_t k0, int64_t nb, bool nt) {
  const Layout& l = p.layout;
  const int64_t b = l.runs[0].length;
  const Dim* dims = l.dims.data();
  const int nd = static_cast<int>(l.dims.size());
#if defined(__x86_64__)
  // Unpack streams only whole, aligned cache lines: a partial line written
  // with non-temporal stores costs more than the read-for-ownership it saves.
  if (!kPack && nt && b % 64 == 0 && b <= 256 && reinterpret_cast<uintptr_t>(base) % 64 == 0) {
    bool lines = true;
    for (int d = 0; d < nd; ++d) lines = lines && dims[d].stride % 64 == 0;
    if (lines && stream_pays(b, dims[nd - 1].stride)) {
      if (b == 64) return strided_blocks<kPack>(StreamFixed<64>{}, dims, nd, base, stream, k0, nb, nt);
      return strided_blocks<kPack>(Stream16{b}, dims, nd, base, stream, k0, nb, nt);
    }
  }
  if (kPack && nt && b >= 8 && stream_pays(b, dims[nd - 1].stride)) {
    const auto at = reinterpret_cast<uintptr_t>(stream);
    if (b == 8 && at % 8 == 0) return strided_blocks<kPack>(Stream8{}, dims, nd, base, stream, k0, nb, nt);
    if (b % 16 == 0 && at % 16 == 0) {
      switch (b) {
        case 16: return strided_blocks<kPack>(StreamFixed<16>{}, dims, nd, base, stream, k0, nb, nt);
        case 32: return strided_blocks<kPack>(StreamFixed<32>{}, dims, nd, base, stream, k0, nb, nt);
        case 64: return strided_blocks<kPack>(StreamFixed<64>{}, dims, nd, base, stream, k0, nb, nt);
        default: return strided_blocks<kPack>(Stream16{b}, dims, nd, base, stream, k0, nb, nt);
      }
    }
  }
#endif
  switch (b) {
    case 1: return strided_blocks<kPack>(Fixed<1>{}, dims, nd, base, stream, k0, nb, nt);
    case 2: return strided_blocks<kPack>(Fixed<2>{}, dims, nd, base, stream, k0, nb, nt);
    case 4: return strided_blocks<kPack>(Fixed<4>{}, dims, nd, base, stream, k0, nb, nt);
    case 8: return strided_blocks<kPack>(Fixed<8>{}, dims, nd, base, stream, k0, nb, nt);
    case 16: return strided_blocks<kPack>(Fixed<16>{}, dims, nd, base, stream, k0, nb, nt);
    case 32: return strided_blocks<kPack>(Fixed<32>{}, dims, nd, base, stream, k0, nb, nt);
    case 64: return strided_blocks<kPack>(Fixed<64>{}, dims, nd, base, stream, k0, nb, nt);
    default: break;
  }
  if (b >= kBigBlock) return strided_blocks<kPack>(Bytes{b}, dims, nd, base, stream, k0, nb, nt);
  switch (word_for(b)) {
    case 16: return strided_blocks<kPack>(Words<16>{b / 16}, dims, nd, base, stream, k0, nb, nt);
    case 8: return strided_blocks<kPack>(Words<8>{b / 8}, dims, nd, base, stream, k0, nb, nt);
    case 4: return strided_blocks<kPack>(Words<4>{b / 4}, dims, nd, base, stream, k0, nb, nt);
    case 2: return strided_blocks<kPack>(Words<2>{b / 2}, dims, nd, base, stream, k0, nb, nt);
    default: return strided_blocks<kPack>(Words<1>{b}, dims, nd, base, stream, k0, nb, nt);
  }
}

// Address of block k of a strided layout.
uint8_t* block_addr(const Layout& l, uint8_t* base, int64_t k) {
  for (int d = static_cast<int>(l.dims.size()) - 1; d >= 0; --d) {
    base += (k % l.dims[d].count) * l.dims[d].stride;
    k /= l.dims[d].count;
  }
  return base;
}

inline void move_bytes(bool pack, uint8_t* mem, uint8_t* stream, int64_t n) {
  if (pack) std::memcpy(stream, mem, static_cast<size_t>(n));
  else std::memcpy(mem, stream, static_cast<size_t>(n));
}

template <bool kPack>
void strided_window(const Plan& p, uint8_t* origin, uint8_t* stream, int64_t pos, int64_t n, bool nt) {
  const Layout& l = p.layout;
  const int64_t b = l.runs[0].length;
  uint8_t* base = origin + l.runs[0].offset;
  if (l.dims.empty()) return move_bytes(kPack, base + pos, stream, n);
  int64_t k = pos / b, in = pos % b;
  if (in != 0) {  // partial head block
    int64_t m = std::min(n, b - in);
    move_bytes(kPack, block_addr(l, base, k) + in, stream, m);
    stream += m;
    n -= m;
    ++k;
  }
  int64_t full = n / b;
  strided_dispatch<kPack>(p, base, stream, k, full, nt);
#if defined(__x86_64__)
  if (nt) _mm_sfence();  // streaming stores are weakly ordered: publish them before returning
#endif
  stream += full * b;
  n -= full * b;
  if (n > 0) move_bytes(kPack, block_addr(l, base, k + full), stream, n);  // partial tail block
}

template <bool kPack>
void runs_window(const Plan& p, uint8_t* origin, uint8_t* stream, int64_t pos, int64_t n) {
  const Layout& l = p.layout;
  const int nd = static_cast<int>(l.dims.size());
  int64_t rep = pos / p.run_bytes, in = pos % p.run_bytes;
  size_t r = static_cast<size_t>(std::upper_bound(p.prefix.begin(), p.prefix.end(), in) - p.prefix.begin() - 1);
  int64_t in_run = in - p.prefix[r];
  int64_t idx[kMaxDims];
  int64_t q = rep;
  for (int d = nd - 1; d >= 0; --d) {
    idx[d] = q % l.dims[d].count;
    q /= l.dims[d].count;
  }
  while (n > 0) {
    uint8_t* base = origin;
    for (int d = 0; d < nd; ++d) base += idx[d] * l.dims[d].stride;
    for (; r < l.runs.size() && n > 0; ++r) {
      int64_t m = std::min(n, l.runs[r].length - in_run);
      move_bytes(kPack, base + l.runs[r].offset + in_run, stream, m);
      stream += m;
      n -= m;
      in_run = 0;
    }
    r = 0;
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < l.dims[d].count) break;
      idx[d] = 0;
    }
  }
}

template <bool kPack>
void window(const Plan& p, uint8_t* origin, uint8_t* stream, int64_t pos, int64_t n, bool nt = false) {
  if (n <= 0) return;
  if (p.layout.strided()) strided_window<kPack>(p, origin, stream, pos, n, nt);
  else runs_window<kPack>(p, origin, stream, pos, n);
}

// Splits the window into per-thread pieces on block (or run-pass) boundaries.
template <bool kPack>
void parallel_window(const Plan& p, uint8_t* origin, uint8_t* stream, int64_t pos, int64_t n, int threads) {
  if (threads <= 0) threads = settings::threads();
  const bool nt = n >= settings::pack_stream_min();
  if (threads <= 1 || n < settings::pack_parallel_min() || n < 2 * 4096) {
    window<kPack>(p, origin, stream, pos, n, nt);
    return;
  }
  int64_t grain = p.layout.strided() ? p.layout.runs[0].length : p.run_bytes;
  grain = std::max<int64_t>(grain, 64);
  int64_t per = (n + threads - 1) / threads;
  per = ((per + grain - 1) / grain) * grain;
  int pieces = static_cast<int>((n + per - 1) / per);
  parallel_for(pieces, [&](int i) {
    int64_t a = static_cast<int64_t>(i) * per;
    int64_t m = std::min(per, n - a);
    window<kPack>(p, origin, stream + a, pos + a, m, nt);
  });
}

}  // namespace

KernelChoice kernel_choice(const Plan& p) {
  const Layout& l = p.layout;
  if (!l.strided()) return {"runs", 0};
  int64_t b = l.runs[0].length;
  int word = b >= kBigBlock ? 0 : (b <= 64 && (b & (b - 1)) == 0 ? static_cast<int>(std::min<int64_t>(b, 16))
                                                                  : word_for(b));
  switch (l.dims.size()) {
    case 0: return {"contiguous", 0};
    case 1: return {"strided-1d", word};
    case 2: return {"strided-2d", word};
    case 3: return {"strided-3d", word};
    default: return {"strided-nd", word};
  }
}

void pack_window(const Plan& p, const uint8_t* origin, uint8_t* out, int64_t pos, int64_t n) {
  window<true>(p, const_cast<uint8_t*>(origin), out, pos, n);
}

void unpack_window(const Plan& p, uint8_t* origin, const uint8_t* in, int64_t pos, int64_t n) {
  window<false>(p, origin, const_cast<uint8_t*>(in), pos, n);
}

void pack(const Plan& p, const void* origin, void* out, int64_t pos, int64_t n, int threads) {
  check_window(p, pos, n);
  parallel_window<true>(p, const_cast<uint8_t*>(static_cast<const uint8_t*>(origin)), static_cast<uint8_t*>(out),
                        pos, n, threads);
}

void unpack(const Plan& p, void* origin, const void* in, int64_t pos, int64_t n, int threads) {
  check_window(p, pos, n);
  parallel_window<false>(p, static_cast<uint8_t*>(origin), const_cast<uint8_t*>(static_cast<const uint8_t*>(in)),
                         pos, n, threads);
}

}  // namespace hauler::dt
