// The type cache: MPI types decoded into hauler's layouts at MPI_Type_commit, and each thread's
// lock-free view of it (Brief, shim.hpp).
#include <algorithm>
#include <climits>

#include "datatype/decode.hpp"
#include "shim.hpp"

namespace shim {

std::atomic<uint64_t> g_type_cache_generation{1};
HAULER_TLS Brief* tl_type_briefs = nullptr;
HAULER_TLS unsigned tl_type_brief_victim = 0;

namespace {

std::mutex g_decoded_types_mu;
std::unordered_map<MPI_Datatype, TypeInfoRef> g_decoded_types;
std::vector<std::pair<MPI_Datatype, std::string>> g_named_types;

struct Refused {
  std::string why;
};

// The MPI combiners hauler rebuilds; F90 parameterized types (and anything newer) stay with the
// library, and so do the MPI-1 *_INTEGER forms (MPI-3.0 removed their names from mpi.h).
bool combiner_of(int mpi, dt::Combiner* out) {
  switch (mpi) {
    case MPI_COMBINER_DUP: *out = dt::Combiner::dup; return true;
    case MPI_COMBINER_CONTIGUOUS: *out = dt::Combiner::contiguous; return true;
    case MPI_COMBINER_VECTOR: *out = dt::Combiner::vector; return true;
    case MPI_COMBINER_HVECTOR: *out = dt::Combiner::hvector; return true;
    case MPI_COMBINER_INDEXED: *out = dt::Combiner::indexed; return true;
    case MPI_COMBINER_HINDEXED: *out = dt::Combiner::hindexed; return true;
    case MPI_COMBINER_INDEXED_BLOCK: *out = dt::Combiner::indexed_block; return true;
    case MPI_COMBINER_HINDEXED_BLOCK: *out = dt::Combiner::hindexed_block; return true;
    case MPI_COMBINER_STRUCT: *out = dt::Combiner::structure; return true;
    case MPI_COMBINER_SUBARRAY: *out = dt::Combiner::subarray; return true;
    case MPI_COMBINER_DARRAY: *out = dt::Combiner::darray; return true;
    case MPI_COMBINER_RESIZED: *out = dt::Combiner::resized; return true;
    default: return false;
  }
}

constexpr dt::MpiConstants kMpiConstants{MPI_ORDER_C,         MPI_ORDER_FORTRAN,       MPI_DISTRIBUTE_BLOCK,
                                         MPI_DISTRIBUTE_CYCLIC, MPI_DISTRIBUTE_NONE, MPI_DISTRIBUTE_DFLT_DARG};

// MPI_Type_size_x: a type of more than 2 GiB of data has no int size (MPI_Type_size says MPI_UNDEFINED).
int64_t type_size(MPI_Datatype t) {
  MPI_Count size = 0;
  PMPI_Type_size_x(t, &size);
  return static_cast<int64_t>(size);
}

dt::TypeRef with_library_bounds(const dt::TypeRef& node, MPI_Datatype t) {
  MPI_Aint lb = 0, extent = 0;
  PMPI_Type_get_extent(t, &lb, &extent);
  return dt::with_library_bounds(node, type_size(t), lb, extent);
}

// The envelope; false when the type was built with MPI-4 large counts (MPI_Type_vector_c, ...):
// the plain MPI_Type_get_envelope raises a (fatal) error for those, so an MPI-4 library is asked
// with MPI_Type_get_envelope_c, and such a type stays with the library.
bool envelope(MPI_Datatype t, int* ni, int* na, int* nt, int* combiner) {
#if HAULER_MPI_LARGE_COUNT
  MPI_Count ci = 0, ca = 0, cl = 0, ct = 0;
  PMPI_Type_get_envelope_c(t, &ci, &ca, &cl, &ct, combiner);
  *ni = static_cast<int>(ci);
  *na = static_cast<int>(ca);
  *nt = static_cast<int>(ct);
  return cl == 0 && ci <= INT_MAX && ca <= INT_MAX && ct <= INT_MAX;
#else
  PMPI_Type_get_envelope(t, ni, na, nt, combiner);
  return true;
#endif
}

// The envelope and contents through PMPI, the node from csrc/datatype/decode (the decoder
// Datatype.from_mpi uses too).
dt::TypeRef decode(MPI_Datatype t, int depth) {
  if (depth > 64) throw Refused{"nesting deeper than 64"};
  int ni = 0, na = 0, nt = 0, combiner = 0;
  bool small = envelope(t, &ni, &na, &nt, &combiner);
  if (combiner == MPI_COMBINER_NAMED) {
    std::string name;
    for (auto& p : g_named_types)
      if (p.first == t) {
        name = p.second;
        break;
      }
    return with_library_bounds(dt::from_named(name, type_size(t)), t);
  }
  if (!small) throw Refused{"built with MPI-4 large counts"};
  dt::Combiner c;
  if (!combiner_of(combiner, &c)) throw Refused{"combiner " + std::to_string(combiner) + " is left to the library"};
  std::vector<int> ints(ni);
  std::vector<MPI_Aint> addrs(na);
  std::vector<MPI_Datatype> types(nt);
  PMPI_Type_get_contents(t, ni, na, nt, ints.data(), addrs.data(), types.data());
  std::vector<dt::TypeRef> olds;
  bool child_refused = false;
  try {
    for (MPI_Datatype x : types) olds.push_back(decode(x, depth + 1));
  } catch (...) {
    child_refused = true;
  }
  for (MPI_Datatype x : types) {  // contents hand back new handles for derived types
    int a, b, n, comb;
    envelope(x, &a, &b, &n, &comb);
    if (comb != MPI_COMBINER_NAMED) PMPI_Type_free(&x);
  }
  if (child_refused) throw Refused{"a member type cannot be decoded"};
  std::vector<int64_t> ints64(ints.begin(), ints.end()), addrs64(addrs.begin(), addrs.end());
  return with_library_bounds(dt::from_contents(c, ints64, addrs64, olds, kMpiConstants), t);
}

TypeInfoRef lookup(MPI_Datatype t) {
  std::lock_guard<std::mutex> lk(g_decoded_types_mu);
  if (g_decoded_types.empty()) return nullptr;
  auto it = g_decoded_types.find(t);
  return it == g_decoded_types.end() ? nullptr : it->second;
}

}  // namespace

std::shared_ptr<const dt::Plan> TypeInfo::plan(int64_t count) {
  std::lock_guard<std::mutex> lk(mu);
  if (count != last_count) {
    last_plan = std::make_shared<const dt::Plan>(dt::make_plan(dt::repeat(one, count, extent)));
    last_count = count;
  }
  return last_plan;
}

void init_named_types() {
  g_named_types = {
      {MPI_BYTE, "byte"}, {MPI_CHAR, "char"}, {MPI_SIGNED_CHAR, "signed_char"},
      {MPI_UNSIGNED_CHAR, "unsigned_char"}, {MPI_PACKED, "packed"}, {MPI_C_BOOL, "c_bool"},
      {MPI_SHORT, "short"}, {MPI_UNSIGNED_SHORT, "unsigned_short"}, {MPI_INT, "int"},
      {MPI_UNSIGNED, "unsigned"}, {MPI_LONG, "long"}, {MPI_UNSIGNED_LONG, "unsigned_long"},
      {MPI_LONG_LONG, "long_long"}, {MPI_UNSIGNED_LONG_LONG, "unsigned_long_long"},
      {MPI_WCHAR, "wchar"}, {MPI_INT8_T, "int8"}, {MPI_INT16_T, "int16"}, {MPI_INT32_T, "int32"},
      {MPI_INT64_T, "int64"}, {MPI_UINT8_T, "uint8"}, {MPI_UINT16_T, "uint16"},
      {MPI_UINT32_T, "uint32"}, {MPI_UINT64_T, "uint64"}, {MPI_AINT, "aint"},
      {MPI_OFFSET, "offset"}, {MPI_COUNT, "count"}, {MPI_FLOAT, "float"}, {MPI_DOUBLE, "double"},
      {MPI_LONG_DOUBLE, "long_double"}, {MPI_C_FLOAT_COMPLEX, "c_float_complex"},
      {MPI_C_DOUBLE_COMPLEX, "c_double_complex"},
      {MPI_C_LONG_DOUBLE_COMPLEX, "c_long_double_complex"}, {MPI_FLOAT_INT, "float_int"},
      {MPI_DOUBLE_INT, "double_int"}, {MPI_LONG_INT, "long_int"}, {MPI_2INT, "2int"},
      {MPI_SHORT_INT, "short_int"}, {MPI_LONG_DOUBLE_INT, "long_double_int"},
  };
}

void commit_type(MPI_Datatype t) {
  auto info = std::make_shared<TypeInfo>();
  try {
    dt::TypeRef node = decode(t, 0);
    info->one = dt::canonical(node);
    info->size = node->b.size;
    info->extent = node->b.extent();
    int64_t nruns = static_cast<int64_t>(info->one.runs.size()) * std::max<int64_t>(1, info->one.repeats());
    info->mean_block = nruns > 0 ? info->size / nruns : 0;
    info->single_run = info->one.empty() || (info->one.strided() && info->one.dims.empty());
    info->contiguous = info->one.empty() ||
                       (info->single_run && info->one.runs[0].offset == 0 && info->one.runs[0].length == info->extent);
    stats().types_decoded++;
  } catch (const Refused& r) {
    stats().types_refused++;
    logf(kInfo, "type 0x%llx left to the library: %s", handle_bits(t), r.why.c_str());
    return;
  } catch (const std::exception& e) {
    stats().types_refused++;
    logf(kInfo, "type 0x%llx left to the library: %s", handle_bits(t), e.what());
    return;
  }
  std::lock_guard<std::mutex> lk(g_decoded_types_mu);
  g_decoded_types[t] = info;
  g_type_cache_generation.fetch_add(1, std::memory_order_release);
}

void forget_type(MPI_Datatype t) {
  std::lock_guard<std::mutex> lk(g_decoded_types_mu);
  if (g_decoded_types.erase(t)) g_type_cache_generation.fetch_add(1, std::memory_order_release);
}

Brief* new_type_briefs() {
  // owned by a thread_local that frees them at thread exit; reached through an initial-exec pointer
  struct Owner {
    std::unique_ptr<Brief[]> p;
    ~Owner() { tl_type_briefs = nullptr; }
  };
  thread_local Owner owner;  // declared here: its init guard is checked on this path only
  owner.p.reset(new Brief[(1u << kBriefSetBits) + kBriefWays - 1]);
  tl_type_briefs = owner.p.get();
  return tl_type_briefs;
}

void refill_brief(Brief& b, MPI_Datatype t, uint64_t gen) {
  b.t = t;
  b.gen = gen;
  b.info = lookup(t);
  b.plan_count = -1;
  b.plan.reset();
  for (auto& a : b.asked) a = Brief::Asked();
}

}  // namespace shim
