/* MPI-4 large-count datatypes and calls (MPICH 4): a vector built with MPI_Type_vector_c (whose
 * envelope only MPI_Type_get_envelope_c may query), sent with the plain calls and with the _c
 * calls; a plain vector sent with MPI_Send_c / MPI_Isend_c / MPI_Recv_c / MPI_Irecv_c /
 * MPI_Sendrecv_c, packed with MPI_Pack_c / MPI_Unpack_c. Each rank writes what it received to
 * <prefix>.<rank>; with and without the shim the files must be byte-identical. Under an MPI
 * without the _c calls (MPI_VERSION < 4) the same messages go through the plain calls.
 *
 * usage: largecount <prefix> */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#define NB 96
#define STRIDE 3
#define CAP (2 * NB * STRIDE)

static int rank, nprocs, right, left;
static FILE *out;
static double s[CAP], r[CAP], u[CAP]; /* send, receive, unpack buffers */
static char packed[CAP * sizeof(double)];

static void fill(double *b, int seed) {
  for (int i = 0; i < CAP; ++i) b[i] = rank * 1e6 + seed * 1e3 + i;
}
static void poison(double *b) {
  for (int i = 0; i < CAP; ++i) b[i] = -1.0;
}
static void put(const void *p, size_t n) { fwrite(p, 1, n, out); }
static void put_status(const MPI_Status *s, MPI_Datatype t) {
  int v[4] = {s->MPI_SOURCE, s->MPI_TAG, 0, 0};
  MPI_Get_count(s, t, &v[2]);
  MPI_Get_elements(s, t, &v[3]);
  put(v, sizeof v);
}

/* plain calls: Sendrecv, Isend/Irecv, Pack/Unpack of type t */
static void plain(MPI_Datatype t, int seed) {
  MPI_Status st;
  MPI_Request q[2];
  fill(s, seed);
  poison(r);
  MPI_Sendrecv(s, 2, t, right, seed, r, 2, t, left, seed, MPI_COMM_WORLD, &st);
  put(r, sizeof r);
  put_status(&st, t);
  poison(r);
  MPI_Irecv(r, 2, t, left, seed + 1, MPI_COMM_WORLD, &q[0]);
  MPI_Isend(s, 2, t, right, seed + 1, MPI_COMM_WORLD, &q[1]);
  MPI_Waitall(2, q, MPI_STATUSES_IGNORE);
  put(r, sizeof r);
  int pos = 0;
  MPI_Pack(s, 2, t, packed, sizeof packed, &pos, MPI_COMM_WORLD);
  poison(u);
  int at = 0;
  MPI_Unpack(packed, pos, &at, u, 2, t, MPI_COMM_WORLD);
  put(&pos, sizeof pos);
  put(u, sizeof u);
}

#if MPI_VERSION >= 4
/* the _c calls with type t */
static void large_calls(MPI_Datatype t, int seed) {
  MPI_Status st;
  MPI_Request q[2];
  fill(s, seed);
  poison(r);
  if (rank % 2 == 0) {
    MPI_Send_c(s, 2, t, right, seed, MPI_COMM_WORLD);
    MPI_Recv_c(r, 2, t, left, seed, MPI_COMM_WORLD, &st);
  } else {
    MPI_Recv_c(r, 2, t, left, seed, MPI_COMM_WORLD, &st);
    MPI_Send_c(s, 2, t, right, seed, MPI_COMM_WORLD);
  }
  put(r, sizeof r);
  put_status(&st, t);
  poison(r);
  MPI_Sendrecv_c(s, 1, t, right, seed + 1, r, 1, t, left, seed + 1, MPI_COMM_WORLD, &st);
  put(r, sizeof r);
  put_status(&st, t);
  poison(r);
  MPI_Irecv_c(r, 2, t, left, seed + 2, MPI_COMM_WORLD, &q[0]);
  MPI_Isend_c(s, 2, t, right, seed + 2, MPI_COMM_WORLD, &q[1]);
  MPI_Waitall(2, q, MPI_STATUSES_IGNORE);
  put(r, sizeof r);
  MPI_Count pos = 0, at = 0, need = 0;
  MPI_Pack_size_c(2, t, MPI_COMM_WORLD, &need);
  MPI_Pack_c(s, 2, t, packed, sizeof packed, &pos, MPI_COMM_WORLD);
  poison(u);
  MPI_Unpack_c(packed, pos, &at, u, 2, t, MPI_COMM_WORLD);
  long long v[3] = {(long long)need, (long long)pos, (long long)at};
  put(v, sizeof v);
  put(u, sizeof u);
}
#endif

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: largecount <prefix>\n");
    return 2;
  }
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nprocs);
  right = (rank + 1) % nprocs;
  left = (rank + nprocs - 1) % nprocs;
  char name[4096];
  snprintf(name, sizeof name, "%s.%d", argv[1], rank);
  out = fopen(name, "wb");
  if (!out) {
    perror(name);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Datatype v;  /* built with plain counts: the shim decodes it */
  MPI_Type_vector(NB, 1, STRIDE, MPI_DOUBLE, &v);
  MPI_Type_commit(&v);
  plain(v, 10);
#if MPI_VERSION >= 4
  MPI_Datatype vc; /* the same shape with large counts: left to the library */
  MPI_Type_vector_c(NB, 1, STRIDE, MPI_DOUBLE, &vc);
  MPI_Type_commit(&vc);
  MPI_Datatype wrapped; /* a plain type over it: its member cannot be decoded either */
  MPI_Type_contiguous(1, vc, &wrapped);
  MPI_Type_commit(&wrapped);
  plain(vc, 20);
  plain(wrapped, 30);
  large_calls(v, 40);
  large_calls(vc, 50);
  MPI_Type_free(&wrapped);
  MPI_Type_free(&vc);
#else
  plain(v, 20);
#endif
  MPI_Type_free(&v);
  fclose(out);
  MPI_Finalize();
  return 0;
}
