// The datatype IR: one node per MPI type constructor, with lower bound,
// extent, true bounds and size computed as the MPI standard defines them
// (explicit lb/ub markers from resized, subarray and darray are "sticky":
// they dominate the bounds of every enclosing type).
//
// A node's type map is `rep_count` copies, `rep_stride` bytes apart, of its
// member list; a member is `blocklen` consecutive copies of a child type
// (child-extent apart) at byte displacement `disp`. Every constructor reduces
// to that shape, so canonicalization (layout.hpp) only needs one recursion.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace hauler::dt {

enum class Kind : uint8_t {
  named, contiguous, vector, hvector, indexed, hindexed, indexed_block, hindexed_block,
  structure, subarray, darray, resized, dup
};
const char* kind_name(Kind k) noexcept;

enum class Order : uint8_t { c, fortran };
enum class Distrib : uint8_t { none, block, cyclic };
constexpr int64_t kDefaultDarg = -1;  // MPI_DISTRIBUTE_DFLT_DARG

struct Type;
using TypeRef = std::shared_ptr<const Type>;

struct Member {
  int64_t disp;      // bytes
  int64_t blocklen;  // consecutive copies of `type`, extent(type) apart
  TypeRef type;
};

struct Bounds {
  int64_t lb = 0, ub = 0;            // with markers and alignment padding
  int64_t true_lb = 0, true_ub = 0;  // of the data alone
  int64_t size = 0;                  // bytes of data in one element
  int64_t align = 1;                 // strictest alignment of any basic member
  bool lb_marked = false, ub_marked = false;
  int64_t extent() const { return ub - lb; }
  int64_t true_extent() const { return true_ub - true_lb; }
};

struct Type {
  Kind kind = Kind::named;
  std::string name;                // named types only
  int64_t primitive_size = 0;      // >0: a basic type of that many bytes, no members
  std::vector<int64_t> args;       // integer arguments as given (for describe and envelope)
  std::vector<TypeRef> arg_types;  // type arguments as given
  std::vector<Member> members;
  int64_t rep_count = 1;
  int64_t rep_stride = 0;
  Bounds b;
};

// Named types: "byte", "char", "int8", ..., "double", "long_double",
// "c_float_complex", pair types "float_int", "double_int", "long_int",
// "2int", "short_int", "long_double_int". Unknown name: invalid_argument.
TypeRef named(const std::string& name);
std::vector<std::string> named_type_names();

TypeRef contiguous(int64_t count, TypeRef old);
TypeRef vector(int64_t count, int64_t blocklen, int64_t stride, TypeRef old);
TypeRef hvector(int64_t count, int64_t blocklen, int64_t stride_bytes, TypeRef old);
TypeRef indexed(const std::vector<int64_t>& blocklens, const std::vector<int64_t>& disps, TypeRef old);
TypeRef hindexed(const std::vector<int64_t>& blocklens, const std::vector<int64_t>& disps_bytes,
                 TypeRef old);
TypeRef indexed_block(int64_t blocklen, const std::vector<int64_t>& disps, TypeRef old);
TypeRef hindexed_block(int64_t blocklen, const std::vector<int64_t>& disps_bytes, TypeRef old);
TypeRef structure(const std::vector<int64_t>& blocklens, const std::vector<int64_t>& disps_bytes,
                  const std::vector<TypeRef>& types);
TypeRef subarray(const std::vector<int64_t>& sizes, const std::vector<int64_t>& subsizes,
                 const std::vector<int64_t>& starts, Order order, TypeRef old);
TypeRef darray(int64_t size, int64_t rank, const std::vector<int64_t>& gsizes,
               const std::vector<Distrib>& distribs, const std::vector<int64_t>& dargs,
               const std::vector<int64_t>& psizes, Order order, TypeRef old);
TypeRef resized(TypeRef old, int64_t lb, int64_t extent);
TypeRef dup(TypeRef old);

// A copy of `t` whose lb and extent are forced to the given values (markers
// set), keeping its layout. Used when decoding a type from an MPI library,
// so that hauler lays out data exactly as that library does even where the
// library departs from the standard.
TypeRef with_bounds(TypeRef t, int64_t lb, int64_t extent);

// One line per node, indented, naming the constructor and its arguments.
std::string describe_tree(const TypeRef& t);

}  // namespace hauler::dt
