/* The shim's per-message choice (HAULER_INTERPOSE_TRIALS): the same types go back and forth
 * hundreds of times, so each side's selections run their trials and re-checks and may change
 * path between two messages, with no word to the other side. Meanwhile the receives are of every
 * kind a choice could upset: MPI_ANY_SOURCE + MPI_ANY_TAG from two senders at once (on a duplicated
 * communicator, so that the peer ranks are translated), MPI_Probe and
 * MPI_Mprobe + MPI_Get_count then a receive of the probed count, a persistent receive
 * (Recv_init/Start: the library, typed, takes whatever the sender chose), Sendrecv, Isend/Irecv
 * with Waitall and Testsome. Each rank writes, per message, the status fields and a checksum of
 * the whole receive buffer (gaps included) to <prefix>.<rank>; run with and without the shim, the
 * files must be byte-identical.
 *
 * Types: tiny (1-byte blocks: packing wins by far), wide (two 256 KiB blocks: the library's own
 * path is usually as fast or faster), mid (64-byte blocks of doubles: a close call that may flip).
 *
 * usage: select <prefix> <iterations>  (run on 2 or more ranks) */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TINY, WIDE, MID, NTYPES };
static MPI_Datatype types[NTYPES];
static MPI_Aint extents[NTYPES];
static MPI_Comm any_comm[NTYPES];  /* case 1's ANY_TAG receives: only that type's messages there */
static int rank, nprocs, right, left;
static FILE *out;

static uint64_t fnv(const unsigned char *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) { h ^= p[i]; h *= 1099511628211ull; }
  return h;
}

static unsigned char *buffer(int k) { return malloc((size_t)extents[k] + 64); }

static void fill(unsigned char *b, int k, int seed) {
  for (MPI_Aint i = 0; i < extents[k] + 64; ++i) b[i] = (unsigned char)(rank * 31 + seed * 7 + i * 13);
}

static void poison(unsigned char *b, int k) { memset(b, 0xEE, (size_t)extents[k] + 64); }

/* What a receive left: the status fields (counted in its type and in bytes) and every byte of the
 * buffer, the gaps and 64 bytes past the extent included. */
