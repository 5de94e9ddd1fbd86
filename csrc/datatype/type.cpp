#include "type.hpp"

#include <algorithm>
#include <limits>
#include <sstream>

#include "../common/checked.hpp"

namespace hauler::dt {

namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
constexpr int64_t kMin = std::numeric_limits<int64_t>::min();

void require(bool ok, const std::string& msg) {
  if (!ok) fail(Status::invalid_argument, msg);
}

void require_type(const TypeRef& t, const char* ctor) {
  require(t != nullptr, std::string(ctor) + ": old type is null");
}

void require_count(int64_t v, const char* ctor, const char* what) {
  if (v < 0) fail(Status::invalid_argument, std::string(ctor) + ": " + what + " must be >= 0, got " +
                                               std::to_string(v));
}

// Offset range [lo, hi] of `n` copies `step` bytes apart, starting at 0.
void span(int64_t n, int64_t step, int64_t* lo, int64_t* hi) {
  int64_t last = mul64(n - 1, step, "displacement of the last copy");
  *lo = std::min<int64_t>(0, last);
  *hi = std::max<int64_t>(0, last);
}

// Bounds of a node from its members, per the MPI standard's definition of
// lb/ub for a type map with optional explicit markers; alignment padding
// (epsilon) is added when no explicit ub exists, as both Open MPI and MPICH do.
Bounds compute_bounds(const std::vector<Member>& members, int64_t rep_count, int64_t rep_stride) {
  Bounds out;
  int64_t nat_lb = kMax, nat_ub = kMin, mk_lb = kMax, mk_ub = kMin;
  int64_t tlb = kMax, tub = kMin;
  int64_t size = 0;
  for (const Member& m : members) {
    const Bounds& c = m.type->b;
    if (m.blocklen == 0 || rep_count == 0) continue;  // absent members neither bound nor pad
    out.align = std::max(out.align, c.align);
    int64_t blo, bhi, rlo, rhi;
    span(m.blocklen, c.extent(), &blo, &bhi);
    span(rep_count, rep_stride, &rlo, &rhi);
    int64_t omin = add64(add64(m.disp, blo, "displacement"), rlo, "displacement");
    int64_t omax = add64(add64(m.disp, bhi, "displacement"), rhi, "displacement");
    size = add64(size, mul64(mul64(m.blocklen, rep_count, "element count"), c.size, "type size"),
                 "type size");
    if (c.size > 0) {
      tlb = std::min(tlb, add64(omin, c.true_lb, "true lower bound"));
      tub = std::max(tub, add64(omax, c.true_ub, "true upper bound"));
    }
    bool has_entries = c.size > 0 || c.lb_marked || c.ub_marked;
    if (!has_entries) continue;
    int64_t lo = add64(omin, c.lb, "lower bound"), hi = add64(omax, c.ub, "upper bound");
    if (c.lb_marked) { mk_lb = std::min(mk_lb, lo); out.lb_marked = true; }
    else nat_lb = std::min(nat_lb, lo);
    if (c.ub_marked) { mk_ub = std::max(mk_ub, hi); out.ub_marked = true; }
    else nat_ub = std::max(nat_ub, hi);
  }
  out.size = size;
  if (size > 0) { out.true_lb = tlb; out.true_ub = tub; }
  out.lb = out.lb_marked ? mk_lb : (nat_lb == kMax ? 0 : nat_lb);
  if (out.ub_marked) {
    out.ub = mk_ub;
  } else {
    out.ub = nat_ub == kMin ? out.lb : nat_ub;
    int64_t ext = sub64(out.ub, out.lb, "extent");
    int64_t rem = ext % out.align;
    if (ext > 0 && rem != 0) out.ub = add64(out.ub, out.align - rem, "extent padding");
  }
  sub64(out.ub, out.lb, "extent");
  return out;
}

std::shared_ptr<Type> make(Kind k, std::vector<Member> members, int64_t rep_count = 1,
                           int64_t rep_stride = 0) {
  auto t = std::make_shared<Type>();
  t->kind = k;
  t->b = compute_bounds(members, rep_count, rep_stride);
  t->members = std::move(members);
  t->rep_count = rep_count;
  t->rep_stride = rep_stride;
  return t;
}

// A node that has exactly the layout and bounds of `inner` (subarray, darray,
// dup): it records its own constructor arguments for describe().
std::shared_ptr<Type> wrap(Kind k, TypeRef inner) {
  auto t = std::make_shared<Type>();
  t->kind = k;
  t->b = inner->b;
  t->members = {Member{0, 1, std::move(inner)}};
  return t;
}

struct NamedDef {
  const char* name;
  int64_t size, align;
};

const NamedDef kBasic[] = {
    {"byte", 1, 1},          {"char", 1, 1},          {"signed_char", 1, 1},
    {"unsigned_char", 1, 1}, {"packed", 1, 1},        {"c_bool", 1, 1},
    {"short", 2, 2},         {"unsigned_short", 2, 2}, {"int", 4, 4},
    {"unsigned", 4, 4},      {"long", 8, 8},          {"unsigned_long", 8, 8},
    {"long_long", 8, 8},     {"unsigned_long_long", 8, 8}, {"wchar", 4, 4},
    {"int8", 1, 1},          {"int16", 2, 2},         {"int32", 4, 4},
    {"int64", 8, 8},         {"uint8", 1, 1},         {"uint16", 2, 2},
    {"uint32", 4, 4},        {"uint64", 8, 8},        {"aint", 8, 8},
    {"offset", 8, 8},        {"count", 8, 8},         {"float", 4, 4},
    {"double", 8, 8},        {"long_double", 16, 16}, {"float16", 2, 2},
    {"c_float_complex", 8, 4}, {"c_double_complex", 16, 8},
    {"c_long_double_complex", 32, 16},
};

struct PairDef {
  const char* name;
  const char* first;
  int64_t second_disp;  // the int follows at this displacement
};

const PairDef kPairs[] = {
    {"float_int", "float", 4}, {"double_int", "double", 8},  {"long_int", "long", 8},
    {"2int", "int", 4},        {"short_int", "short", 4},    {"long_double_int", "long_double", 16},
};

TypeRef make_basic(const NamedDef& d) {
  auto t = std::make_shared<Type>();
  t->kind = Kind::named;
  t->name = d.name;
  t->primitive_size = d.size;
  t->b.ub = t->b.true_ub = t->b.size = d.size;
  t->b.align = d.align;
  return t;
}

}  // namespace

