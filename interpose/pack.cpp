// MPI_Pack and MPI_Unpack: the same checks, then the engine moves the bytes between the user's
// buffer and the packed one at *position, one way or the other; anything else: the library.
#include "shim.hpp"

namespace shim {

namespace {

template <typename Fwd>
int pack_common(bool pack, const void* user, int count, MPI_Datatype t, const void* packed, int size, int* position,
                Fwd fwd) {
  stats().calls++;
  TypeInfoRef info;
  if (count <= 0 || position == nullptr || packed == nullptr) return fwd();
  auto plan = choose_buf(user, count, t, &info);
  if (!plan || *position < 0 || int64_t(*position) + plan->total > int64_t(size)) return fwd();
  {
    Timer tm;
    uint8_t* at = static_cast<uint8_t*>(const_cast<void*>(packed)) + *position;
    if (pack) dt::pack(*plan, user, at, 0, plan->total);
    else dt::unpack(*plan, const_cast<void*>(user), at, 0, plan->total);
  }
  stats().mpi_pack_calls++;
  (pack ? stats().bytes_packed : stats().bytes_unpacked) += plan->total;
  *position += static_cast<int>(plan->total);
  return MPI_SUCCESS;
}

}  // namespace

int pack(const void* in, int incount, MPI_Datatype t, void* out, int outsize, int* position, MPI_Comm comm) {
  return pack_common(true, in, incount, t, out, outsize, position,
                     [&] { return PMPI_Pack(in, incount, t, out, outsize, position, comm); });
}

int unpack(const void* in, int insize, int* position, void* out, int outcount, MPI_Datatype t, MPI_Comm comm) {
  return pack_common(false, out, outcount, t, in, insize, position,
                     [&] { return PMPI_Unpack(in, insize, position, out, outcount, t, comm); });
}

}  // namespace shim
