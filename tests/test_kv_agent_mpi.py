"""hauler.kv.Agent(transport="mpi") under a real mpiexec -n 2 (tests/kv/mpi_agent.py)."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install -e '.[test]')")

from hauler import mpi_find  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mpi_read_write_two_ranks(seed):
    try:
        argv = mpi_find.mpiexec_argv(2)
    except mpi_find.MpiNotFound as e:
        pytest.skip(str(e))
    env = mpi_find.mpiexec_env()
    # Open MPI 4.1's default osc/rdma answers MPI_ERR_RMA_RANGE for dynamic windows over the
    # loopback/shared-memory BTLs these machines have; osc/pt2pt emulates RMA over them.
    env.setdefault("OMPI_MCA_osc", "pt2pt")
    r = subprocess.run(argv + [sys.executable, os.path.join(HERE, "kv", "mpi_agent.py"), str(seed)],
                       env=env, capture_output=True, text=True, timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "rank 0 OK" in out and "rank 1 OK" in out, out[-3000:]
