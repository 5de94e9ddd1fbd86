/* Types the shim decodes (darray in both orders and every distribution, subarray, resized,
   struct, nested dup), each packed by MPI_Pack through the shim and again with the shim paused
   (MPI_Pcontrol(0): the library's own MPI_Pack). One line per type and count to OUTPREFIX.<rank>:
   whether the two agree.

       mpiexec -n 1 decode OUTPREFIX */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ORIGIN 256 /* where each type's origin sits in the source: room for negative bounds */

static FILE* out;
static int nlines;

static void check(const char* name, MPI_Datatype t) {
  MPI_Type_commit(&t);
  MPI_Aint lb, extent;
  MPI_Type_get_extent(t, &lb, &extent);
  for (int count = 1; count <= 3; count += 2) {
    size_t n = 2 * ORIGIN + (size_t)count * (size_t)(extent < 0 ? -extent : extent) + 4096;
    unsigned char* src = malloc(n);
    for (size_t i = 0; i < n; ++i) src[i] = (unsigned char)(i * 7 % 251);
    int size = 0;
    MPI_Pack_size(count, t, MPI_COMM_WORLD, &size);
    unsigned char* a = calloc(size + 1, 1);
    unsigned char* b = calloc(size + 1, 1);
    int pa = 0, pb = 0;
    MPI_Pack(src + ORIGIN, count, t, a, size, &pa, MPI_COMM_WORLD);
    MPI_Pcontrol(0);
    MPI_Pack(src + ORIGIN, count, t, b, size, &pb, MPI_COMM_WORLD);
    MPI_Pcontrol(1);
    fprintf(out, "%s x%d: %d bytes shim=%s\n", name, count, pb, pa == pb && memcmp(a, b, pb) == 0 ? "same" : "DIFFERS");
    nlines++;
    free(src), free(a), free(b);
  }
  MPI_Type_free(&t);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  char path[4096];
  snprintf(path, sizeof path, "%s.%d", argv[1], rank);
  out = fopen(path, "w");
  const int gsizes[2] = {7, 6};
  const struct {
    int dist[2], darg[2], psize[2];
  } grids[] = {
      {{MPI_DISTRIBUTE_BLOCK, MPI_DISTRIBUTE_BLOCK}, {MPI_DISTRIBUTE_DFLT_DARG, MPI_DISTRIBUTE_DFLT_DARG}, {2, 2}},
      {{MPI_DISTRIBUTE_CYCLIC, MPI_DISTRIBUTE_NONE}, {MPI_DISTRIBUTE_DFLT_DARG, MPI_DISTRIBUTE_DFLT_DARG}, {3, 1}},
      {{MPI_DISTRIBUTE_CYCLIC, MPI_DISTRIBUTE_BLOCK}, {2, 3}, {2, 2}},
      {{MPI_DISTRIBUTE_BLOCK, MPI_DISTRIBUTE_CYCLIC}, {4, 1}, {2, 3}},
  };
  const int orders[2] = {MPI_ORDER_C, MPI_ORDER_FORTRAN};
  char name[128];
  MPI_Datatype t, u, v;
  for (int o = 0; o < 2; ++o) {
    for (int g = 0; g < 4; ++g) {
      int np = grids[g].psize[0] * grids[g].psize[1];
      for (int r = 0; r < np; ++r) {
        MPI_Type_create_darray(np, r, 2, gsizes, grids[g].dist, grids[g].darg, grids[g].psize, orders[o], MPI_DOUBLE,
                               &t);
        snprintf(name, sizeof name, "darray-%c-grid%d-r%d", o ? 'F' : 'C', g, r);
        check(name, t);
      }
    }
    const int sizes[3] = {6, 7, 3}, subsizes[3] = {2, 3, 2}, starts[3] = {1, 2, 1};
    MPI_Type_create_subarray(3, sizes, subsizes, starts, orders[o], MPI_DOUBLE, &t);
    check(o ? "subarray-F" : "subarray-C", t);
  }
  MPI_Type_vector(3, 1, 4, MPI_INT, &u);
  MPI_Type_create_resized(u, -8, 64, &t);
  MPI_Type_free(&u);
  check("resized", t);
  MPI_Type_vector(2, 1, 3, MPI_DOUBLE, &u);
  {
    int bl[3] = {1, 2, 3};
    MPI_Aint d[3] = {0, 16, 48};
    MPI_Datatype ts[3] = {MPI_CHAR, u, MPI_INT};
    MPI_Type_create_struct(3, bl, d, ts, &t);
  }
  MPI_Type_free(&u);
  check("struct", t);
  MPI_Type_create_hvector(3, 2, 40, MPI_DOUBLE, &u);
  MPI_Type_dup(u, &v);
  MPI_Type_dup(v, &t);
  MPI_Type_free(&u);
  MPI_Type_free(&v);
  check("nested-dup", t);
  MPI_Type_create_resized(MPI_INT, -4, 12, &u);
  {
    int bl[2] = {2, 1}, d[2] = {0, 5};
    MPI_Type_indexed(2, bl, d, u, &t);
  }
  MPI_Type_free(&u);
  check("indexed-of-resized", t);
  fprintf(out, "lines %d\n", nlines);
  fclose(out);
  MPI_Finalize();
  return 0;
}
