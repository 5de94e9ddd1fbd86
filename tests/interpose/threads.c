/* Threads (MPI_THREAD_MULTIPLE) each exchanging derived-type messages with the same thread of the
 * peer rank, and running an Alltoallw of the same type on a communicator of their own, committing
 * and freeing their own types as they go, then writing what they received.
 *
 *   mpiexec -n 2 threads OUTPREFIX [THREADS] [ROUNDS]
 */
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int rank, size, nthreads = 4, rounds = 40;
#define SPAN 4096 /* doubles per buffer */
static double *out; /* nthreads * rounds * SPAN */
static MPI_Comm comms[64];

static void *worker(void *arg) {
  int k = (int)(long)arg, peer = (rank + 1) % size, from = (rank + size - 1) % size;
  double src[SPAN], dst[SPAN];
  for (int r = 0; r < rounds; ++r) {
    int block = 1 + (k + r) % 5, stride = block + 1 + (r % 3), count = SPAN / stride;
    MPI_Datatype t;
    MPI_Type_vector(count, block, stride, MPI_DOUBLE, &t);
    MPI_Type_commit(&t);
    for (int i = 0; i < SPAN; ++i) { src[i] = rank * 1e6 + k * 1e4 + r * 100 + i * 1e-3; dst[i] = -1; }
    MPI_Request rq[2];
    MPI_Irecv(dst, 1, t, from, 1000 * k + r, MPI_COMM_WORLD, &rq[0]);
    MPI_Isend(src, 1, t, peer, 1000 * k + r, MPI_COMM_WORLD, &rq[1]);
    switch (r % 4) {
      case 0: MPI_Waitall(2, rq, MPI_STATUSES_IGNORE); break;
      case 1: MPI_Wait(&rq[0], MPI_STATUS_IGNORE); MPI_Wait(&rq[1], MPI_STATUS_IGNORE); break;
      case 2: { int flag = 0; while (!flag) MPI_Testall(2, rq, &flag, MPI_STATUSES_IGNORE); break; }
      default: { int idx, n = 2; while (n--) MPI_Waitany(2, rq, &idx, MPI_STATUS_IGNORE); }
    }
    /* a collective on the thread's own communicator: each rank sends its vector to every rank */
    {
      int n = size, cnt[64], dis[64]; MPI_Datatype ts[64];
      double *rb = malloc(sizeof(double) * SPAN * n);
      for (int i = 0; i < n; ++i) { cnt[i] = 1; dis[i] = (int)(i * SPAN * sizeof(double)); ts[i] = t; }
      int scnt[64], sdis[64]; MPI_Datatype sts[64];
      for (int i = 0; i < n; ++i) { scnt[i] = 1; sdis[i] = 0; sts[i] = t; }
      for (int i = 0; i < SPAN * n; ++i) rb[i] = -2;
      MPI_Alltoallw(src, scnt, sdis, sts, rb, cnt, dis, ts, comms[k]);
      for (int i = 0; i < SPAN; ++i) dst[i] += rb[((rank + 1) % n) * SPAN + i];
      free(rb);
    }
    MPI_Type_free(&t);
    memcpy(out + ((size_t)k * rounds + r) * SPAN, dst, sizeof dst);
  }
  return NULL;
}

int main(int argc, char **argv) {
  int provided;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (argc > 2) nthreads = atoi(argv[2]);
  if (argc > 3) rounds = atoi(argv[3]);
  if (provided < MPI_THREAD_MULTIPLE) {
    if (rank == 0) printf("no MPI_THREAD_MULTIPLE (provided %d)\n", provided);
    MPI_Finalize();
    return 3;
  }
  out = malloc(sizeof(double) * nthreads * rounds * SPAN);
  for (int k = 0; k < nthreads; ++k) MPI_Comm_dup(MPI_COMM_WORLD, &comms[k]);
  pthread_t th[64];
  for (int k = 0; k < nthreads; ++k) pthread_create(&th[k], NULL, worker, (void *)(long)k);
  for (int k = 0; k < nthreads; ++k) pthread_join(th[k], NULL);
  char path[4096];
  snprintf(path, sizeof path, "%s.%d", argv[1], rank);
  FILE *f = fopen(path, "wb");
  fwrite(out, sizeof(double), (size_t)nthreads * rounds * SPAN, f);
  fclose(f);
  free(out);
  for (int k = 0; k < nthreads; ++k) MPI_Comm_free(&comms[k]);
  MPI_Finalize();
  return 0;
}
