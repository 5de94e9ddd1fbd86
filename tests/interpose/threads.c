/* Threads (MPI_THREAD_MULTIPLE) each exchanging derived-type messages with the same thread of the
 * peer rank, committing and freeing their own types as they go, then writing what they received.
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
  pthread_t th[64];
  for (int k = 0; k < nthreads; ++k) pthread_create(&th[k], NULL, worker, (void *)(long)k);
  for (int k = 0; k < nthreads; ++k) pthread_join(th[k], NULL);
  char path[4096];
  snprintf(path, sizeof path, "%s.%d", argv[1], rank);
  FILE *f = fopen(path, "wb");
  fwrite(out, sizeof(double), (size_t)nthreads * rounds * SPAN, f);
  fclose(f);
  free(out);
  MPI_Finalize();
  return 0;
}
