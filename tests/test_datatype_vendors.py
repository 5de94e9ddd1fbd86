"""Both installed MPI libraries, not just the one mpi4py is built against.

The issue's sticky-bounds case: Open MPI reports extent 80 (the standard's
text: explicit upper-bound markers dominate), MPICH 344. hauler's own
constructors follow the standard; given each library's bounds, hauler packs
exactly the bytes that library's MPI_Pack produces."""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hauler.datatype import DOUBLE, SHORT, Datatype

HERE = Path(__file__).resolve().parent
VENDORS = {"openmpi": ("mpicc.openmpi", "mpiexec.openmpi"), "mpich": ("mpicc.mpich", "mpiexec.mpich")}


def run_case(vendor, tmp_path):
    cc, run = VENDORS[vendor]
    if not shutil.which(cc) or not shutil.which(run):
        pytest.skip(f"{vendor} is not installed ({cc}, {run})")
    exe = tmp_path / f"struct_bounds_{vendor}"
    subprocess.run([cc, "-O1", "-o", str(exe), str(HERE / "c" / "struct_bounds.c")], check=True)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    args = [run, "-n", "1"] + (["--oversubscribe"] if vendor == "openmpi" else []) + [str(exe)]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=120, env=env).stdout
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    b = lines["lb"].split()
    bounds = {"lb": int(b[0]), "extent": int(b[2]), "size": int(b[4]), "true_lb": int(b[6]), "true_extent": int(b[8])}
    return bounds, np.array([int(x) for x in lines["packed"].split()], dtype=np.uint8)


def issue_case():
    sub = Datatype.subarray([40], [3], [2], SHORT)
    return Datatype.struct([1, 2], [0, 328], [sub, DOUBLE])


def test_hauler_follows_the_standard_on_the_sticky_bounds_case():
    t = issue_case()
    assert (t.lb, t.extent, t.size, t.true_lb, t.true_extent) == (0, 80, 22, 4, 340)


@pytest.mark.parametrize("vendor,extent", [("openmpi", 80), ("mpich", 344)])
def test_hauler_packs_like_each_library_with_its_bounds(vendor, extent, tmp_path):
    bounds, packed = run_case(vendor, tmp_path)
    assert bounds["extent"] == extent, f"{vendor} changed its answer on this case: {bounds}"
    t = issue_case()
    assert (bounds["size"], bounds["true_lb"], bounds["true_extent"]) == (t.size, t.true_lb, t.true_extent)
    as_library = Datatype.resized(t, bounds["lb"], bounds["extent"])  # what decoding from that library yields
    src = (np.arange(4096) % 251).astype(np.uint8)
    assert np.array_equal(as_library.pack(src, count=2), packed)
