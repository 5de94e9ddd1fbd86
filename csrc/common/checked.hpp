// 64-bit arithmetic that fails with Status::overflow instead of wrapping.
// Every size, displacement and stride in the core goes through these.
#pragma once
#include <cstdint>
#include <string>

#include "status.hpp"

namespace hauler {

inline int64_t add64(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r))
    fail(Status::overflow, std::string(what) + ": " + std::to_string(a) + " + " + std::to_string(b) +
                               " overflows 64 bits");
  return r;
}

inline int64_t sub64(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_sub_overflow(a, b, &r))
    fail(Status::overflow, std::string(what) + ": " + std::to_string(a) + " - " + std::to_string(b) +
                               " overflows 64 bits");
  return r;
}

inline int64_t mul64(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r))
    fail(Status::overflow, std::string(what) + ": " + std::to_string(a) + " * " + std::to_string(b) +
                               " overflows 64 bits");
  return r;
}

}  // namespace hauler
