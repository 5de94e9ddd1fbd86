"""Helpers shared by the test suites (hypothesis strategies, MPI twins, buffers)."""
import os


def examples(n: int) -> int:
    """A test's hypothesis example count, scaled by HAULER_TEST_EXAMPLES (default 1) and by ten
    under HAULER_HYPOTHESIS_PROFILE=thorough."""
    scale = float(os.environ.get("HAULER_TEST_EXAMPLES", "1") or 1)
    if os.environ.get("HAULER_HYPOTHESIS_PROFILE") == "thorough":
        scale *= 10
    return max(1, int(n * scale))
