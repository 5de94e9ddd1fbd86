#include "datatype/decode.hpp"

#include "common/status.hpp"

namespace hauler::dt {

namespace {

constexpr const char* kNames[] = {"dup",           "contiguous",     "vector",  "hvector",  "indexed",
                                  "hindexed",      "indexed_block",  "hindexed_block",      "struct",
                                  "subarray",      "darray",         "resized", "hvector_integer",
                                  "hindexed_integer", "struct_integer"};
constexpr int kCombiners = sizeof kNames / sizeof kNames[0];

// The contents a combiner reads, checked before any is read.
struct Contents {
  Combiner c;
  const std::vector<int64_t>& ints;
  const std::vector<int64_t>& addrs;
  const std::vector<TypeRef>& olds;

  void need(size_t n_ints, size_t n_addrs, size_t n_types) const {
    if (ints.size() >= n_ints && addrs.size() >= n_addrs && olds.size() >= n_types) return;
    fail(Status::invalid_argument, std::string("MPI combiner ") + combiner_name(c) + " needs " +
                                       std::to_string(n_ints) + " integers, " + std::to_string(n_addrs) +
                                       " addresses and " + std::to_string(n_types) + " types; got " +
                                       std::to_string(ints.size()) + ", " + std::to_string(addrs.size()) +
                                       " and " + std::to_string(olds.size()));
  }
  // A count read from the integers (ints[at]), which sizes what follows it.
  size_t count(size_t at) const {
    need(at + 1, 0, 0);
    if (ints[at] < 0)
      fail(Status::invalid_argument,
           std::string("MPI combiner ") + combiner_name(c) + ": negative count " + std::to_string(ints[at]));
    return static_cast<size_t>(ints[at]);
  }
  std::vector<int64_t> int_range(size_t from, size_t n) const {
    need(from + n, 0, 0);
    return std::vector<int64_t>(ints.begin() + from, ints.begin() + from + n);
  }
  std::vector<int64_t> addr_range(size_t from, size_t n) const {
    need(0, from + n, 0);
    return std::vector<int64_t>(addrs.begin() + from, addrs.begin() + from + n);
  }
  const TypeRef& old() const {
    need(0, 0, 1);
    return olds[0];
  }
};

Order order_of(int64_t v, const MpiConstants& k) {
  if (v == k.order_c) return Order::c;
  if (v == k.order_fortran) return Order::fortran;
  fail(Status::invalid_argument, "MPI order " + std::to_string(v) + " is neither MPI_ORDER_C (" +
                                     std::to_string(k.order_c) + ") nor MPI_ORDER_FORTRAN (" +
                                     std::to_string(k.order_fortran) + ")");
}

Distrib distrib_of(int64_t v, const MpiConstants& k) {
  if (v == k.distribute_block) return Distrib::block;
  if (v == k.distribute_cyclic) return Distrib::cyclic;
  if (v == k.distribute_none) return Distrib::none;
  fail(Status::invalid_argument, "MPI distribution " + std::to_string(v) +
                                     " is none of MPI_DISTRIBUTE_BLOCK, _CYCLIC, _NONE");
}

}  // namespace

const char* combiner_name(Combiner c) noexcept {
  int i = static_cast<int>(c);
  return i >= 0 && i < kCombiners ? kNames[i] : "?";
}

Combiner combiner_of(const std::string& name) {
  std::string all;
  for (int i = 0; i < kCombiners; ++i) {
    if (name == kNames[i]) return static_cast<Combiner>(i);
    all += std::string(i ? ", " : "") + kNames[i];
  }
  fail(Status::invalid_argument, "unknown MPI combiner '" + name + "' (known: " + all + ")");
}

TypeRef from_contents(Combiner c, const std::vector<int64_t>& ints, const std::vector<int64_t>& addrs,
                      const std::vector<TypeRef>& olds, const MpiConstants& k) {
  Contents x{c, ints, addrs, olds};
  switch (c) {
    case Combiner::dup: return dup(x.old());
    case Combiner::contiguous: x.need(1, 0, 1); return contiguous(ints[0], x.old());
    case Combiner::vector: x.need(3, 0, 1); return vector(ints[0], ints[1], ints[2], x.old());
    case Combiner::hvector: x.need(2, 1, 1); return hvector(ints[0], ints[1], addrs[0], x.old());
    case Combiner::hvector_integer: x.need(3, 0, 1); return hvector(ints[0], ints[1], ints[2], x.old());
    case Combiner::indexed: {
      size_t n = x.count(0);
      return indexed(x.int_range(1, n), x.int_range(1 + n, n), x.old());
    }
    case Combiner::hindexed: {
      size_t n = x.count(0);
      return hindexed(x.int_range(1, n), x.addr_range(0, n), x.old());
    }
    case Combiner::hindexed_integer: {
      size_t n = x.count(0);
      return hindexed(x.int_range(1, n), x.int_range(1 + n, n), x.old());
    }
    case Combiner::indexed_block: {
      size_t n = x.count(0);
      x.need(2, 0, 1);
      return indexed_block(ints[1], x.int_range(2, n), x.old());
    }
    case Combiner::hindexed_block: {
      size_t n = x.count(0);
      x.need(2, 0, 1);
      return hindexed_block(ints[1], x.addr_range(0, n), x.old());
    }
    case Combiner::structure: {
      size_t n = x.count(0);
      x.need(1, 0, n);
      return structure(x.int_range(1, n), x.addr_range(0, n), std::vector<TypeRef>(olds.begin(), olds.begin() + n));
    }
    case Combiner::struct_integer: {
      size_t n = x.count(0);
      x.need(1, 0, n);
      return structure(x.int_range(1, n), x.int_range(1 + n, n), std::vector<TypeRef>(olds.begin(), olds.begin() + n));
    }
    case Combiner::subarray: {
      size_t n = x.count(0);
      x.need(2 + 3 * n, 0, 1);
      return subarray(x.int_range(1, n), x.int_range(1 + n, n), x.int_range(1 + 2 * n, n),
                      order_of(ints[1 + 3 * n], k), x.old());
    }
    case Combiner::darray: {
      size_t n = x.count(2);
      x.need(4 + 4 * n, 0, 1);
      std::vector<Distrib> ds;
      std::vector<int64_t> dargs;
      for (size_t i = 0; i < n; ++i) {
        ds.push_back(distrib_of(ints[3 + n + i], k));
        int64_t a = ints[3 + 2 * n + i];
        dargs.push_back(a == k.distribute_dflt_darg ? kDefaultDarg : a);
      }
      return darray(ints[0], ints[1], x.int_range(3, n), ds, dargs, x.int_range(3 + 3 * n, n),
                    order_of(ints[3 + 4 * n], k), x.old());
    }
    case Combiner::resized: x.need(0, 2, 1); return resized(x.old(), addrs[0], addrs[1]);
  }
  fail(Status::invalid_argument, "unknown MPI combiner " + std::to_string(static_cast<int>(c)));
}

TypeRef from_named(const std::string& name, int64_t size) {
  if (!name.empty()) {
    TypeRef n = named(name);
    if (n->b.size == size) return n;
  }
  return contiguous(size, named("byte"));
}

TypeRef with_library_bounds(const TypeRef& node, int64_t size, int64_t lb, int64_t extent) {
  if (node->b.size != size)
    fail(Status::internal, "decoding the MPI datatype gave " + std::to_string(node->b.size) +
                               " bytes of data but the MPI library reports " + std::to_string(size));
  return with_bounds(node, lb, extent);
}

}  // namespace hauler::dt
