// Collectives: Alltoallv/w and their neighbour forms. Every peer piece whose type hauler packs travels as
// bytes in a staging buffer, described to the library by a one-block hindexed MPI_BYTE type
// whose 64-bit displacement reaches the staging buffer from the application's base address;
// the other pieces keep their own (count, type, displacement). The call becomes one
// Alltoallw / Neighbor_alltoallw. Each side chooses per piece; the byte counts agree with the
// type signatures, which is all homogeneous Open MPI and MPICH runs need. MPI_IN_PLACE,
// intercommunicators, Cartesian neighbourhoods (MPI_PROC_NULL neighbours) and displacements that
// do not fit the call go to the library unchanged.
#include <cstdint>

#include "shim.hpp"

namespace shim {

namespace {

struct Piece {
  int count;
  MPI_Datatype type;
  MPI_Aint disp;  // bytes from the base buffer
};

struct CollSide {
  std::vector<std::shared_ptr<const dt::Plan>> plans;
  std::vector<TypeInfoRef> keep;
  std::vector<int64_t> off;
  int64_t total = 0;
  void* stage = nullptr;
  bool any = false;
};

void coll_choose(const void* base, const std::vector<Piece>& ps, CollSide& side) {
  side.plans.resize(ps.size());
  side.keep.resize(ps.size());
  side.off.assign(ps.size(), 0);
  for (size_t i = 0; i < ps.size(); ++i) {
    side.plans[i] = choose_buf(static_cast<const uint8_t*>(base) + ps[i].disp, ps[i].count, ps[i].type, &side.keep[i]);
    if (side.plans[i] && side.plans[i]->total <= INT32_MAX) {
      side.off[i] = side.total;
      side.total += (side.plans[i]->total + 63) / 64 * 64;
      side.any = true;
    } else {
      side.plans[i] = nullptr;
    }
  }
}

// Types for a w-form call: packed pieces become a byte block in the staging buffer.
bool coll_types(const std::vector<Piece>& ps, CollSide& side, const void* base, std::vector<int>& counts,
                std::vector<MPI_Aint>& disps, std::vector<MPI_Datatype>& types, std::vector<MPI_Datatype>& made) {
  size_t n = ps.size();
  counts.resize(n);
  disps.resize(n);
  types.resize(n);
  for (size_t i = 0; i < n; ++i) {
    if (!side.plans[i]) {
      counts[i] = ps[i].count;
      disps[i] = ps[i].disp;
      types[i] = ps[i].type;
      continue;
    }
    MPI_Aint d = static_cast<MPI_Aint>(reinterpret_cast<intptr_t>(static_cast<uint8_t*>(side.stage) + side.off[i]) -
                                       reinterpret_cast<intptr_t>(base));
    MPI_Datatype t;
    if (PMPI_Type_create_hindexed_block(1, static_cast<int>(side.plans[i]->total), &d, MPI_BYTE, &t) != MPI_SUCCESS)
      return false;
    PMPI_Type_commit(&t);
    made.push_back(t);
    counts[i] = 1;
    disps[i] = 0;
    types[i] = t;
  }
  return true;
}

template <typename Fwd>
int coll_exchange(bool neighbor, MPI_Comm comm, const void* sbuf, const std::vector<Piece>& sp, void* rbuf,
                  const std::vector<Piece>& rp, Fwd forward) {
  CollSide s, r;
  coll_choose(sbuf, sp, s);
  coll_choose(rbuf, rp, r);
  if (!s.any && !r.any) {
    stats().coll_passthrough++;
    return forward();
  }
  if (!neighbor) {  // Alltoallw takes int displacements
    for (size_t i = 0; i < sp.size(); ++i)
      if (!s.plans[i] && (sp[i].disp > INT32_MAX || sp[i].disp < INT32_MIN)) { stats().coll_passthrough++; return forward(); }
    for (size_t i = 0; i < rp.size(); ++i)
      if (!r.plans[i] && (rp[i].disp > INT32_MAX || rp[i].disp < INT32_MIN)) { stats().coll_passthrough++; return forward(); }
  }
  s.stage = s.total ? buf_get(s.total) : nullptr;
  r.stage = r.total ? buf_get(r.total) : nullptr;
  if ((s.total && !s.stage) || (r.total && !r.stage)) {
    buf_put(s.stage, s.total);
    buf_put(r.stage, r.total);
    stats().coll_passthrough++;
    return forward();
  }
  {
    Timer tm;
    for (size_t i = 0; i < sp.size(); ++i)
      if (s.plans[i]) {
        dt::pack(*s.plans[i], static_cast<const uint8_t*>(sbuf) + sp[i].disp, static_cast<uint8_t*>(s.stage) + s.off[i],
                 0, s.plans[i]->total);
        stats().bytes_packed += s.plans[i]->total;
      }
  }
  std::vector<int> sc, rc;
  std::vector<MPI_Aint> sd, rd;
  std::vector<MPI_Datatype> stp, rtp, made;
  int rc_ = MPI_ERR_INTERN;
  if (coll_types(sp, s, sbuf, sc, sd, stp, made) && coll_types(rp, r, rbuf, rc, rd, rtp, made)) {
    if (neighbor) {
      rc_ = PMPI_Neighbor_alltoallw(sbuf, sc.data(), sd.data(), stp.data(), rbuf, rc.data(), rd.data(), rtp.data(), comm);
    } else {
      std::vector<int> sdi(sd.begin(), sd.end()), rdi(rd.begin(), rd.end());
      rc_ = PMPI_Alltoallw(sbuf, sc.data(), sdi.data(), stp.data(), rbuf, rc.data(), rdi.data(), rtp.data(), comm);
    }
    if (rc_ == MPI_SUCCESS) {
      Timer tm;
      for (size_t i = 0; i < rp.size(); ++i)
        if (r.plans[i]) {
          dt::unpack(*r.plans[i], static_cast<uint8_t*>(rbuf) + rp[i].disp, static_cast<uint8_t*>(r.stage) + r.off[i], 0,
                     r.plans[i]->total);
          stats().bytes_unpacked += r.plans[i]->total;
        }
    }
    stats().coll_packed++;
  } else {
    rc_ = forward();
    stats().coll_passthrough++;
  }
  for (MPI_Datatype& t : made) PMPI_Type_free(&t);
  buf_put(s.stage, s.total);
  buf_put(r.stage, r.total);
  return rc_;
}

bool plain_intracomm(MPI_Comm comm) {
  int inter = 0;
  if (PMPI_Comm_test_inter(comm, &inter) != MPI_SUCCESS) return false;
  return !inter;
}

// In- and out-degree of a graph or distributed-graph communicator; false otherwise.
bool neighbours(MPI_Comm comm, int* indeg, int* outdeg) {
  int topo = MPI_UNDEFINED;
  if (PMPI_Topo_test(comm, &topo) != MPI_SUCCESS) return false;
  if (topo == MPI_DIST_GRAPH) {
    int w = 0;
    return PMPI_Dist_graph_neighbors_count(comm, indeg, outdeg, &w) == MPI_SUCCESS;
  }
  if (topo == MPI_GRAPH) {
    int rank = 0, n = 0;
    PMPI_Comm_rank(comm, &rank);
    if (PMPI_Graph_neighbors_count(comm, rank, &n) != MPI_SUCCESS) return false;
    *indeg = *outdeg = n;
    return true;
  }
  return false;  // Cartesian: MPI_PROC_NULL neighbours; left to the library
}

MPI_Aint extent_of(MPI_Datatype t) {
  MPI_Aint lb = 0, ext = 0;
  PMPI_Type_get_extent(t, &lb, &ext);
  return ext;
}

// Whether the shim handles this (neighbour) all-to-all, and with how many
// peers it sends to and receives from; false: hand it to the library as is.
bool coll_peers(const void* sbuf, MPI_Comm comm, bool neighbor, int* ns, int* nr) {
  if (!g_config.coll || sbuf == MPI_IN_PLACE || !plain_intracomm(comm)) return false;
  if (neighbor) return neighbours(comm, nr, ns);
  if (PMPI_Comm_size(comm, ns) != MPI_SUCCESS) return false;
  *nr = *ns;
  return true;
}

// The v and w forms differ only in how a peer's (count, type, displacement) is read.
template <typename Fwd, typename Pieces>
int alltoall_common(const void* sbuf, void* rbuf, MPI_Comm comm, bool neighbor, Fwd fwd, Pieces pieces) {
  stats().calls++;
  int ns = 0, nr = 0;
  if (!coll_peers(sbuf, comm, neighbor, &ns, &nr)) {
    stats().coll_passthrough++;
    return fwd();
  }
  std::vector<Piece> sp(ns), rp(nr);
  pieces(sp, rp);
  return coll_exchange(neighbor, comm, sbuf, sp, rbuf, rp, fwd);
}

}  // namespace

int alltoallv(const void* sbuf, const int* scounts, const int* sdispls, MPI_Datatype stype, void* rbuf,
              const int* rcounts, const int* rdispls, MPI_Datatype rtype, MPI_Comm comm, bool neighbor) {
  auto fwd = [&]() {
    return neighbor ? PMPI_Neighbor_alltoallv(sbuf, scounts, sdispls, stype, rbuf, rcounts, rdispls, rtype, comm)
                    : PMPI_Alltoallv(sbuf, scounts, sdispls, stype, rbuf, rcounts, rdispls, rtype, comm);
  };
  return alltoall_common(sbuf, rbuf, comm, neighbor, fwd, [&](std::vector<Piece>& sp, std::vector<Piece>& rp) {
    MPI_Aint se = extent_of(stype), re = extent_of(rtype);
    for (size_t i = 0; i < sp.size(); ++i) sp[i] = Piece{scounts[i], stype, static_cast<MPI_Aint>(sdispls[i]) * se};
    for (size_t i = 0; i < rp.size(); ++i) rp[i] = Piece{rcounts[i], rtype, static_cast<MPI_Aint>(rdispls[i]) * re};
  });
}

int alltoallw(const void* sbuf, const int* scounts, const MPI_Aint* sdA, const int* sdI, const MPI_Datatype* stypes,
              void* rbuf, const int* rcounts, const MPI_Aint* rdA, const int* rdI, const MPI_Datatype* rtypes,
              MPI_Comm comm, bool neighbor) {
  auto fwd = [&]() {
    return neighbor ? PMPI_Neighbor_alltoallw(sbuf, scounts, sdA, stypes, rbuf, rcounts, rdA, rtypes, comm)
                    : PMPI_Alltoallw(sbuf, scounts, sdI, stypes, rbuf, rcounts, rdI, rtypes, comm);
  };
  auto disp = [&](const MPI_Aint* a, const int* i, size_t k) { return neighbor ? a[k] : static_cast<MPI_Aint>(i[k]); };
  return alltoall_common(sbuf, rbuf, comm, neighbor, fwd, [&](std::vector<Piece>& sp, std::vector<Piece>& rp) {
    for (size_t i = 0; i < sp.size(); ++i) sp[i] = Piece{scounts[i], stypes[i], disp(sdA, sdI, i)};
    for (size_t i = 0; i < rp.size(); ++i) rp[i] = Piece{rcounts[i], rtypes[i], disp(rdA, rdI, i)};
  });
}

}  // namespace shim
