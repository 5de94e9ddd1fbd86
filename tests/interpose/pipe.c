/* Pipelined messages (HAULER_INTERPOSE_PIPELINE): large non-contiguous sends met by every kind of
 * receive the shim finishes. Each rank writes, per message, the status fields and a checksum of
 * the whole receive buffer (gaps included) to <prefix>.<rank>; run with and without the shim (and
 * with the pipeline on), the files must be byte-identical.
 *
 * Cases, each rank sending to its right and receiving from its left:
 *   0 Send(vector) -> Recv(vector)              1 Send(vector) -> Recv(contiguous doubles)
 *   2 Isend/Irecv + Waitall, two tags, the receives posted in the opposite order
 *   3 two messages on one tag, both receives pre-posted (a chunk must not meet the second one)
 *   4 ANY_SOURCE + ANY_TAG receives (rank 0 from everyone, then a barrier)
 *   5 Ssend, Bsend -> Irecv + Testsome
 *   6 Sendrecv, Sendrecv_replace               7 a message shorter than its receive
 *   8 small messages between large ones on the same tag (order kept)
 *   9 Isend + Irecv + Waitany, the sender's request completed late
 *
 * usage: pipe <prefix> <iterations> [probe|CASE]   (probe: rank 1 probes a pipelined message: refused;
 * CASE: that case alone) */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int rank, nprocs, right, left;
static FILE *out;
static MPI_Datatype vec;   /* 8192 blocks of 3 doubles, stride 5 doubles: 192 KiB of data */
static MPI_Aint vext;
enum { BLOCKS = 8192, BL = 3, STRIDE = 5, NDATA = BLOCKS * BL };

static uint64_t fnv(const void *v, size_t n) {
  const unsigned char *p = v;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) { h ^= p[i]; h *= 1099511628211ull; }
  return h;
}

static void fill(double *b, size_t n, int seed) {
  for (size_t i = 0; i < n; ++i) b[i] = rank * 1e6 + seed * 1e3 + (double)i * 0.5;
}

static void put(const MPI_Status *s, MPI_Datatype t, const void *b, size_t bytes) {
  int64_t v[5];
  int c = 0;
  v[0] = s->MPI_SOURCE;
  v[1] = s->MPI_TAG;
  MPI_Get_count(s, t, &c);
  v[2] = c;
  MPI_Get_count(s, MPI_BYTE, &c);
  v[3] = c;
  v[4] = (int64_t)fnv(b, bytes);
  fwrite(v, sizeof v, 1, out);
}

