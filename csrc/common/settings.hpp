// Run-time settings read by the C++ core and the MPI shim. runtime/config.py holds the one table
// (name, type, default, accepted range, doc); settings_table.h is generated from it, and parse()
// applies exactly the rules of config.parse(), so Python, the core and the shim accept and refuse
// the same values with the same message.
//
// Each setting is read once (the override set through set(), else its environment variable, else
// the default) and cached until set() or reset() changes it: use sites never call getenv per call,
// and hauler.config.set reaches the core through set() instead of through the environment.
#pragma once
#include <cstdint>
#include <string>

namespace hauler::settings {

enum class Type { integer, bytes, boolean, choice, text, path };

enum class Id : int {
#define HAULER_SETTING(id, ...) id,
#include "settings_table.h"
#undef HAULER_SETTING
  count
};

struct Spec {
  const char* name;
  Type type;
  int64_t lo, hi;        // integer, bytes: the accepted range
  const char* dflt;      // the default's spelling; nullptr: unset
  const char* choices;   // choice: the accepted words, joined by '|'
  const char* accepted;  // what an error message says is expected
};

const Spec& spec(Id id);
const Spec* find(const std::string& name);  // nullptr for a name not in the table
Id id(const std::string& name);             // invalid_argument for a name not in the table

// A parsed value. number: integer/bytes; boolean 0 or 1; choice: the index in choices.
// text: the canonical spelling (digits, 1/0, the lower-case choice, the trimmed text); is_set is
// false for an unset text/path setting.
struct Value {
  int64_t number = 0;
  std::string text;
  bool is_set = false;
};

// The message for an invalid value: "NAME='value': expected <accepted>".
std::string error_text(const Spec& s, const std::string& text);
// Strict parse; false with *error = error_text(...) when text is not a value of s.
bool parse(const Spec& s, const std::string& text, Value* out, std::string* error);

// The value in force. number() and text() throw invalid_argument with error_text() when the
// environment holds an invalid value; get() reports it through *error instead (the shim).
int64_t number(Id id);
std::string text(Id id);  // "" when unset
bool get(Id id, Value* out, std::string* error);

// Run-time override by HAULER_* name (validated: invalid_argument with error_text()), and its
// removal (the environment variable or the default applies again at the next use).
void set(const std::string& name, const std::string& text);
void reset(const std::string& name);

// HAULER_THREADS: threads for large copies; 0 = core count.
int threads();
// HAULER_PACK_PARALLEL_MIN: windows below this many bytes run single-threaded.
int64_t pack_parallel_min();
// HAULER_PACK_STREAM_MIN: pack/unpack windows of at least this many bytes
// may write with non-temporal (cache-bypassing) stores.
int64_t pack_stream_min();

// HAULER_GATHER_THREADS: threads for host gather/scatter; 0 = threads().
int gather_threads();
// HAULER_GATHER_PARALLEL_MIN: gathers/scatters moving fewer bytes run on the caller.
int64_t gather_parallel_min();
// HAULER_GATHER_STREAM_MIN: gathers writing at least this many bytes use
// non-temporal stores (rows of a multiple of 16 bytes, 16-byte aligned output).
int64_t gather_stream_min();
// HAULER_GATHER_PREFETCH: bytes of rows the host gather prefetches ahead
// (turned into 2..64 rows; 0 = none).
int64_t gather_prefetch();
// HAULER_GATHER_GPU_BLOCKS: cap on thread blocks of the GPU gather kernel
// (0 = 2 per multiprocessor); a small cap leaves the GPU to training kernels.
int64_t gather_gpu_blocks();

// Integer override for tests and the shim: set(name, value), or reset(name) when value < 0.
void set_override(const std::string& name, int64_t value);

}  // namespace hauler::settings
