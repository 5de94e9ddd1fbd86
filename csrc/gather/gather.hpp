// Row gather and scatter over row-major tables in host memory (ordinary,
// shared or memory-mapped: the core sees addresses only).
//
//   gather:  out[i]        = table[index[i]]   for i in [0, n)
//   scatter: table[index[i]] = src[i]          (assign: the LAST position i
//            naming a row wins, as a sequential loop in index order would)
//            table[index[i]] += src[i]         (add: every position adds, each
//            row in index order, so results equal numpy.add.at bit for bit)
//
// Every index is checked before any byte is written: a negative or too-large
// index throws Status::out_of_range naming its position and value.
//
// A table is `rows` rows of `row_bytes` bytes, `row_stride` bytes apart
// (>= row_bytes); `out`/`src` hold n rows back to back. Rows may sit at any
// alignment. Large calls split the index range over the thread pool.
//
// Tables on NVMe (the I/O engine) will plug in above this layer: a backend
// reads the needed blocks into a staging table and gathers from there.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hauler::gather {

struct Table {
  uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t row_bytes = 0;
  int64_t row_stride = 0;
};

struct Index {
  const void* data = nullptr;
  int64_t n = 0;
  int width = 8;  // bytes per index: 4 (int32) or 8 (int64)
  int64_t at(int64_t i) const {
    return width == 4 ? static_cast<const int32_t*>(data)[i] : static_cast<const int64_t*>(data)[i];
  }
};

// What one pass over the index found (check_index fills it).
struct IndexInfo {
  bool sorted = true;       // non-decreasing
  bool consecutive = true;  // index[i + 1] == index[i] + 1 throughout (a slice)
};

struct Options {
  int threads = 0;      // <= 0: HAULER_GATHER_THREADS (else HAULER_THREADS, else cores)
  int stream = -1;      // non-temporal stores: 1 on, 0 off, -1 by HAULER_GATHER_STREAM_MIN
  int prefetch = -1;    // bytes of rows ahead (2..64 rows; 0 none); -1: HAULER_GATHER_PREFETCH
};

enum class Reduce { assign, add };
// Element types scatter(add) understands.
enum class Elem { f32, f64, i32, i64, u8, i8, i16, u16, u32, u64 };
Elem elem_of(const std::string& numpy_char_code);  // "f4", "f8", "i4", ... ; throws invalid_argument

// Throws out_of_range ("index[pos] = value is out of range for a table of
// rows rows" / "... is negative") at the first bad position; else fills info.
// Long index arrays are checked by `threads` threads (the pool).
void check_index(const Index& idx, int64_t rows, IndexInfo* info = nullptr, int threads = 1);
// Width must be 4 or 8 and the table well formed; throws invalid_argument.
void check_table(const Table& t);

void gather(const Table& t, const Index& idx, uint8_t* out, const Options& o = {});
void scatter(const Table& t, const Index& idx, const uint8_t* src, Reduce r, Elem e, const Options& o = {});

// winners[i] = 1 when position i is the last one naming its row (indices
// valid for `rows`); *any_dup says whether any position lost.
std::vector<uint8_t> last_writers(const Index& idx, int64_t rows, bool* any_dup);

// The copy the host gather picks for a row size (for benchmarks, describe()).
const char* copy_kind(int64_t row_bytes, bool stream);

}  // namespace hauler::gather