int main(int argc, char **argv) {
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
  int iters = atoi(argv[2]);
  MPI_Type_vector(BLOCKS, BL, STRIDE, MPI_DOUBLE, &vec);
  MPI_Type_commit(&vec);
  MPI_Aint lb;
  MPI_Type_get_extent(vec, &lb, &vext);
  size_t span = (size_t)vext + 64, nd = span / 8 + 1;
  double *src = malloc(nd * 8), *dst = malloc(nd * 8), *dst2 = malloc(nd * 8), *src2 = malloc(nd * 8);
  double *flat = malloc(NDATA * 8 + 64), *small = malloc(64);
  int bsize = 2 * (NDATA * 8 + MPI_BSEND_OVERHEAD) + 4096;
  void *battach = malloc((size_t)bsize);
  MPI_Buffer_attach(battach, bsize);
  MPI_Status st[4];
  MPI_Request rq[4];

  if (argc > 3 && strcmp(argv[3], "probe") == 0) {
    fill(src, nd, 1);
    if (rank == 0) MPI_Send(src, 1, vec, 1, 5, MPI_COMM_WORLD);
    if (rank == 1) {
      MPI_Probe(0, 5, MPI_COMM_WORLD, &st[0]);  /* refused under the pipeline: the job ends here */
      MPI_Recv(dst, 1, vec, 0, 5, MPI_COMM_WORLD, &st[0]);
    }
    MPI_Finalize();
    return 0;
  }

  for (int it = 0; it < iters; ++it) {
    int only = argc > 3 ? atoi(argv[3]) : -1;
    for (int c = 0; c < 10; ++c) {
      if (only >= 0 && c != only) continue;
      fill(src, nd, it * 10 + c);
      fill(src2, nd, it * 10 + c + 100);
      memset(dst, 0xEE, nd * 8);
      memset(dst2, 0xEE, nd * 8);
      memset(flat, 0xEE, NDATA * 8 + 64);
      switch (c) {
        case 0:
          if (rank % 2 == 0) {
            MPI_Send(src, 1, vec, right, c, MPI_COMM_WORLD);
            MPI_Recv(dst, 1, vec, left, c, MPI_COMM_WORLD, &st[0]);
          } else {
            MPI_Recv(dst, 1, vec, left, c, MPI_COMM_WORLD, &st[0]);
            MPI_Send(src, 1, vec, right, c, MPI_COMM_WORLD);
          }
          put(&st[0], vec, dst, span);
          break;
        case 1:
          MPI_Irecv(flat, NDATA, MPI_DOUBLE, left, c, MPI_COMM_WORLD, &rq[0]);
          MPI_Send(src, 1, vec, right, c, MPI_COMM_WORLD);
          MPI_Wait(&rq[0], &st[0]);
          put(&st[0], MPI_DOUBLE, flat, NDATA * 8 + 64);
          break;
        case 2:
          MPI_Irecv(dst2, 1, vec, left, 21, MPI_COMM_WORLD, &rq[0]);
          MPI_Irecv(dst, 1, vec, left, 20, MPI_COMM_WORLD, &rq[1]);
          MPI_Isend(src, 1, vec, right, 20, MPI_COMM_WORLD, &rq[2]);
          MPI_Isend(src2, 1, vec, right, 21, MPI_COMM_WORLD, &rq[3]);
          MPI_Waitall(4, rq, st);
          put(&st[1], vec, dst, span);
          put(&st[0], vec, dst2, span);
          break;
        case 3:
          MPI_Irecv(dst, 1, vec, left, c, MPI_COMM_WORLD, &rq[0]);
          MPI_Irecv(dst2, 1, vec, left, c, MPI_COMM_WORLD, &rq[1]);
          MPI_Isend(src, 1, vec, right, c, MPI_COMM_WORLD, &rq[2]);
          MPI_Isend(src2, 1, vec, right, c, MPI_COMM_WORLD, &rq[3]);
          MPI_Wait(&rq[1], &st[1]);  /* the second first */
          MPI_Wait(&rq[0], &st[0]);
          MPI_Waitall(2, rq + 2, MPI_STATUSES_IGNORE);
          put(&st[0], vec, dst, span);
          put(&st[1], vec, dst2, span);
          break;
        case 4:
          if (rank == 0) {
            /* the senders' order is the library's to pick: each one's result, written by source */
            uint64_t sum[64] = {0};
            MPI_Status got[64];
            for (int k = 1; k < nprocs && k < 64; ++k) {
              MPI_Recv(dst, 1, vec, MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &st[0]);
              got[st[0].MPI_SOURCE] = st[0];
              sum[st[0].MPI_SOURCE] = fnv(dst, span);
            }
            for (int k = 1; k < nprocs && k < 64; ++k) {
              put(&got[k], vec, &sum[k], sizeof sum[k]);
            }
          } else {
            MPI_Send(src, 1, vec, 0, 40 + rank, MPI_COMM_WORLD);
          }
          /* rank 0's ANY_TAG receives must not meet case 5's messages from its left neighbour */
          MPI_Barrier(MPI_COMM_WORLD);
          break;
        case 5:
          MPI_Irecv(dst, 1, vec, left, 50, MPI_COMM_WORLD, &rq[0]);
          MPI_Irecv(dst2, 1, vec, left, 51, MPI_COMM_WORLD, &rq[1]);
          MPI_Bsend(src2, 1, vec, right, 51, MPI_COMM_WORLD);
          MPI_Ssend(src, 1, vec, right, 50, MPI_COMM_WORLD);
          for (int done = 0; done < 2;) {
            int n = 0, idx[2];
            MPI_Testsome(2, rq, &n, idx, st + 2);
            for (int k = 0; k < n; ++k) st[idx[k]] = st[2 + k];
            done += n == MPI_UNDEFINED ? 2 : n;
          }
          put(&st[0], vec, dst, span);
          put(&st[1], vec, dst2, span);
          break;
        case 6:
          MPI_Sendrecv(src, 1, vec, right, 60, dst, 1, vec, left, 60, MPI_COMM_WORLD, &st[0]);
          put(&st[0], vec, dst, span);
          memcpy(dst2, src2, nd * 8);
          MPI_Sendrecv_replace(dst2, 1, vec, right, 61, left, 61, MPI_COMM_WORLD, &st[1]);
          put(&st[1], vec, dst2, span);
          break;
        case 7: {  /* 4096 of the 8192 blocks into a receive of the whole vector */
          MPI_Datatype half;
          MPI_Type_vector(BLOCKS / 2, BL, STRIDE, MPI_DOUBLE, &half);
          MPI_Type_commit(&half);
          MPI_Irecv(dst, NDATA, MPI_DOUBLE, left, c, MPI_COMM_WORLD, &rq[0]);
          MPI_Send(src, 1, half, right, c, MPI_COMM_WORLD);
          MPI_Type_free(&half);
          MPI_Wait(&rq[0], &st[0]);
          put(&st[0], MPI_DOUBLE, dst, NDATA * 8 + 64);
          break;
        }
        case 8:
          MPI_Irecv(small, 8, MPI_DOUBLE, left, c, MPI_COMM_WORLD, &rq[0]);
          MPI_Irecv(dst, 1, vec, left, c, MPI_COMM_WORLD, &rq[1]);
          MPI_Irecv(small + 4, 4, MPI_DOUBLE, left, c, MPI_COMM_WORLD, &rq[2]);
          MPI_Send(src2, 8, MPI_DOUBLE, right, c, MPI_COMM_WORLD);
          MPI_Isend(src, 1, vec, right, c, MPI_COMM_WORLD, &rq[3]);
          MPI_Send(src2 + 8, 4, MPI_DOUBLE, right, c, MPI_COMM_WORLD);
          MPI_Waitall(4, rq, st);
          put(&st[0], MPI_DOUBLE, small, 32);
          put(&st[1], vec, dst, span);
          put(&st[2], MPI_DOUBLE, small + 4, 32);
          break;
        case 9: {
          MPI_Irecv(dst, 1, vec, left, c, MPI_COMM_WORLD, &rq[0]);
          MPI_Isend(src, 1, vec, right, c, MPI_COMM_WORLD, &rq[1]);
          int idx = -1;
          MPI_Waitany(2, rq, &idx, &st[0]);
          MPI_Waitany(2, rq, &idx, &st[1]);
          put(idx == 0 ? &st[1] : &st[0], vec, dst, span);
          break;
        }
      }
    }
  }
  int bs;
  MPI_Buffer_detach(&battach, &bs);
  MPI_Type_free(&vec);
  fclose(out);
  MPI_Finalize();
  free(src), free(dst), free(dst2), free(src2), free(flat), free(small), free(battach);
  return 0;
}
