! A Fortran MPI program run with and without the interposer, built twice: `use mpi` and, with
! -DHAULER_F08, `use mpi_f08` (handles and statuses are derived types there; Open MPI's f08 layer
! calls ompi_x_f and pmpi_test_ ..., not the mpi_x_ names). Derived vector and subarray types go
! through Send/Recv, Sendrecv, Isend/Irecv completed by Waitall, Waitany, Wait, Test, Testall and
! Waitsome loops (and seen done by Request_get_status), and MPI_Pack/MPI_Unpack. Every rank writes
! what it received and the statuses it saw to <prefix>.<rank>; the files must be byte-identical
! with and without the shim.
#ifdef HAULER_F08
#define SOURCE(s) s%MPI_SOURCE
#define TAG(s) s%MPI_TAG
#define SOURCES(s, r) s(r)%MPI_SOURCE
#define TAGS(s, r) s(r)%MPI_TAG
#define VAL(h) h%MPI_VAL
#else
#define SOURCE(s) s(MPI_SOURCE)
#define TAG(s) s(MPI_TAG)
#define SOURCES(s, r) s(MPI_SOURCE, r)
#define TAGS(s, r) s(MPI_TAG, r)
#define VAL(h) h
#endif
program fort
#ifdef HAULER_F08
  use mpi_f08
#else
  use mpi
#endif
  implicit none
  integer, parameter :: n = 48
  double precision :: a(n, n), b(n, n)
  integer :: cube(12, 10, 8), got(12, 10, 8)
  integer :: rank, nprocs, ierr, right, left, u, i, j, k, idx, cnt, pos, outc, idxs(2)
#ifdef HAULER_F08
  type(MPI_Datatype) :: row1, rowt, subt
  type(MPI_Request) :: reqs(4)
  type(MPI_Status) :: sts(4), st
#else
  integer :: row1, rowt, subt, reqs(4), sts(MPI_STATUS_SIZE, 4), st(MPI_STATUS_SIZE)
