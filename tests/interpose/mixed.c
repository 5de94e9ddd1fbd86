/* Messages the shim packs meet receives (and sends) the MPI library handles itself: persistent
 * requests (Send_init/Recv_init + Startall) completed together with the shim's Isend/Irecv by
 * Waitall, a Testany loop and a Testall loop; Probe/Iprobe + Get_count/Get_elements before the
 * receive; Mprobe/Mrecv and Improbe/Imrecv; Sendrecv_replace against the shim's Sendrecv.
 * Every rank writes what it received and the status fields it saw to <prefix>.<rank>; run with
 * and without the shim, the files must be byte-identical.
 *
 * usage: mixed <prefix> */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NB 64       /* blocks of the vector type */
#define STRIDE 3    /* doubles between blocks */
#define EXT ((NB - 1) * STRIDE + 1)
#define CAP (4 * EXT)

static FILE *out;
static int rank, nprocs, right, left;
static MPI_Datatype vt; /* NB doubles, stride STRIDE: the shim packs it */

static void fill(double *b, int seed) {
  for (int i = 0; i < CAP; ++i) b[i] = rank * 1e6 + seed * 1e3 + i;
}
static void poison(double *b) {
  for (int i = 0; i < CAP; ++i) b[i] = -1.0;
}
static void put(const void *p, size_t n) { fwrite(p, 1, n, out); }
static void put_buf(const double *b) { put(b, sizeof(double) * CAP); }

/* The fields of a status the standard defines, counted in the application's type. */
static void put_status(const MPI_Status *s, MPI_Datatype t) {
  int v[5];
  v[0] = s->MPI_SOURCE;
  v[1] = s->MPI_TAG;
  MPI_Get_count(s, t, &v[2]);
  MPI_Get_count(s, MPI_DOUBLE, &v[3]);
  MPI_Get_elements(s, t, &v[4]);
  put(v, sizeof v);
}

static void persistent(void) {
  static double sa[CAP], ra[CAP], sb[CAP], rb[CAP];
  MPI_Request r[4];
  MPI_Status s[4];
  /* the library sends and receives these with the derived type itself */
  MPI_Send_init(sa, 2, vt, right, 100, MPI_COMM_WORLD, &r[0]);
  MPI_Recv_init(ra, 2, vt, left, 101, MPI_COMM_WORLD, &r[1]);
  for (int it = 0; it < 3; ++it) {
    fill(sa, 10 + it);
    fill(sb, 20 + it);
    poison(ra);
    poison(rb);
    MPI_Startall(2, r);
    MPI_Isend(sb, 2, vt, right, 101, MPI_COMM_WORLD, &r[2]); /* packed: Recv_init takes the bytes */
    MPI_Irecv(rb, 2, vt, left, 100, MPI_COMM_WORLD, &r[3]);  /* bytes of the Send_init message */
    if (it == 0) {
      MPI_Waitall(4, r, s);
    } else if (it == 1) {
      for (;;) { /* until every request is inactive or null */
        int idx = -1, flag = 0;
        MPI_Status one;
        MPI_Testany(4, r, &idx, &flag, &one);
        if (flag && idx == MPI_UNDEFINED) break;
        if (flag) s[idx] = one;
      }
    } else {
      int flag = 0;
      while (!flag) MPI_Testall(4, r, &flag, s);
    }
    put_buf(ra);
    put_buf(rb);
    put_status(&s[1], vt);
    put_status(&s[3], vt);
    int nulls[2] = {r[2] == MPI_REQUEST_NULL, r[3] == MPI_REQUEST_NULL};
    put(nulls, sizeof nulls);
  }
  MPI_Request_free(&r[0]);
  MPI_Request_free(&r[1]);
}

