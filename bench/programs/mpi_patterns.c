/* Application datatype patterns for `hauler-bench mpi` (compiled with mpi_pingpong.c, which times
 * them): the kinds of types real codes hand MPI, after the published descriptions of the DDTBench
 * suite (Schneider, Gerstenberger, Hoefler: "Micro-Applications for Communication Data Access
 * Patterns and MPI Datatypes", EuroMPI 2012). Written here from those descriptions: the layouts
 * and sizes are this file's own choices, not the suite's code.
 *
 * Every pattern is one exchange between two ranks: each posts a receive of its type from the
 * other rank, sends the same shape of data from another buffer, and waits for both. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

double timed(void (*fn)(int, void *), void *arg, double *paused);  /* mpi_pingpong.c */
uint64_t fnv(const unsigned char *p, size_t n);
extern int rank;

typedef struct {
  MPI_Datatype st, rt;
  int scount, rcount;
  unsigned char *sbuf, *rbuf;
  size_t span;  /* bytes of each buffer */
  long bytes;   /* data bytes one rank sends per exchange */
} Pattern;

static void exchange(int iters, void *arg) {
  Pattern *p = arg;
  int peer = 1 - rank;
  MPI_Request r[2];
  for (int i = 0; i < iters; ++i) {
    MPI_Irecv(p->rbuf, p->rcount, p->rt, peer, 7, MPI_COMM_WORLD, &r[0]);
    MPI_Isend(p->sbuf, p->scount, p->st, peer, 7, MPI_COMM_WORLD, &r[1]);
    MPI_Waitall(2, r, MPI_STATUSES_IGNORE);
  }
}

static void commit(MPI_Datatype *t) { MPI_Type_commit(t); }

/* outer copies of `inner` `stride` bytes apart (a nested vector: one field after another) */
static MPI_Datatype nest(int outer, MPI_Datatype inner, MPI_Aint stride) {
  MPI_Datatype t;
  MPI_Type_create_hvector(outer, 1, stride, inner, &t);
  MPI_Type_free(&inner);
  return t;
}

/* Sorted distinct picks of about n/every of [0, n), from a fixed seed, grouped into runs of 1-3
 * consecutive entries (atoms that leave a subdomain together sit together in memory). */
static int picks(int n, int every, int *at, int *len) {
  uint32_t x = 12345;
  int k = 0;
  for (int i = 0; i < n;) {
    x = x * 1664525u + 1013904223u;
    if ((x >> 8) % (uint32_t)every == 0) {
      int run = 1 + (int)((x >> 20) % 3);
      if (i + run > n) run = n - i;
      at[k] = i;
      len[k++] = run;
      i += run + 1;
    } else {
      ++i;
    }
  }
  return k;
}

