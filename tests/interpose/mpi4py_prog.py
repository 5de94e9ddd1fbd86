"""An unchanged mpi4py program: derived datatypes through Send/Recv, Isend/Irecv + Waitall,
Sendrecv and Pack/Unpack. Each rank writes what it received to OUTPREFIX.<rank>.

    mpiexec -n 2 python mpi4py_prog.py OUTPREFIX
"""
import sys

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
peer = 1 - rank
out = open(f"{sys.argv[1]}.{rank}", "wb")


def put(name, arr):
    out.write(f"{name} {arr.nbytes}\n".encode())
    out.write(arr.tobytes())


src = (np.arange(64 * 48, dtype=np.float64) + 1000 * rank).reshape(64, 48)
vec = MPI.DOUBLE.Create_vector(64, 3, 48).Commit()          # 3 columns of a 64 x 48 array
sub = MPI.DOUBLE.Create_subarray([64, 48], [10, 7], [5, 9]).Commit()
col = MPI.BYTE.Create_vector(4096, 1, 3).Commit()           # 1-byte blocks
raw = np.arange(3 * 4096, dtype=np.uint8) ^ rank

if rank < 2:
    r = np.full_like(src, -1.0)
    comm.Sendrecv([src, 1, vec], peer, 1, [r, 1, vec], peer, 1)
    put("sendrecv-vector", r)
    r = np.full_like(src, -1.0)
    reqs = [comm.Irecv([r, 1, sub], peer, 2), comm.Isend([src, 1, sub], peer, 2)]
    MPI.Request.Waitall(reqs)
    put("isend-subarray", r)
    rb = np.zeros_like(raw)
    if rank == 0:
        comm.Send([raw, 1, col], 1, 3)
        st = MPI.Status()
        comm.Recv([rb, 1, col], 1, 4, status=st)
    else:
        st = MPI.Status()
        comm.Recv([rb, 1, col], 0, 3, status=st)
        comm.Send([raw, 1, col], 0, 4)
    put("bytes-vector", rb)
    out.write(f"status count={st.Get_count(col)} elements={st.Get_elements(col)} "
              f"source={st.Get_source()} tag={st.Get_tag()}\n".encode())
    buf = bytearray(sub.Pack_size(2, comm))
    two = np.stack([src, src + 0.5])
    pos = sub.Pack(two, buf, 0, comm)
    put("packed", np.frombuffer(bytes(buf[:pos]), dtype=np.uint8))
    back = np.zeros_like(two)
    sub.Unpack(buf, 0, back, comm)
    put("unpacked", back)
for t in (vec, sub, col):
    t.Free()
out.close()
