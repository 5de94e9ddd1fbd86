// A small persistent thread pool for splitting one large copy into ranges.
// Workers are started on first use and live for the process; a call blocks
// until every range is done, and the caller runs one range itself.
#pragma once
#include <cstdint>
#include <functional>

namespace hauler {

// Runs fn(i) for i in [0, n) on up to n threads (the caller included).
// Exceptions thrown by fn are rethrown in the caller (the first one).
void parallel_for(int n, const std::function<void(int)>& fn);

// Number of worker threads the pool may use: HAULER_THREADS, else cores.
int default_threads();

}  // namespace hauler
