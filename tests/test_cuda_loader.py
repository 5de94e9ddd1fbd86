"""The CUDA driver is loaded in one place: csrc/common/cuda_driver.cpp opens libcuda and binds its
entry points (typed once, in cuda_driver.hpp); the core, the cuFile path and the MPI shim ask it."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADER = "csrc/common/cuda_driver.cpp"
SOURCES = [p for d in ("csrc", "interpose", "tests") for p in (ROOT / d).rglob("*")
           if p.suffix in (".c", ".cc", ".cpp", ".h", ".hpp", ".cu", ".cuh")]


def _sites(pattern):
    found = []
    for p in SOURCES:
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if re.search(pattern, line):
                found.append(f"{p.relative_to(ROOT)}:{n}")
    return found


def test_sources_are_found():
    assert any(str(p.relative_to(ROOT)) == LOADER for p in SOURCES), SOURCES[:5]
    assert len(SOURCES) > 20


def test_one_dlopen_of_libcuda():
    sites = _sites(r'dlopen\s*\(\s*"libcuda')
    assert len(sites) == 1 and sites[0].startswith(LOADER + ":"), sites


def test_driver_entry_points_bound_only_by_the_loader():
    # cu* driver symbols (cuFile's are libcufile's, bound by csrc/io/cufile.cpp)
    sites = _sites(r'(dlsym\s*\([^,]+,|bind\s*\([^,]+,)\s*"cu(?!File)[A-Z]')
    assert sites and all(s.startswith(LOADER + ":") for s in sites), sites