/* Builds pattern `name` at size `n`; 0: no such pattern. */
static int build(const char *name, long n, Pattern *p) {
  memset(p, 0, sizeof *p);
  p->scount = p->rcount = 1;
  if (strncmp(name, "wrf_", 4) == 0) {
    /* WRF: F fields of floats (x, z, y) in Fortran order, a halo of width 3; the x halo is
     * 3 floats per (z, y) row, the y halo (nx - 6)-float rows; as nested vectors or as one
     * subarray of the 4D (x, z, y, field) array */
    const int w = 3, nz = 16, F = 4;
    int nx = (int)n, ny = (int)n;
    MPI_Aint field = (MPI_Aint)nx * nz * ny * 4;
    p->span = (size_t)field * F;
    int x = name[4] == 'x';
    if (strcmp(name + 5, "_vec") == 0) {
      MPI_Datatype plane, t;
      if (x) {  /* per field: (ny - 2w) planes of nz rows of w floats */
        MPI_Type_vector(nz * (ny - 2 * w), w, nx, MPI_FLOAT, &plane);
      } else {  /* per field: w planes of nz rows of nx - 2w floats */
        MPI_Type_vector(nz * w, nx - 2 * w, nx, MPI_FLOAT, &plane);
      }
      t = nest(F, plane, field);
      MPI_Aint origin = ((MPI_Aint)nx * nz * w + w) * 4;  /* x = w, y = w: the interior edge */
      MPI_Datatype s;
      int one = 1;
      MPI_Type_create_hindexed(1, &one, &origin, t, &s);  /* the interior edge, not the buffer start */
      MPI_Type_free(&t);
      p->st = s;
      MPI_Type_dup(s, &p->rt);
    } else if (strcmp(name + 5, "_sa") == 0) {
      int full[4] = {nx, nz, ny, F}, sub[4], start[4] = {w, 0, w, 0};
      sub[0] = x ? w : nx - 2 * w;
      sub[1] = nz;
      sub[2] = x ? ny - 2 * w : w;
      sub[3] = F;
      MPI_Type_create_subarray(4, full, sub, start, MPI_ORDER_FORTRAN, MPI_FLOAT, &p->st);
      MPI_Type_dup(p->st, &p->rt);
    } else {
      return 0;
    }
  } else if (strcmp(name, "milc_su3") == 0) {
    /* MILC: an L^4 lattice of su3 vectors (3 complex doubles, 48 B), sites in (x, y, z, t)
     * order; the z-down face of the even sites: every other site of each (x, y) plane, T times */
    int L = (int)n;
    MPI_Aint site = 48, plane = (MPI_Aint)L * L * site;
    MPI_Datatype half;
    MPI_Type_vector(L * L / 2, 6, 12, MPI_DOUBLE, &half);
    p->st = nest(L, half, plane * L);
    MPI_Type_dup(p->st, &p->rt);
    p->span = (size_t)plane * L * L;
  } else if (strncmp(name, "nas_mg_", 7) == 0) {
    /* NAS MG: an n^3 grid of doubles with its ghost layer, Fortran order; the x face is one
     * double per (y, z) line, the y face an (n - 2)-double row per z plane */
    int m = (int)n;
    MPI_Aint line = (MPI_Aint)m * 8, plane = line * m;
    p->span = (size_t)plane * m;
    if (name[7] == 'x') {
      MPI_Datatype col;
      MPI_Type_vector(m - 2, 1, m, MPI_DOUBLE, &col);
      p->st = nest(m - 2, col, plane);
    } else if (name[7] == 'y') {
      MPI_Type_vector(m - 2, m - 2, m * m, MPI_DOUBLE, &p->st);
    } else {
      return 0;
    }
    MPI_Type_dup(p->st, &p->rt);
  } else if (strncmp(name, "nas_lu_", 7) == 0) {
    /* NAS LU: u(5, nx, ny, nz) doubles; the x face is 5 doubles per (y, z), the y face a
     * 5 * nx-double run per z */
    int m = (int)n;
    MPI_Aint point = 40;
    p->span = (size_t)point * m * m * m;
    if (name[7] == 'x') {
      MPI_Type_vector(m * m, 5, 5 * m, MPI_DOUBLE, &p->st);
    } else if (name[7] == 'y') {
      MPI_Type_vector(m, 5 * m, 5 * m * m, MPI_DOUBLE, &p->st);
    } else {
      return 0;
    }
    MPI_Type_dup(p->st, &p->rt);
  } else if (strcmp(name, "lammps_atoms") == 0) {
    /* LAMMPS: the atoms leaving a subdomain, positions (3 doubles each) of about 1 atom in 8,
     * an indexed type of runs of 1-3 consecutive atoms; the receiver appends them contiguously */
    int atoms = (int)n, *at = malloc(sizeof(int) * atoms), *len = malloc(sizeof(int) * atoms);
    int k = picks(atoms, 8, at, len);
    long moved = 0;
    for (int i = 0; i < k; ++i) at[i] *= 3, len[i] *= 3, moved += len[i];
    MPI_Type_indexed(k, len, at, MPI_DOUBLE, &p->st);
    MPI_Type_contiguous((int)moved, MPI_DOUBLE, &p->rt);
    p->span = (size_t)atoms * 24;
    free(at);
    free(len);
  } else if (strcmp(name, "specfem3d_oc") == 0) {
    /* SPECFEM3D: the mesh points shared with a neighbour (about 1 in 4, sorted indices), one
     * float each, the same index list on both sides (indexed_block) */
    int pts = (int)n, *at = malloc(sizeof(int) * pts), *len = malloc(sizeof(int) * pts);
    int *each = malloc(sizeof(int) * pts), k = picks(pts, 4, at, len), m = 0;
    for (int i = 0; i < k; ++i)
      for (int j = 0; j < len[i]; ++j) each[m++] = at[i] + j;
    MPI_Type_create_indexed_block(m, 1, each, MPI_FLOAT, &p->st);
    MPI_Type_dup(p->st, &p->rt);
    p->span = (size_t)pts * 4;
    free(at);
    free(len);
    free(each);
  } else if (strcmp(name, "fft_transpose") == 0) {
    /* A 2D FFT's transpose, N x N complex doubles in rows split between the two ranks: the
     * sender's N/2 x N/2 block goes as rows; the receiver lays it down as columns, a vector of
     * single complexes resized to one complex so that count N/2 walks the columns */
    int N = (int)n, h = N / 2;
    MPI_Datatype cplx, col;
    MPI_Type_contiguous(2, MPI_DOUBLE, &cplx);
    MPI_Type_vector(h, h, N, cplx, &p->st);
    MPI_Type_vector(h, 1, N, cplx, &col);
    MPI_Type_create_resized(col, 0, 16, &p->rt);
    MPI_Type_free(&col);
    MPI_Type_free(&cplx);
    p->rcount = h;
    p->span = (size_t)h * N * 16;
  } else {
    return 0;
  }
  commit(&p->st);
  commit(&p->rt);
  int size = 0;
  MPI_Type_size(p->st, &size);
  p->bytes = (long)size * p->scount;
  p->sbuf = malloc(p->span + 64);
  p->rbuf = malloc(p->span + 64);
  for (size_t i = 0; i < p->span + 64; ++i) {
    p->sbuf[i] = (unsigned char)(i * 131 + rank * 17 + 7);
    p->rbuf[i] = 0xEE;
  }
  return 1;
}

/* One row for pattern `name` at size `n`: "row NAME N BYTES time 1 checksum paused_time"; 0 when
 * the name is not a pattern. */
int pattern_row(const char *name, long n) {
  Pattern p;
  if (!build(name, n, &p)) return 0;
  double tp, t = timed(exchange, &p, &tp);
  uint64_t sum = fnv(p.rbuf, p.span + 64);
  /* rank 0 prints both ranks' checksums, folded: what each received, gaps untouched included */
  uint64_t other = 0;
  MPI_Sendrecv(&sum, 1, MPI_UINT64_T, 1 - rank, 8, &other, 1, MPI_UINT64_T, 1 - rank, 8, MPI_COMM_WORLD,
               MPI_STATUS_IGNORE);
  if (rank == 0)
    printf("row %s %ld %ld %.9e 1 %016llx %.9e\n", name, n, p.bytes, t,
           (unsigned long long)(sum ^ (other * 3)), tp);
  MPI_Type_free(&p.st);
  MPI_Type_free(&p.rt);
  free(p.sbuf);
  free(p.rbuf);
  return 1;
}
