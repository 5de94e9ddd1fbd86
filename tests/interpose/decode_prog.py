"""Types the shim and Datatype.from_mpi both decode (darray in both orders and every
distribution, subarray, resized, struct, nested dup), packed three ways in one process under the
shim: mpi4py's MPI_Pack through the shim, the same call with the shim paused (MPI_Pcontrol(0):
the library's own MPI_Pack), and hauler's Datatype.from_mpi. Writes one line per type and count
to OUTPREFIX.<rank>: name, count, and whether each way matched the library.

    mpiexec -n 1 python decode_prog.py OUTPREFIX
"""
import sys

import numpy as np
from mpi4py import MPI

from hauler.datatype import Datatype

comm = MPI.COMM_WORLD
ORIGIN = 256  # where each type's origin sits in the source buffer: room for negative bounds


def types():
    D, I = MPI.DOUBLE, MPI.INT
    B, C, N, DF = MPI.DISTRIBUTE_BLOCK, MPI.DISTRIBUTE_CYCLIC, MPI.DISTRIBUTE_NONE, MPI.DISTRIBUTE_DFLT_DARG
    for order, oname in ((MPI.ORDER_C, "C"), (MPI.ORDER_FORTRAN, "F")):
        for dists, dargs, psizes in (((B, B), (DF, DF), (2, 2)), ((C, N), (DF, DF), (3, 1)),
                                     ((C, B), (2, 3), (2, 2)), ((B, C), (4, 1), (2, 3))):
            for rank in range(psizes[0] * psizes[1]):
                yield (f"darray-{oname}-{dists}-{dargs}-{psizes}-r{rank}",
                       D.Create_darray(psizes[0] * psizes[1], rank, (7, 6), dists, dargs, psizes, order))
        yield f"subarray-{oname}", D.Create_subarray((6, 7, 3), (2, 3, 2), (1, 2, 1), order)
    yield "resized", I.Create_vector(3, 1, 4).Create_resized(-8, 64)
    vec = D.Create_vector(2, 1, 3)
    yield "struct", MPI.Datatype.Create_struct((1, 2, 3), (0, 16, 48), (MPI.CHAR, vec, I))
    yield "nested-dup", D.Create_hvector(3, 2, 40).Dup().Dup()
    yield "indexed-of-resized", I.Create_resized(-4, 12).Create_indexed((2, 1), (0, 5))


def pack(t, src, count):
    # mpi4py's Pack takes the count from len(inbuf) // extent (every extent here is > 0)
    buf = bytearray(t.Pack_size(count, comm))
    n = t.Pack(src[ORIGIN:ORIGIN + count * t.Get_extent()[1]], buf, 0, comm)
    return bytes(buf[:n])


out = open(f"{sys.argv[1]}.{comm.Get_rank()}", "w")
for name, t in types():
    t.Commit()
    lb, extent = t.Get_extent()
    for count in (1, 3):
        src = (np.arange(2 * ORIGIN + count * abs(extent) + 4096) * 7 % 251).astype(np.uint8)
        shim = pack(t, src, count)
        MPI.Pcontrol(0)
        lib = pack(t, src, count)
        MPI.Pcontrol(1)
        py = Datatype.from_mpi(t).pack(src, count, offset=ORIGIN).tobytes()
        out.write(f"{name} x{count}: {len(lib)} bytes shim={'same' if shim == lib else 'DIFFERS'} "
                  f"python={'same' if py == lib else 'DIFFERS'}\n")
    t.Free()
out.close()