const char* kind_name(Kind k) noexcept {
  switch (k) {
    case Kind::named: return "named";
    case Kind::contiguous: return "contiguous";
    case Kind::vector: return "vector";
    case Kind::hvector: return "hvector";
    case Kind::indexed: return "indexed";
    case Kind::hindexed: return "hindexed";
    case Kind::indexed_block: return "indexed_block";
    case Kind::hindexed_block: return "hindexed_block";
    case Kind::structure: return "struct";
    case Kind::subarray: return "subarray";
    case Kind::darray: return "darray";
    case Kind::resized: return "resized";
    case Kind::dup: return "dup";
  }
  return "?";
}

std::vector<std::string> named_type_names() {
  std::vector<std::string> out;
  for (const auto& d : kBasic) out.push_back(d.name);
  for (const auto& p : kPairs) out.push_back(p.name);
  return out;
}

TypeRef named(const std::string& name) {
  for (const auto& d : kBasic)
    if (name == d.name) return make_basic(d);
  for (const auto& p : kPairs) {
    if (name != p.name) continue;
    TypeRef first = named(p.first);
    auto t = make(Kind::named, {Member{0, 1, first}, Member{p.second_disp, 1, named("int")}});
    t->name = p.name;
    return t;
  }
  fail(Status::invalid_argument, "unknown named type '" + name + "'");
}

TypeRef contiguous(int64_t count, TypeRef old) {
  require_type(old, "contiguous");
  require_count(count, "contiguous", "count");
  auto t = make(Kind::contiguous, {Member{0, count, old}});
  t->args = {count};
  t->arg_types = {old};
  return t;
}

static TypeRef strided(Kind k, int64_t count, int64_t blocklen, int64_t stride_bytes, TypeRef old,
                       int64_t stride_arg) {
  auto t = make(k, {Member{0, blocklen, old}}, count, stride_bytes);
  t->args = {count, blocklen, stride_arg};
  t->arg_types = {old};
  return t;
}