static void put(const MPI_Status *s, const unsigned char *b, int k) {
  int64_t v[6];
  int c = 0;
  v[0] = s->MPI_SOURCE;
  v[1] = s->MPI_TAG;
  MPI_Get_count(s, types[k], &c);
  v[2] = c;
  MPI_Get_count(s, MPI_BYTE, &c);
  v[3] = c;
  MPI_Get_elements(s, types[k], &c);
  v[4] = c;
  v[5] = (int64_t)fnv(b, (size_t)extents[k] + 64);
  fwrite(v, sizeof v, 1, out);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nprocs);
  if (argc < 3 || nprocs < 2) {
    if (rank == 0) fprintf(stderr, "usage: select <prefix> <iterations> (2 or more ranks)\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  char name[4096];
  snprintf(name, sizeof name, "%s.%d", argv[1], rank);
  out = fopen(name, "wb");
  int iters = atoi(argv[2]);
  right = (rank + 1) % nprocs;
  left = (rank + nprocs - 1) % nprocs;
  MPI_Type_vector(4096, 1, 2, MPI_BYTE, &types[TINY]);
  MPI_Type_vector(2, 256 << 10, 512 << 10, MPI_BYTE, &types[WIDE]);
  MPI_Type_vector(256, 8, 12, MPI_DOUBLE, &types[MID]);
  for (int k = 0; k < NTYPES; ++k) {
    MPI_Aint lb;
    MPI_Type_commit(&types[k]);
    MPI_Type_get_extent(types[k], &lb, &extents[k]);
    MPI_Comm_dup(MPI_COMM_WORLD, &any_comm[k]);
  }
  unsigned char *sa[NTYPES], *sb[NTYPES], *ra[NTYPES], *rb[NTYPES];
  for (int k = 0; k < NTYPES; ++k) sa[k] = buffer(k), sb[k] = buffer(k), ra[k] = buffer(k), rb[k] = buffer(k);
  MPI_Request pr[NTYPES];  /* a persistent receive per type, from the left */
  for (int k = 0; k < NTYPES; ++k) MPI_Recv_init(rb[k], 1, types[k], left, 900 + k, MPI_COMM_WORLD, &pr[k]);

  for (int it = 0; it < iters; ++it) {
    for (int k = 0; k < NTYPES; ++k) {
      MPI_Datatype t = types[k];
      MPI_Status s[4];
      MPI_Request r[4];
      fill(sa[k], k, it);
      fill(sb[k], k, it + 1000);
      poison(ra[k], k);
      poison(rb[k], k);
      switch (it % 5) {
        case 0:  /* Sendrecv around the ring */
          MPI_Sendrecv(sa[k], 1, t, right, 10 + k, ra[k], 1, t, left, 10 + k, MPI_COMM_WORLD, &s[0]);
          put(&s[0], ra[k], k);
          break;
        case 1: {  /* two senders, ANY_SOURCE + ANY_TAG: put in source order (arrival order varies) */
          MPI_Irecv(ra[k], 1, t, MPI_ANY_SOURCE, MPI_ANY_TAG, any_comm[k], &r[0]);
          MPI_Irecv(rb[k], 1, t, MPI_ANY_SOURCE, MPI_ANY_TAG, any_comm[k], &r[1]);
          MPI_Isend(sa[k], 1, t, right, 20 + k, any_comm[k], &r[2]);
          MPI_Isend(sb[k], 1, t, left, 40 + k, any_comm[k], &r[3]);
          MPI_Waitall(4, r, s);
          int first = s[0].MPI_SOURCE < s[1].MPI_SOURCE || (s[0].MPI_SOURCE == s[1].MPI_SOURCE && s[0].MPI_TAG < s[1].MPI_TAG);
          put(&s[first ? 0 : 1], first ? ra[k] : rb[k], k);
          put(&s[first ? 1 : 0], first ? rb[k] : ra[k], k);
          break;
        }
        case 2: {  /* Probe (ANY_SOURCE, ANY_TAG) + Get_count, then a receive of that count */
          MPI_Isend(sa[k], 1, t, right, 30 + k, MPI_COMM_WORLD, &r[0]);
          int c = -1;
          MPI_Probe(MPI_ANY_SOURCE, 30 + k, MPI_COMM_WORLD, &s[1]);
          MPI_Get_count(&s[1], t, &c);
          MPI_Recv(ra[k], c, t, s[1].MPI_SOURCE, s[1].MPI_TAG, MPI_COMM_WORLD, &s[2]);
          MPI_Wait(&r[0], &s[0]);
          put(&s[1], ra[k], k);
          put(&s[2], ra[k], k);
          break;
        }
        case 3: {  /* Mprobe + Mrecv: the library receives typed whatever the sender chose */
          MPI_Message m;
          int c = -1;
          MPI_Isend(sa[k], 1, t, right, 50 + k, MPI_COMM_WORLD, &r[0]);
          MPI_Mprobe(left, MPI_ANY_TAG, MPI_COMM_WORLD, &m, &s[1]);
          MPI_Get_count(&s[1], t, &c);
          MPI_Mrecv(ra[k], c, t, &m, &s[2]);
          MPI_Wait(&r[0], &s[0]);
          put(&s[1], ra[k], k);
          put(&s[2], ra[k], k);
          break;
        }
        default: {  /* a persistent receive meets a blocking send; Testsome completes an Irecv */
          MPI_Start(&pr[k]);
          MPI_Irecv(ra[k], 1, t, right, 60 + k, MPI_COMM_WORLD, &r[0]);
          MPI_Send(sa[k], 1, t, right, 900 + k, MPI_COMM_WORLD);
          MPI_Send(sb[k], 1, t, left, 60 + k, MPI_COMM_WORLD);
          MPI_Wait(&pr[k], &s[1]);
          int done = 0, idx[1];
          while (!done) MPI_Testsome(1, &r[0], &done, idx, &s[2]);
          put(&s[1], rb[k], k);
          put(&s[2], ra[k], k);
          break;
        }
      }
    }
  }
  for (int k = 0; k < NTYPES; ++k) {
    MPI_Request_free(&pr[k]);
    MPI_Comm_free(&any_comm[k]);
    MPI_Type_free(&types[k]);
    free(sa[k]), free(sb[k]), free(ra[k]), free(rb[k]);
  }
  fclose(out);
  MPI_Finalize();
  return 0;
}
