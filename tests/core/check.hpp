// The pass/fail counters and CHECK of the core tests whose checks are bool functions: CHECK prints
// the failed condition's message and returns false from the enclosing function.
#pragma once
#include <cstdio>

static int g_pass = 0, g_fail = 0;
#define CHECK(cond, ...)                               \
  do {                                                 \
    if (!(cond)) {                                     \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                        \
      std::printf("\n");                               \
      ++g_fail;                                        \
      return false;                                    \
    }                                                  \
  } while (0)