TypeRef vector(int64_t count, int64_t blocklen, int64_t stride, TypeRef old) {
  require_type(old, "vector");
  require_count(count, "vector", "count");
  require_count(blocklen, "vector", "blocklength");
  return strided(Kind::vector, count, blocklen, mul64(stride, old->b.extent(), "vector stride in bytes"),
                 old, stride);
}

TypeRef hvector(int64_t count, int64_t blocklen, int64_t stride_bytes, TypeRef old) {
  require_type(old, "hvector");
  require_count(count, "hvector", "count");
  require_count(blocklen, "hvector", "blocklength");
  return strided(Kind::hvector, count, blocklen, stride_bytes, old, stride_bytes);
}

static TypeRef indexed_common(Kind k, const char* ctor, const std::vector<int64_t>& blocklens,
                              const std::vector<int64_t>& disps, int64_t unit, TypeRef old) {
  require_type(old, ctor);
  require(blocklens.size() == disps.size(),
          std::string(ctor) + ": " + std::to_string(blocklens.size()) + " block lengths but " +
              std::to_string(disps.size()) + " displacements");
  std::vector<Member> members;
  members.reserve(disps.size());
  for (size_t i = 0; i < disps.size(); ++i) {
    require_count(blocklens[i], ctor, "every block length");
    members.push_back(Member{mul64(disps[i], unit, "displacement in bytes"), blocklens[i], old});
  }
  auto t = make(k, std::move(members));
  t->args = blocklens;
  t->args.insert(t->args.end(), disps.begin(), disps.end());
  t->arg_types = {old};
  return t;
}

TypeRef indexed(const std::vector<int64_t>& bl, const std::vector<int64_t>& d, TypeRef old) {
  int64_t unit = old ? old->b.extent() : 0;
  return indexed_common(Kind::indexed, "indexed", bl, d, unit, old);
}

TypeRef hindexed(const std::vector<int64_t>& bl, const std::vector<int64_t>& d, TypeRef old) {
  return indexed_common(Kind::hindexed, "hindexed", bl, d, 1, old);
}

TypeRef indexed_block(int64_t blocklen, const std::vector<int64_t>& d, TypeRef old) {
  require_count(blocklen, "indexed_block", "blocklength");
  int64_t unit = old ? old->b.extent() : 0;
  return indexed_common(Kind::indexed_block, "indexed_block",
                        std::vector<int64_t>(d.size(), blocklen), d, unit, old);
}

TypeRef hindexed_block(int64_t blocklen, const std::vector<int64_t>& d, TypeRef old) {
  require_count(blocklen, "hindexed_block", "blocklength");
  return indexed_common(Kind::hindexed_block, "hindexed_block",
                        std::vector<int64_t>(d.size(), blocklen), d, 1, old);
}

TypeRef structure(const std::vector<int64_t>& bl, const std::vector<int64_t>& d,
                  const std::vector<TypeRef>& types) {
  require(bl.size() == d.size() && d.size() == types.size(),
          "struct: " + std::to_string(bl.size()) + " block lengths, " + std::to_string(d.size()) +
              " displacements and " + std::to_string(types.size()) + " types must be equal in number");
  std::vector<Member> members;
  for (size_t i = 0; i < d.size(); ++i) {
    require(types[i] != nullptr, "struct: type " + std::to_string(i) + " is null");
    require_count(bl[i], "struct", "every block length");
    members.push_back(Member{d[i], bl[i], types[i]});
  }
  auto t = make(Kind::structure, std::move(members));
  t->args = bl;
  t->args.insert(t->args.end(), d.begin(), d.end());
  t->arg_types = types;
  return t;
}

TypeRef resized(TypeRef old, int64_t lb, int64_t extent) {
  require_type(old, "resized");
  auto t = std::make_shared<Type>();
  t->kind = Kind::resized;
  t->members = {Member{0, 1, old}};
  t->b = old->b;
  t->b.lb = lb;
  t->b.ub = add64(lb, extent, "resized upper bound");
  t->b.lb_marked = t->b.ub_marked = true;
  t->args = {lb, extent};
  t->arg_types = {old};
  return t;
}

