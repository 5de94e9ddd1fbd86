/* 3D halo exchange: every rank swaps faces, edges and corners (26 subarray neighbours) with
 * its periodic Cartesian neighbours through Isend/Irecv/Waitall, then writes its whole array.
 *
 *   mpiexec -n 2..4 halo OUTPREFIX N ITERATIONS [pcontrol]
 *
 * pcontrol: between each round's receives and sends the program calls MPI_Pcontrol, 0 on odd
 * rounds and 1 on even ones, so messages cross the shim's pause in both directions. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int n = argc > 2 ? atoi(argv[2]) : 6, iters = argc > 3 ? atoi(argv[3]) : 2;
  int pcontrol = argc > 4 && strcmp(argv[4], "pcontrol") == 0;
  int dims[3] = {0, 0, 0}, periods[3] = {1, 1, 1}, coords[3];
  MPI_Dims_create(size, 3, dims);
  MPI_Comm cart;
  MPI_Cart_create(MPI_COMM_WORLD, 3, dims, periods, 0, &cart);
  MPI_Cart_coords(cart, rank, 3, coords);
  int g = n + 2, full[3] = {g, g, g};
  size_t cells = (size_t)g * g * g;
  double *a = malloc(cells * sizeof(double));
  for (size_t i = 0; i < cells; ++i) a[i] = -1.0;
  for (int x = 1; x <= n; ++x)
    for (int y = 1; y <= n; ++y)
      for (int z = 1; z <= n; ++z) a[((size_t)x * g + y) * g + z] = rank * 1e6 + x * 1e4 + y * 100 + z;
  MPI_Datatype st[26], rt[26];
  int peer_to[26], peer_from[26], k = 0;
  for (int dx = -1; dx <= 1; ++dx)
    for (int dy = -1; dy <= 1; ++dy)
      for (int dz = -1; dz <= 1; ++dz) {
        if (!dx && !dy && !dz) continue;
        int d[3] = {dx, dy, dz}, sub[3], ss[3], rs[3], c[3];
        for (int i = 0; i < 3; ++i) {
          sub[i] = d[i] == 0 ? n : 1;
          ss[i] = d[i] == -1 ? 1 : d[i] == 0 ? 1 : n;
          rs[i] = d[i] == 1 ? 0 : d[i] == 0 ? 1 : n + 1;
        }
        MPI_Type_create_subarray(3, full, sub, ss, MPI_ORDER_C, MPI_DOUBLE, &st[k]);
        MPI_Type_create_subarray(3, full, sub, rs, MPI_ORDER_C, MPI_DOUBLE, &rt[k]);
        MPI_Type_commit(&st[k]);
        MPI_Type_commit(&rt[k]);
        for (int i = 0; i < 3; ++i) c[i] = coords[i] + d[i];
        MPI_Cart_rank(cart, c, &peer_to[k]);
        for (int i = 0; i < 3; ++i) c[i] = coords[i] - d[i];
        MPI_Cart_rank(cart, c, &peer_from[k]);
        ++k;
      }
  for (int it = 0; it < iters; ++it) {
    MPI_Request rq[52];
    for (int i = 0; i < 26; ++i) MPI_Irecv(a, 1, rt[i], peer_from[i], i, cart, &rq[i]);
    if (pcontrol) MPI_Pcontrol(it % 2 == 0);
    for (int i = 0; i < 26; ++i) MPI_Isend(a, 1, st[i], peer_to[i], i, cart, &rq[26 + i]);
    MPI_Waitall(52, rq, MPI_STATUSES_IGNORE);
    for (int x = 1; x <= n; ++x) a[((size_t)x * g + 1) * g + 1] += 0.25; /* change between rounds */
  }
  char path[4096];
  snprintf(path, sizeof path, "%s.%d", argv[1], rank);
  FILE *f = fopen(path, "wb");
  fwrite(a, sizeof(double), cells, f);
  fclose(f);
  for (int i = 0; i < 26; ++i) { MPI_Type_free(&st[i]); MPI_Type_free(&rt[i]); }
  MPI_Comm_free(&cart);
  free(a);
  MPI_Finalize();
  return 0;
}
