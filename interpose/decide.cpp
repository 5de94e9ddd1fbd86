// The pack-or-pass decision: the model (max_block/min_bytes, or the calibrated grid) that says
// whether packing a message pays and seeds each point-to-point selection (select.cpp), and
// placed(), which adds what the buffer itself decides (device memory). decide(), the part every
// call runs, is inline in shim.hpp.
#include <algorithm>

#include "shim.hpp"

namespace shim {

bool pays(const Peer& to, int64_t block, int64_t bytes) {
  const Config& g = g_config;
  if (to.comm == MPI_COMM_NULL || (g.grid[0].empty() && g.grid[1].empty()))
    return block <= g.max_block && bytes >= g.min_bytes;
  // A message to this rank itself (in an intercommunicator the rank names the other group, so
  // this can only misjudge speed, never results).
  int me = -1;
  bool self = to.rank >= 0 && PMPI_Comm_rank(to.comm, &me) == MPI_SUCCESS && me == to.rank;
  const auto& cells = g.grid[self && !g.grid[1].empty() ? 1 : g.grid[0].empty() ? 1 : 0];
  double lb = octaves(block), lm = octaves(bytes);
  // the median of the 3 nearest measured cells (in octaves): one cell a noisy machine spoiled
  // does not flip the answer
  struct Near {
    double d, speedup;
  } near[3];
  int k = 0;
  for (const auto& c : cells) {
    double d = (c.log_block - lb) * (c.log_block - lb) + (c.log_bytes - lm) * (c.log_bytes - lm);
    int at = k < 3 ? k++ : 3;
    while (at > 0 && near[at - 1].d > d) {
      if (at < 3) near[at] = near[at - 1];
      --at;
    }
    if (at < 3) near[at] = Near{d, c.speedup};
  }
  double x[3];
  for (int i = 0; i < k; ++i) x[i] = near[i].speedup;
  std::sort(x, x + k);
  return x[k / 2] > 1.0;
}

void ask(Brief& b, Brief::Asked& a, int64_t count, const Peer& to, Dir dir) {
  const TypeInfo& info = *b.info;
  a.count = count;
  a.comm = to.comm;
  a.rank = to.rank;
  a.answer = pays(to, info.mean_block, info.size * count);
  a.sel = nullptr;
  if (dir != kNoPeer && g_config.trials > 0 && to.comm != MPI_COMM_NULL)
    a.sel = b.info->select(count, locality(to), dir == kRecv, a.answer);
}

std::shared_ptr<const dt::Plan> placed(Brief* b, const void* buf, TypeInfoRef* keep, Where* where) {
  if (where) *where = Where::host;
  if (!b) return nullptr;
  const auto& plan = b->plan;
  if (buf != nullptr && device_buffer(static_cast<const uint8_t*>(buf) + plan->span_lo,
                                      static_cast<size_t>(plan->span_hi - plan->span_lo))) {
    if (where && g_config.gpu && gpu_packing_available()) {
      *where = plan->total <= g_config.gpu_oneshot_max ? Where::oneshot : Where::device;
    } else {
      g_device_buffers_to_library++;
      return nullptr;
    }
  }
  *keep = b->info;  // keeps the type alive while a request uses it
  return plan;
}

std::shared_ptr<const dt::Plan> choose_buf(const void* buf, int count, MPI_Datatype t, TypeInfoRef* keep) {
  return placed(decide(count, t, Peer(), kNoPeer).pack, buf, keep, nullptr);
}

}  // namespace shim
