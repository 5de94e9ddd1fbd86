/* The program of `hauler-bench mpi` (bench/mpi.py compiles it with mpi_patterns.c and each MPI
 * flavour's mpicc): ping-pong of contiguous and vector messages, a 3D halo exchange and the
 * application patterns, timed with the shim paused (MPI_Pcontrol) and on, one line of results per
 * case. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double budget;
int rank;  /* mpi_patterns.c too */
int pattern_row(const char *name, long n);

uint64_t fnv(const unsigned char *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) { h ^= p[i]; h *= 1099511628211ull; }
  return h;
}

static double median3(const double *v) {
  double a = v[0], b = v[1], c = v[2];
  return a > b ? (b > c ? b : (a > c ? c : a)) : (a > c ? a : (b > c ? c : b));
}

/* Warms up (fn once with the shim paused, then WARM times with it on: the shim's first messages
 * of each kind are its trials of both paths), then sizes the iteration count to the time budget
 * (rank 0 decides), then times 3 batches with the shim on and 3 with it paused by MPI_Pcontrol(0),
 * interleaved (a no-op without the shim); returns the median per-iteration time on, and the
 * paused one in *paused: the library and the shim measured in one run. */
#define WARM 12
double timed(void (*fn)(int, void *), void *arg, double *paused) {
  MPI_Pcontrol(0);
  fn(1, arg);
  MPI_Pcontrol(1);
  fn(WARM - 1, arg);
  double t0 = MPI_Wtime();
  fn(1, arg);
  double one = MPI_Wtime() - t0;
  int iters = one > 0 ? (int)(budget / one) : 1000;
  if (iters < 2) iters = 2;
  if (iters > 20000) iters = 20000;
  MPI_Bcast(&iters, 1, MPI_INT, 0, MPI_COMM_WORLD);
  double on[3], off[3];
  for (int r = 0; r < 6; ++r) {
    MPI_Pcontrol(r % 2);
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = MPI_Wtime();
    fn(iters, arg);
    double t = (MPI_Wtime() - t0) / iters;
    MPI_Bcast(&t, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    if (r % 2) on[r / 2] = t; else off[r / 2] = t;
  }
  MPI_Pcontrol(1);
  *paused = median3(off);
  return median3(on);
}

/* `bytes` data bytes as a vector of MPI_BYTE blocks at a stride of 2 x block, or contiguous
 * (block 0); of MPI_DOUBLEs (`dbl`, block a multiple of 8) the way scientific codes describe
 * theirs (libraries move typed blocks faster than byte blocks); returns the count to send. */
static int message_type(long block, long bytes, int dbl, MPI_Datatype *t) {
  if (block <= 0) {
    *t = MPI_BYTE;
    return (int)bytes;
  }
  if (dbl && block % 8 == 0)
    MPI_Type_vector((int)(bytes / block), (int)(block / 8), (int)(2 * block / 8), MPI_DOUBLE, t);
  else
    MPI_Type_vector((int)(bytes / block), (int)block, (int)(2 * block), MPI_BYTE, t);
  MPI_Type_commit(t);
  return 1;
}

typedef struct { unsigned char *src, *dst; MPI_Datatype t; int count; } Ping;

static void pingpong(int iters, void *arg) {
  Ping *p = arg;
  for (int i = 0; i < iters; ++i) {
    if (rank == 0) {
      MPI_Send(p->src, p->count, p->t, 1, 1, MPI_COMM_WORLD);
      MPI_Recv(p->dst, p->count, p->t, 1, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else {
      MPI_Recv(p->dst, p->count, p->t, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      MPI_Send(p->dst, p->count, p->t, 0, 2, MPI_COMM_WORLD);
    }
  }
}

/* The same message to this rank itself (the library copies it in process), twice per
 * iteration like a round trip. */
static void selfping(int iters, void *arg) {
  Ping *p = arg;
  for (int i = 0; i < 2 * iters; ++i) {
    MPI_Request r;
    MPI_Irecv(p->dst, p->count, p->t, rank, 3, MPI_COMM_WORLD, &r);
    MPI_Send(p->src, p->count, p->t, rank, 3, MPI_COMM_WORLD);
    MPI_Wait(&r, MPI_STATUS_IGNORE);
  }
}

/* bytes: the same exchange of the same faces already contiguous (sb/rb, n[i] doubles each), the
 * bound of any packing scheme: what the library takes to move the bytes alone. */
typedef struct {
  double *a, *sb[26], *rb[26];
  MPI_Datatype st[26], rt[26];
  int to[26], from[26], n[26], bytes;
  MPI_Comm cart;
} Halo;

static void halo(int iters, void *arg) {
  Halo *h = arg;
  MPI_Request rq[52];
  for (int it = 0; it < iters; ++it) {
    for (int i = 0; i < 26; ++i)
      if (h->bytes) MPI_Irecv(h->rb[i], h->n[i], MPI_DOUBLE, h->from[i], i, h->cart, &rq[i]);
      else MPI_Irecv(h->a, 1, h->rt[i], h->from[i], i, h->cart, &rq[i]);
    for (int i = 0; i < 26; ++i)
      if (h->bytes) MPI_Isend(h->sb[i], h->n[i], MPI_DOUBLE, h->to[i], i, h->cart, &rq[26 + i]);
      else MPI_Isend(h->a, 1, h->st[i], h->to[i], i, h->cart, &rq[26 + i]);
    MPI_Waitall(52, rq, MPI_STATUSES_IGNORE);
  }
}

/* Pass-through cost: 16 Irecv + 16 Isend of a small message to this rank itself, then one
 * Waitall (33 calls), so the per-call cost is not hidden behind a peer's latency. */
typedef struct { unsigned char *src, *dst; MPI_Datatype t; int count; long span; } Calls;

static void calls(int iters, void *arg) {
  Calls *c = arg;
  MPI_Request rq[32];
  for (int it = 0; it < iters; ++it) {
    for (int i = 0; i < 16; ++i) MPI_Irecv(c->dst + i * c->span, c->count, c->t, rank, i, MPI_COMM_WORLD, &rq[i]);
    for (int i = 0; i < 16; ++i) MPI_Isend(c->src, c->count, c->t, rank, i, MPI_COMM_WORLD, &rq[16 + i]);
    MPI_Waitall(32, rq, MPI_STATUSES_IGNORE);
  }
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  budget = atof(argv[1]);
  for (int k = 2; k < argc; ++k) {
    char kind[16];
    long block = 0, bytes = 0;
    sscanf(argv[k], "%15[^:]:%ld:%ld", kind, &block, &bytes);
    if (pattern_row(kind, block)) continue;  /* an application pattern at size `block` */
    if (strcmp(kind, "halo") == 0 || strcmp(kind, "halobytes") == 0) {
      int n = (int)block, size, dims[3] = {0, 0, 0}, periods[3] = {1, 1, 1}, coords[3];
      Halo h;
      h.bytes = strcmp(kind, "halobytes") == 0;
      MPI_Comm_size(MPI_COMM_WORLD, &size);
      MPI_Dims_create(size, 3, dims);
      MPI_Cart_create(MPI_COMM_WORLD, 3, dims, periods, 0, &h.cart);
      MPI_Cart_coords(h.cart, rank, 3, coords);
      int g = n + 2, full[3] = {g, g, g}, m = 0;
      size_t cells = (size_t)g * g * g;
      h.a = malloc(cells * sizeof(double));
      for (size_t i = 0; i < cells; ++i) h.a[i] = rank * 1e7 + (double)i;
      long moved = 0;
      for (int dx = -1; dx <= 1; ++dx) for (int dy = -1; dy <= 1; ++dy) for (int dz = -1; dz <= 1; ++dz) {
        if (!dx && !dy && !dz) continue;
        int d[3] = {dx, dy, dz}, sub[3], ss[3], rs[3], c[3];
        for (int i = 0; i < 3; ++i) {
          sub[i] = d[i] == 0 ? n : 1;
          ss[i] = d[i] == -1 ? 1 : d[i] == 0 ? 1 : n;
          rs[i] = d[i] == 1 ? 0 : d[i] == 0 ? 1 : n + 1;
        }
        MPI_Type_create_subarray(3, full, sub, ss, MPI_ORDER_C, MPI_DOUBLE, &h.st[m]);
        MPI_Type_create_subarray(3, full, sub, rs, MPI_ORDER_C, MPI_DOUBLE, &h.rt[m]);
        MPI_Type_commit(&h.st[m]);
        MPI_Type_commit(&h.rt[m]);
        h.n[m] = sub[0] * sub[1] * sub[2];
        moved += 8L * h.n[m];
        h.sb[m] = h.rb[m] = NULL;
        if (h.bytes) {
          h.sb[m] = malloc(8L * h.n[m]);
          h.rb[m] = malloc(8L * h.n[m]);
          for (int i = 0; i < h.n[m]; ++i) h.sb[m][i] = rank * 1e7 + m * 1e5 + i;
        }
        for (int i = 0; i < 3; ++i) c[i] = coords[i] + d[i];
        MPI_Cart_rank(h.cart, c, &h.to[m]);
        for (int i = 0; i < 3; ++i) c[i] = coords[i] - d[i];
        MPI_Cart_rank(h.cart, c, &h.from[m]);
        ++m;
      }
      double tp, t = timed(halo, &h, &tp);
      uint64_t sum = fnv((unsigned char *)h.a, cells * sizeof(double));
      for (int i = 0; i < 26 && h.bytes; ++i) sum ^= fnv((unsigned char *)h.rb[i], 8L * h.n[i]) + i;
      if (rank == 0) printf("row %s %d %ld %.9e 1 %016llx %.9e\n", kind, n, moved, t, (unsigned long long)sum, tp);
      for (int i = 0; i < 26; ++i) {
        MPI_Type_free(&h.st[i]);
        MPI_Type_free(&h.rt[i]);
        free(h.sb[i]);
        free(h.rb[i]);
      }
      MPI_Comm_free(&h.cart);
      free(h.a);
      continue;
    }
    if (strcmp(kind, "calls") == 0) { /* see message_type() */
      Calls c;
      c.span = block > 0 ? 2 * bytes : bytes;
      c.src = malloc(c.span);
      c.dst = calloc(16, c.span);
      for (long i = 0; i < c.span; ++i) c.src[i] = (unsigned char)(i * 29 + rank);
      c.count = message_type(block, bytes, 0, &c.t);
      double tp, t = timed(calls, &c, &tp) / 33;
      tp /= 33;
      if (rank == 0)
        printf("row calls %ld %ld %.9e 1 %016llx %.9e\n", block, bytes, t,
               (unsigned long long)fnv(c.dst, 16 * c.span), tp);
      if (block > 0) MPI_Type_free(&c.t);
      free(c.src);
      free(c.dst);
      continue;
    }
    /* vector of MPI_BYTE blocks, stride 2 x block; or the same bytes contiguous (block 0) */
    Ping p;
    long span = block > 0 ? 2 * bytes : bytes;
    p.src = malloc(span);
    p.dst = malloc(span);
    for (long i = 0; i < span; ++i) { p.src[i] = (unsigned char)(i * 131 + 7); p.dst[i] = 0xEE; }
    /* kinds: vector (to the other rank), self (to this rank); a "d" prefix: MPI_DOUBLE blocks */
    int dbl = kind[0] == 'd';
    p.count = message_type(block, bytes, dbl, &p.t);
    int self = strcmp(kind + dbl, "self") == 0;
    double tp, t = timed(self ? selfping : pingpong, &p, &tp);
    int ok = 1;
    if (rank == 0)
      for (long i = 0; i < span && ok; ++i) {
        int inside = block > 0 ? (i % (2 * block)) < block : 1;
        ok = inside ? p.dst[i] == p.src[i] : p.dst[i] == 0xEE;
      }
    if (rank == 0)
      printf("row %s %ld %ld %.9e %d %016llx %.9e\n", block > 0 ? kind : "contig", block, bytes, t, ok,
             (unsigned long long)fnv(p.dst, span), tp);
    if (block > 0) MPI_Type_free(&p.t);
    free(p.src);
    free(p.dst);
  }
  fflush(stdout);
  MPI_Finalize();
  return 0;
}
