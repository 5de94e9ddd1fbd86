/* The sticky-bounds case on which Open MPI and MPICH disagree: a struct of a
 * short subarray (extent 80 through its explicit upper bound) and two doubles
 * at displacement 328. Prints the library's bounds, then MPI_Pack of two
 * elements of a patterned buffer (the second element starts one extent after
 * the first, so the packed bytes show which extent the library uses). */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int sizes[1] = {40}, subsizes[1] = {3}, starts[1] = {2};
  MPI_Datatype sub, st;
  MPI_Type_create_subarray(1, sizes, subsizes, starts, MPI_ORDER_C, MPI_SHORT, &sub);
  int bl[2] = {1, 2};
  MPI_Aint disp[2] = {0, 328};
  MPI_Datatype types[2] = {sub, MPI_DOUBLE};
  MPI_Type_create_struct(2, bl, disp, types, &st);
  MPI_Type_commit(&st);
  MPI_Aint lb, ext, tlb, text;
  int size;
  MPI_Type_get_extent(st, &lb, &ext);
  MPI_Type_get_true_extent(st, &tlb, &text);
  MPI_Type_size(st, &size);
  printf("lb %ld extent %ld size %d true_lb %ld true_extent %ld\n", (long)lb, (long)ext, size, (long)tlb, (long)text);
  static unsigned char src[4096], out[256];
  for (int i = 0; i < 4096; ++i) src[i] = (unsigned char)(i % 251);
  int pos = 0;
  MPI_Pack(src, 2, st, out, (int)sizeof out, &pos, MPI_COMM_SELF);
  printf("packed");
  for (int i = 0; i < pos; ++i) printf(" %d", out[i]);
  printf("\n");
  MPI_Type_free(&st);
  MPI_Type_free(&sub);
  MPI_Finalize();
  return 0;
}
