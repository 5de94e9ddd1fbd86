"""MPI discovery: HAULER_MPICC > MPICC > PATH, vendor read from the wrapper, launcher quirks."""
import os
import shutil
import subprocess

import pytest

from hauler import mpi_find

OPENMPI_CC = shutil.which("mpicc.openmpi")
MPICH_CC = shutil.which("mpicc.mpich")


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("HAULER_MPICC", raising=False)
    monkeypatch.delenv("MPICC", raising=False)
    return monkeypatch


@pytest.mark.skipif(not (OPENMPI_CC and MPICH_CC), reason="needs both Open MPI and MPICH")
def test_order_hauler_mpicc_then_mpicc(clean_env):
    clean_env.setenv("MPICC", "mpicc.openmpi")
    cc = mpi_find.find_mpicc()
    assert (cc.origin, cc.vendor, cc.path) == ("MPICC", "Open MPI", OPENMPI_CC)
    assert "Open MPI" in cc.version_line
    clean_env.setenv("HAULER_MPICC", MPICH_CC)
    cc = mpi_find.find_mpicc()
    assert (cc.origin, cc.vendor, cc.path) == ("HAULER_MPICC", "MPICH", MPICH_CC)
    assert "MPICH" in cc.version_line


def test_path_fallback(clean_env):
    cc = mpi_find.find_mpicc()
    if shutil.which("mpicc") is None:
        assert cc is None
    else:
        assert cc.origin == "PATH" and cc.path == os.path.abspath(shutil.which("mpicc"))


def test_named_compiler_that_does_not_exist_is_an_error(clean_env):
    clean_env.setenv("HAULER_MPICC", "/nonexistent/mpicc")
    clean_env.setenv("MPICC", "mpicc")
    with pytest.raises(mpi_find.MpiNotFound, match=r"HAULER_MPICC='/nonexistent/mpicc'"):
        mpi_find.find_mpicc()


def test_no_mpi_gives_the_install_command(clean_env, tmp_path):
    clean_env.setenv("PATH", str(tmp_path))
    assert mpi_find.find_mpicc() is None
    hint = mpi_find.install_hint()
    assert hint.endswith("apt-get install -y openmpi-bin libopenmpi-dev")
    with pytest.raises(mpi_find.MpiNotFound, match="apt-get install"):
        mpi_find.find_mpiexec()


@pytest.mark.parametrize("compiler", [c for c in (OPENMPI_CC, MPICH_CC) if c])
def test_compile_and_launch_two_ranks(clean_env, tmp_path, compiler):
    """The launcher found for each installed MPI, with its quirks, runs a real 2-rank job."""
    clean_env.setenv("HAULER_MPICC", compiler)
    cc = mpi_find.find_mpicc()
    src = tmp_path / "hello.c"
    src.write_text('#include <mpi.h>\n#include <stdio.h>\n'
                   'int main(int c, char** v) { int r, n; MPI_Init(&c, &v);'
                   ' MPI_Comm_rank(MPI_COMM_WORLD, &r); MPI_Comm_size(MPI_COMM_WORLD, &n);'
                   ' int s = r, t = 0; MPI_Allreduce(&s, &t, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);'
                   ' printf("rank %d of %d sum %d\\n", r, n, t); MPI_Finalize(); return 0; }\n')
    exe = tmp_path / "hello"
    subprocess.run([cc.path, *cc.args, str(src), "-o", str(exe)], check=True, timeout=120)
    p = subprocess.run(mpi_find.mpiexec_argv(2, cc) + [str(exe)], env=mpi_find.mpiexec_env(cc),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(p.stdout.split("\n"))[-2:] == ["rank 0 of 2 sum 1", "rank 1 of 2 sum 1"]