TypeRef dup(TypeRef old) {
  require_type(old, "dup");
  auto t = wrap(Kind::dup, old);
  t->arg_types = {old};
  return t;
}

TypeRef with_bounds(TypeRef t, int64_t lb, int64_t extent) {
  require_type(t, "with_bounds");
  if (t->b.lb == lb && t->b.extent() == extent) return t;
  auto r = std::make_shared<Type>(*t);
  r->b.lb = lb;
  r->b.ub = add64(lb, extent, "upper bound");
  r->b.lb_marked = r->b.ub_marked = true;
  return r;
}

namespace {

// Places `inner` (laid out from 0) at byte displacement `disp`, keeping the
// type-map order, then forces lb 0 and the given extent: the last two steps
// of the standard's definitions of subarray and darray.
TypeRef place_and_resize(TypeRef inner, int64_t disp, int64_t extent) {
  auto placed = make(Kind::hindexed, {Member{disp, 1, std::move(inner)}});
  return resized(placed, 0, extent);
}

// Index of dimension i when walking fastest-varying first.
size_t dim_fast(size_t i, size_t n, Order order) { return order == Order::c ? n - 1 - i : i; }

}  // namespace

TypeRef subarray(const std::vector<int64_t>& sizes, const std::vector<int64_t>& subsizes,
                 const std::vector<int64_t>& starts, Order order, TypeRef old) {
  require_type(old, "subarray");
  size_t n = sizes.size();
  require(n >= 1, "subarray: ndims must be >= 1");
  require(subsizes.size() == n && starts.size() == n,
          "subarray: sizes, subsizes and starts must have the same length");
  for (size_t i = 0; i < n; ++i) {
    std::string d = " in dimension " + std::to_string(i);
    require(sizes[i] >= 1, "subarray: size must be >= 1" + d + ", got " + std::to_string(sizes[i]));
    require(subsizes[i] >= 1 && subsizes[i] <= sizes[i],
            "subarray: subsize must be in [1, size]" + d + ", got " + std::to_string(subsizes[i]));
    require(starts[i] >= 0 && starts[i] <= sizes[i] - subsizes[i],
            "subarray: start must be in [0, size - subsize]" + d + ", got " + std::to_string(starts[i]));
  }
  int64_t ext = old->b.extent();
  int64_t stride = ext, disp = 0;
  TypeRef t = old;
  for (size_t k = 0; k < n; ++k) {
    size_t i = dim_fast(k, n, order);
    t = k == 0 ? contiguous(subsizes[i], t) : hvector(subsizes[i], 1, stride, t);
    disp = add64(disp, mul64(starts[i], stride, "subarray displacement"), "subarray displacement");
    stride = mul64(stride, sizes[i], "subarray extent");
  }
  auto out = wrap(Kind::subarray, place_and_resize(t, disp, stride));
  out->args = sizes;
  out->args.insert(out->args.end(), subsizes.begin(), subsizes.end());
  out->args.insert(out->args.end(), starts.begin(), starts.end());
  out->args.push_back(order == Order::c ? 0 : 1);
  out->arg_types = {old};
  return out;
}

