#include "settings.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "status.hpp"

namespace hauler::settings {

namespace {

const Spec kSpecs[] = {
#define HAULER_SETTING(id, name, type, lo, hi, dflt, choices, accepted) \
  {name, Type::type, lo, hi, dflt, choices, accepted},
#include "settings_table.h"
#undef HAULER_SETTING
};
static_assert(sizeof kSpecs / sizeof kSpecs[0] == static_cast<size_t>(Id::count), "one spec per id");

// One setting's state. `cached` and `number` are the lock-free fast path of number(); the rest
// is guarded by mu.
struct Slot {
  std::atomic<bool> cached{false};
  std::atomic<int64_t> number{0};
  std::mutex mu;
  Value value;  // an override (set()) or what the environment or the default gave
};

Slot* slots() {
  static Slot s[static_cast<int>(Id::count)];  // a function-local static: usable during static init
  return s;
}

// What C's isspace and Python's strip(" \t\n\r\f\v") remove from the ends.
bool space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string trim(const std::string& t) {
  size_t b = 0, e = t.size();
  while (b < e && space(t[b])) ++b;
  while (e > b && space(t[e - 1])) --e;
  return t.substr(b, e - b);
}

std::string lower(std::string t) {
  for (char& c : t)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return t;
}

// Index of word among the '|'-joined words, or -1.
int index_of(const char* words, const std::string& word) {
  int i = 0;
  for (const char* p = words; *p != '\0'; ++i) {
    const char* end = std::strchr(p, '|');
    size_t n = end ? static_cast<size_t>(end - p) : std::strlen(p);
    if (n == word.size() && word.compare(0, n, p, n) == 0) return i;
    p += n + (end ? 1 : 0);
  }
  return -1;
}

bool parse_number(const Spec& s, const std::string& t, int64_t* out) {
  if (t.empty()) return false;
  int64_t v = 0;
  for (char c : t) {
    if (c < '0' || c > '9') return false;
    int d = c - '0';
    if (d > s.hi || v > (s.hi - d) / 10) return false;  // v * 10 + d > hi, without overflowing
    v = v * 10 + d;
  }
  if (v < s.lo) return false;
  *out = v;
  return true;
}

bool parse_value(const Spec& s, const std::string& raw, Value* out) {
  const std::string t = trim(raw);
  Value v;
  v.is_set = true;
  switch (s.type) {
    case Type::integer:
    case Type::bytes:
      if (!parse_number(s, t, &v.number)) return false;
      v.text = std::to_string(v.number);
      break;
    case Type::boolean: {
      const std::string l = lower(t);
      if (index_of("1|true|yes|on", l) >= 0) v.number = 1;
      else if (index_of("0|false|no|off", l) >= 0) v.number = 0;
      else return false;
      v.text = v.number ? "1" : "0";
      break;
    }
    case Type::choice: {
      v.text = lower(t);
      v.number = index_of(s.choices, v.text);
      if (v.number < 0) return false;
      break;
    }
    case Type::text:
    case Type::path:
      if (t.empty()) return false;
      for (unsigned char c : t)
        if (c < 0x20 || c == 0x7f) return false;
      v.text = t;
      break;
  }
  *out = std::move(v);
  return true;
}

// The default (the spec's spelling parsed, or unset).
Value default_value(const Spec& s) {
  Value v;
  if (s.dflt != nullptr && !parse_value(s, s.dflt, &v))
    fail(Status::internal, std::string("settings table: the default of ") + s.name + " does not parse");
  return v;
}

// Under slot.mu: the value in force, cached; false with *error for an invalid environment value
// (not cached: every use reports it until it is fixed or overridden).
bool load(Id id, Slot& sl, Value* out, std::string* error) {
  if (!sl.cached.load(std::memory_order_relaxed)) {
    const Spec& s = spec(id);
    Value v;
    const char* env = std::getenv(s.name);
    if (env == nullptr || trim(env).empty()) v = default_value(s);
    else if (!parse(s, env, &v, error)) return false;
    sl.value = std::move(v);
    sl.number.store(sl.value.number, std::memory_order_relaxed);
    sl.cached.store(true, std::memory_order_release);
  }
  *out = sl.value;
  return true;
}

}  // namespace

const Spec& spec(Id id) { return kSpecs[static_cast<int>(id)]; }

const Spec* find(const std::string& name) {
  for (const Spec& s : kSpecs)
    if (name == s.name) return &s;
  return nullptr;
}

Id id(const std::string& name) {
  const Spec* s = find(name);
  if (s == nullptr) fail(Status::invalid_argument, "unknown hauler setting '" + name + "'");
  return static_cast<Id>(s - kSpecs);
}

std::string error_text(const Spec& s, const std::string& text) {
  std::string q = "'";
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
      q += static_cast<char>(c);
    } else {
      static const char hex[] = "0123456789abcdef";
      q += "\\x";
      q += hex[c >> 4];
      q += hex[c & 15];
    }
  }
  return std::string(s.name) + "=" + q + "': expected " + s.accepted;
}

bool parse(const Spec& s, const std::string& text, Value* out, std::string* error) {
  if (parse_value(s, text, out)) return true;
  if (error) *error = error_text(s, text);
  return false;
}

bool get(Id id, Value* out, std::string* error) {
  Slot& sl = slots()[static_cast<int>(id)];
  std::lock_guard<std::mutex> lk(sl.mu);
  return load(id, sl, out, error);
}

int64_t number(Id id) {
  Slot& sl = slots()[static_cast<int>(id)];
  if (sl.cached.load(std::memory_order_acquire)) return sl.number.load(std::memory_order_relaxed);
  Value v;
  std::string error;
  if (!get(id, &v, &error)) fail(Status::invalid_argument, error);
  return v.number;
}

std::string text(Id id) {
  Value v;
  std::string error;
  if (!get(id, &v, &error)) fail(Status::invalid_argument, error);
  return v.text;
}

void set(const std::string& name, const std::string& text) {
  const Id which = id(name);
  Value v;
  std::string error;
  if (!parse(spec(which), text, &v, &error)) fail(Status::invalid_argument, error);
  Slot& sl = slots()[static_cast<int>(which)];
  std::lock_guard<std::mutex> lk(sl.mu);
  sl.value = std::move(v);
  sl.number.store(sl.value.number, std::memory_order_relaxed);
  sl.cached.store(true, std::memory_order_release);
}

void reset(const std::string& name) {
  Slot& sl = slots()[static_cast<int>(id(name))];
  std::lock_guard<std::mutex> lk(sl.mu);
  sl.cached.store(false, std::memory_order_release);
}

void set_override(const std::string& name, int64_t value) {
  if (value < 0) reset(name);
  else set(name, std::to_string(value));
}

int threads() {
  int64_t t = number(Id::threads);
  return t == 0 ? static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) : static_cast<int>(t);
}

int64_t pack_parallel_min() { return number(Id::pack_parallel_min); }
int64_t pack_stream_min() { return number(Id::pack_stream_min); }

int gather_threads() {
  int64_t t = number(Id::gather_threads);
  return t == 0 ? threads() : static_cast<int>(t);
}

int64_t gather_parallel_min() { return number(Id::gather_parallel_min); }
int64_t gather_stream_min() { return number(Id::gather_stream_min); }
int64_t gather_prefetch() { return number(Id::gather_prefetch); }
int64_t gather_gpu_blocks() { return number(Id::gather_gpu_blocks); }

}  // namespace hauler::settings