static void probes(void) {
  static double sb[CAP], rb[CAP];
  MPI_Request q[2];
  MPI_Status s;
  fill(sb, 30);
  MPI_Isend(sb, 3, vt, right, 200, MPI_COMM_WORLD, &q[0]);
  MPI_Isend(sb + 1, 2, vt, right, 201, MPI_COMM_WORLD, &q[1]);
  /* Probe: the count the status gives before the receive is posted */
  MPI_Probe(MPI_ANY_SOURCE, 200, MPI_COMM_WORLD, &s);
  put_status(&s, vt);
  poison(rb);
  MPI_Recv(rb, 4, vt, s.MPI_SOURCE, s.MPI_TAG, MPI_COMM_WORLD, &s);
  put_buf(rb);
  put_status(&s, vt);
  /* Iprobe, then received as plain doubles (contiguous: the library's own receive) */
  int flag = 0;
  while (!flag) MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &s);
  put_status(&s, vt);
  int n = 0;
  MPI_Get_count(&s, MPI_DOUBLE, &n);
  poison(rb);
  MPI_Recv(rb, n, MPI_DOUBLE, s.MPI_SOURCE, s.MPI_TAG, MPI_COMM_WORLD, &s);
  put_buf(rb);
  put_status(&s, MPI_DOUBLE);
  MPI_Waitall(2, q, MPI_STATUSES_IGNORE);
}

static void matched(void) {
  static double sb[CAP], rb[CAP];
  MPI_Request q[2], r;
  MPI_Message m;
  MPI_Status s;
  fill(sb, 40);
  MPI_Isend(sb, 3, vt, right, 300, MPI_COMM_WORLD, &q[0]);
  MPI_Isend(sb + 2, 2, vt, right, 301, MPI_COMM_WORLD, &q[1]);
  /* Mprobe/Mrecv: the library receives the shim's bytes into the derived type (count 4 > 3) */
  MPI_Mprobe(MPI_ANY_SOURCE, 300, MPI_COMM_WORLD, &m, &s);
  put_status(&s, vt);
  poison(rb);
  MPI_Mrecv(rb, 4, vt, &m, &s);
  put_buf(rb);
  put_status(&s, vt);
  /* Improbe/Imrecv + Wait */
  int flag = 0;
  while (!flag) MPI_Improbe(left, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &m, &s);
  put_status(&s, vt);
  poison(rb);
  MPI_Imrecv(rb, 2, vt, &m, &r);
  MPI_Wait(&r, &s);
  put_buf(rb);
  put_status(&s, vt);
  MPI_Waitall(2, q, MPI_STATUSES_IGNORE);
}

static void replace(void) {
  static double b[CAP], sb[CAP], rb[CAP];
  MPI_Status s;
  /* all ranks: the library on both sides */
  fill(b, 50);
  MPI_Sendrecv_replace(b, 2, vt, right, 400, left, 400, MPI_COMM_WORLD, &s);
  put_buf(b);
  put_status(&s, vt);
  /* even ranks replace in place (library), odd ranks use Sendrecv (the shim packs and unpacks) */
  fill(b, 51);
  fill(sb, 51);
  poison(rb);
  if (rank % 2 == 0) {
    MPI_Sendrecv_replace(b, 2, vt, right, 401, left, 401, MPI_COMM_WORLD, &s);
    put_buf(b);
  } else {
    MPI_Sendrecv(sb, 2, vt, right, 401, rb, 2, vt, left, 401, MPI_COMM_WORLD, &s);
    put_buf(rb);
  }
  put_status(&s, vt);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nprocs);
  if (argc < 2) {
    if (rank == 0) fprintf(stderr, "usage: mixed <prefix>\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  char path[4096];
  snprintf(path, sizeof path, "%s.%d", argv[1], rank);
  out = fopen(path, "wb");
  if (!out) MPI_Abort(MPI_COMM_WORLD, 3);
  right = (rank + 1) % nprocs;
  left = (rank + nprocs - 1) % nprocs;
  MPI_Type_vector(NB, 1, STRIDE, MPI_DOUBLE, &vt);
  MPI_Type_commit(&vt);
  persistent();
  probes();
  matched();
  replace();
  MPI_Type_free(&vt);
  fclose(out);
  MPI_Finalize();
  return 0;
}
