// Rebuilding a type an MPI library describes (MPI_Type_get_envelope / MPI_Type_get_contents) as
// hauler's IR, with the library's own bounds. The one decoder: the shim feeds it through PMPI
// calls, Datatype.from_mpi through mpi4py. Free of MPI headers: callers map MPI_COMBINER_* to
// Combiner and pass the library's values of the order and distribution constants.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "datatype/type.hpp"

namespace hauler::dt {

// The derived-type combiners hauler rebuilds (the *_integer ones: the Fortran MPI-1 forms whose
// byte displacements come as integers). Named types go through from_named.
enum class Combiner : uint8_t {
  dup, contiguous, vector, hvector, indexed, hindexed, indexed_block, hindexed_block,
  structure, subarray, darray, resized, hvector_integer, hindexed_integer, struct_integer
};
const char* combiner_name(Combiner c) noexcept;
// By name ("vector", "struct", "hvector_integer", ...); invalid_argument naming the accepted ones.
Combiner combiner_of(const std::string& name);

// The library's values of the constants a subarray's or darray's integers carry.
struct MpiConstants {
  int64_t order_c, order_fortran;
  int64_t distribute_block, distribute_cyclic, distribute_none, distribute_dflt_darg;
};

// The node the combiner builds from its contents (integers, addresses, and the already decoded
// member types, in the order MPI_Type_get_contents gives them). Contents too short for the
// combiner, or a constant the library did not give: invalid_argument.
TypeRef from_contents(Combiner c, const std::vector<int64_t>& ints, const std::vector<int64_t>& addrs,
                      const std::vector<TypeRef>& olds, const MpiConstants& k);

// A predefined type: hauler's named type `name` when there is one of the library's size, else
// `size` bytes (a type hauler has no name for, or of another size here). name "" : no name.
TypeRef from_named(const std::string& name, int64_t size);

// `node` with the library's lb and extent (with_bounds), so that it lays out data as the library
// does; its size must be the library's (else internal: the decoding is wrong).
TypeRef with_library_bounds(const TypeRef& node, int64_t size, int64_t lb, int64_t extent);

}  // namespace hauler::dt