#endif
  integer :: sizes(3), subs(3), starts(3)
  integer(kind=MPI_ADDRESS_KIND) :: lb, ext
  logical :: done
  character(len=512) :: prefix
  character(len=16) :: rs
  character, allocatable :: packed(:)

  call MPI_Init(ierr)
  call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
  call MPI_Comm_size(MPI_COMM_WORLD, nprocs, ierr)
  call get_command_argument(1, prefix)
  write (rs, '(I0)') rank
  open (newunit=u, file=trim(prefix)//'.'//trim(rs), access='stream', form='unformatted', status='replace')
  right = mod(rank + 1, nprocs)
  left = mod(rank + nprocs - 1, nprocs)

  do j = 1, n
    do i = 1, n
      a(i, j) = rank * 100000 + i * 1000 + j + 0.25d0
    end do
  end do
  do k = 1, 8
    do j = 1, 10
      do i = 1, 12
        cube(i, j, k) = rank * 1000000 + i * 10000 + j * 100 + k
      end do
    end do
  end do

  ! a row of a column-major matrix (n blocks of one double, stride n), resized to one double so
  ! that count k means k consecutive rows
  call MPI_Type_vector(n, 1, n, MPI_DOUBLE_PRECISION, row1, ierr)
  lb = 0
  ext = 8
  call MPI_Type_create_resized(row1, lb, ext, rowt, ierr)
  call MPI_Type_free(row1, ierr)
  call MPI_Type_commit(rowt, ierr)
  sizes = (/12, 10, 8/)
  subs = (/5, 4, 3/)
  starts = (/2, 3, 1/)
  call MPI_Type_create_subarray(3, sizes, subs, starts, MPI_ORDER_FORTRAN, MPI_INTEGER, subt, ierr)
  call MPI_Type_commit(subt, ierr)

  ! blocking: rows 3..5 to the right, received into rows 7..9
  b = -1d0
  if (mod(rank, 2) == 0) then
    call MPI_Send(a(3, 1), 3, rowt, right, 11, MPI_COMM_WORLD, ierr)
    call MPI_Recv(b(7, 1), 3, rowt, MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, st, ierr)
  else
    call MPI_Recv(b(7, 1), 3, rowt, MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, st, ierr)
    call MPI_Send(a(3, 1), 3, rowt, right, 11, MPI_COMM_WORLD, ierr)
  end if
  call MPI_Get_count(st, rowt, cnt, ierr)
  write (u) b, SOURCE(st), TAG(st), cnt

  ! Sendrecv of one subarray each way
  got = -1
  call MPI_Sendrecv(cube, 1, subt, right, 12, got, 1, subt, left, 12, MPI_COMM_WORLD, st, ierr)
  call MPI_Get_count(st, subt, cnt, ierr)
  write (u) got, SOURCE(st), TAG(st), cnt

  ! non-blocking, completed by Waitall
  b = -2d0
  got = -2
  call MPI_Irecv(b(1, 1), 2, rowt, left, 21, MPI_COMM_WORLD, reqs(1), ierr)
  call MPI_Irecv(got, 1, subt, MPI_ANY_SOURCE, 22, MPI_COMM_WORLD, reqs(2), ierr)
  call MPI_Isend(a(10, 1), 2, rowt, right, 21, MPI_COMM_WORLD, reqs(3), ierr)
  call MPI_Isend(cube, 1, subt, right, 22, MPI_COMM_WORLD, reqs(4), ierr)
  call MPI_Waitall(4, reqs, sts, ierr)
  write (u) b, got, SOURCES(sts, 1:2), TAGS(sts, 1:2), VAL(reqs)

  ! non-blocking, completed by Waitany and then by a Testall loop
  call post_rows(20, 30, 4, 31)
  call MPI_Waitany(2, reqs, idx, st, ierr)
  write (u) idx == 1 .or. idx == 2  ! which one completes first is timing
  done = .false.
  do while (.not. done)
    call MPI_Testall(2, reqs, done, MPI_STATUSES_IGNORE, ierr)
  end do
  write (u) b, VAL(reqs(1:2))

  ! a Test loop and a Wait
  call post_rows(5, 7, 3, 51)
  done = .false.
  do while (.not. done)
    call MPI_Test(reqs(1), done, st, ierr)
  end do
  call MPI_Wait(reqs(2), MPI_STATUS_IGNORE, ierr)
  write (u) b, SOURCE(st), TAG(st), VAL(reqs(1:2))

  ! a Waitsome loop
  got = -5
  call MPI_Irecv(got, 1, subt, left, 52, MPI_COMM_WORLD, reqs(1), ierr)
  call MPI_Isend(cube, 1, subt, right, 52, MPI_COMM_WORLD, reqs(2), ierr)
  cnt = 0
  do while (cnt < 2)
    call MPI_Waitsome(2, reqs, outc, idxs, sts, ierr)
    if (outc /= MPI_UNDEFINED) cnt = cnt + outc
  end do
  write (u) got, VAL(reqs(1:2))

  ! Request_get_status says done (the data must be there), then Waitall frees the requests
  call post_rows(2, 12, 2, 61)
  done = .false.
  do while (.not. done)
    call MPI_Request_get_status(reqs(1), done, st, ierr)
  end do
  write (u) b, SOURCE(st), TAG(st)
  call MPI_Waitall(2, reqs, MPI_STATUSES_IGNORE, ierr)
  write (u) b, VAL(reqs(1:2))

  ! MPI_Pack / MPI_Unpack of a subarray and two rows, exchanged as MPI_PACKED
  allocate (packed(8 * (60 + 2 * n) + 64))
  pos = 0
  call MPI_Pack(cube, 1, subt, packed, size(packed), pos, MPI_COMM_WORLD, ierr)
  call MPI_Pack(a(40, 1), 2, rowt, packed, size(packed), pos, MPI_COMM_WORLD, ierr)
  call MPI_Sendrecv_replace(packed, size(packed), MPI_PACKED, right, 41, left, 41, MPI_COMM_WORLD, st, ierr)
  got = -4
  b = -4d0
  pos = 0
  call MPI_Unpack(packed, size(packed), pos, got, 1, subt, MPI_COMM_WORLD, ierr)
  call MPI_Unpack(packed, size(packed), pos, b(1, 1), 2, rowt, MPI_COMM_WORLD, ierr)
  write (u) got, b, pos

  call MPI_Type_free(rowt, ierr)
  call MPI_Type_free(subt, ierr)
  write (u) rowt == MPI_DATATYPE_NULL, subt == MPI_DATATYPE_NULL
  close (u)
  ! the profiling switch: pauses the shim, resumes it (both calls must reach it from Fortran)
  call MPI_Pcontrol(0)
  call MPI_Pcontrol(1)
  call MPI_Finalize(ierr)

contains

  ! poisons b, then reqs(1) receives n rows from the left at row `at`, reqs(2) sends n rows
  ! from row `from` to the right
  subroutine post_rows(at, from, n, tag)
    integer, intent(in) :: at, from, n, tag
    b = -dble(tag)
    call MPI_Irecv(b(at, 1), n, rowt, left, tag, MPI_COMM_WORLD, reqs(1), ierr)
    call MPI_Isend(a(from, 1), n, rowt, right, tag, MPI_COMM_WORLD, reqs(2), ierr)
  end subroutine post_rows
end program fort
