"""Shared pytest set-up for hauler's suites.

Hypothesis runs under the "ci" profile: no deadline (CI machines are noisy; tests never assert
on time), fresh random inputs every run (never derandomized), and the reproduction blob printed
on failure. HAULER_HYPOTHESIS_PROFILE=thorough runs ten times the examples;
HAULER_TEST_EXAMPLES scales every test's example count (e.g. 0.1 for a quick look).
"""
from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `import support` from any rootdir

_COMMON = dict(deadline=None, print_blob=True, derandomize=False,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])
settings.register_profile("ci", **_COMMON)
settings.register_profile("thorough", **_COMMON)
settings.load_profile(os.environ.get("HAULER_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def gpu_emulation():
    """The host emulation of the GPU kernels stands in for the GPU for this test."""
    from hauler import _core

    before = _core._gpu_emulation()
    _core._use_gpu_emulation(True)
    try:
        yield
    finally:
        _core._use_gpu_emulation(before)


@pytest.fixture
def no_gpu():
    """The real state of this machine's GPU path, with the emulation off; skips where a GPU
    (or a GPU library) is actually usable."""
    from hauler import _core

    before = _core._gpu_emulation()
    _core._use_gpu_emulation(False)
    try:
        if _core.cuda_available():
            pytest.skip("a GPU is available here: " + _core.cuda_status())
        yield
    finally:
        _core._use_gpu_emulation(before)


@pytest.fixture
def parallel_always():
    """Packs of any size may run multi-threaded (HAULER_PACK_PARALLEL_MIN=0), restored after."""
    from hauler import config

    config.set("HAULER_PACK_PARALLEL_MIN", 0)
    try:
        yield
    finally:
        config.set("HAULER_PACK_PARALLEL_MIN", None)


@pytest.fixture(scope="session")
def MPI():
    """mpi4py.MPI, imported only by the tests that use it (importing it initializes MPI)."""
    return pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed (pip install -e '.[test]')")