TypeRef darray(int64_t size, int64_t rank, const std::vector<int64_t>& gsizes,
               const std::vector<Distrib>& distribs, const std::vector<int64_t>& dargs,
               const std::vector<int64_t>& psizes, Order order, TypeRef old) {
  require_type(old, "darray");
  size_t n = gsizes.size();
  require(n >= 1, "darray: ndims must be >= 1");
  require(distribs.size() == n && dargs.size() == n && psizes.size() == n,
          "darray: gsizes, distribs, dargs and psizes must have the same length");
  require(size >= 1, "darray: size must be >= 1, got " + std::to_string(size));
  require(rank >= 0 && rank < size, "darray: rank must be in [0, size), got " + std::to_string(rank));
  int64_t nprocs = 1;
  for (size_t i = 0; i < n; ++i) {
    require(gsizes[i] >= 1 && psizes[i] >= 1, "darray: gsizes and psizes must be >= 1 (dimension " +
                                                  std::to_string(i) + ")");
    nprocs = mul64(nprocs, psizes[i], "darray process grid");
  }
  require(nprocs == size, "darray: the process grid has " + std::to_string(nprocs) +
                              " processes but size is " + std::to_string(size));
  // Process coordinates: the grid is row-major for both orders (MPI standard).
  std::vector<int64_t> coord(n);
  for (size_t i = n, r = static_cast<size_t>(rank); i-- > 0;) {
    coord[i] = static_cast<int64_t>(r) % psizes[i];
    r /= static_cast<size_t>(psizes[i]);
  }
  int64_t stride = old->b.extent(), disp = 0;
  TypeRef t = old;
  for (size_t k = 0; k < n; ++k) {
    size_t i = dim_fast(k, n, order);
    int64_t g = gsizes[i], p = psizes[i], c = coord[i], darg = dargs[i];
    std::string d = " (dimension " + std::to_string(i) + ")";
    Distrib dist = distribs[i];
    if (dist == Distrib::none) {
      require(p == 1, "darray: DISTRIBUTE_NONE needs psize 1" + d);
      dist = Distrib::block;
      darg = kDefaultDarg;
    }
    if (dist == Distrib::block) {
      int64_t b = darg == kDefaultDarg ? (g + p - 1) / p : darg;
      require(b >= 1, "darray: block size must be >= 1, got " + std::to_string(b) + d);
      require(mul64(b, p, "darray block") >= g,
              "darray: block size " + std::to_string(b) + " times psize " + std::to_string(p) +
                  " does not cover gsize " + std::to_string(g) + d);
      int64_t start = std::min(mul64(c, b, "darray start"), g);
      int64_t cnt = std::min(b, g - start);
      t = hvector(cnt, 1, stride, t);
      disp = add64(disp, mul64(start, stride, "darray displacement"), "darray displacement");
    } else {
      int64_t b = darg == kDefaultDarg ? 1 : darg;
      require(b >= 1, "darray: cyclic block size must be >= 1, got " + std::to_string(b) + d);
      int64_t period = mul64(mul64(p, b, "darray cycle"), stride, "darray cycle");
      int64_t first = mul64(c, b, "darray start");
      int64_t full = 0, rest = 0;  // full blocks of b, then a final partial block
      if (first < g) {
        int64_t cycle = p * b;
        int64_t span_elems = g - first;
        full = span_elems / cycle;
        int64_t tail = span_elems - full * cycle;
        if (tail >= b) ++full;
        else rest = tail;
      }
      TypeRef unit = resized(t, 0, stride);
      TypeRef blocks = hvector(full, b, period, unit);
      t = rest == 0 ? blocks
                    : structure({1, rest}, {0, mul64(full, period, "darray displacement")},
                                {blocks, unit});
      disp = add64(disp, mul64(std::min(first, g), stride, "darray displacement"), "darray displacement");
    }
    stride = mul64(stride, g, "darray extent");
  }
  auto out = wrap(Kind::darray, place_and_resize(t, disp, stride));
  out->args = {size, rank};
  out->args.insert(out->args.end(), gsizes.begin(), gsizes.end());
  for (Distrib x : distribs) out->args.push_back(static_cast<int64_t>(x));
  out->args.insert(out->args.end(), dargs.begin(), dargs.end());
  out->args.insert(out->args.end(), psizes.begin(), psizes.end());
  out->args.push_back(order == Order::c ? 0 : 1);
  out->arg_types = {old};
  return out;
}

namespace {
void describe_into(const TypeRef& t, int depth, std::ostringstream& os) {
  os << std::string(2 * depth, ' ') << kind_name(t->kind);
  if (!t->name.empty()) os << " " << t->name;
  if (!t->args.empty()) {
    os << "(";
    for (size_t i = 0; i < t->args.size(); ++i) os << (i ? ", " : "") << t->args[i];
    os << ")";
  }
  os << "  lb=" << t->b.lb << " extent=" << t->b.extent() << " size=" << t->b.size << "\n";
  if (t->kind == Kind::named) return;
  for (const auto& a : t->arg_types) describe_into(a, depth + 1, os);
}
}  // namespace

std::string describe_tree(const TypeRef& t) {
  std::ostringstream os;
  describe_into(t, 0, os);
  return os.str();
}

}  // namespace hauler::dt
