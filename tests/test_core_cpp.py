"""The C++ core's own test programs (tests/core/*.cpp), built and run by scripts/core_tests.sh:
each program must build and pass, and the script must report every one of them."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "core_tests.sh"
PROGRAMS = sorted(p.stem for p in (ROOT / "tests" / "core").glob("*.cpp"))


@pytest.fixture(scope="module")
def core_run():
    env = dict(os.environ)
    env.setdefault("CORE_TEST_TIMEOUT", "600")
    r = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env)
    return r, r.stdout + r.stderr


def test_there_are_core_tests():
    assert PROGRAMS, "tests/core holds no C++ test programs"


@pytest.mark.parametrize("program", PROGRAMS)
def test_core_program_passes(core_run, program):
    r, out = core_run
    assert re.search(rf"^PASS {re.escape(program)} ", out, re.M), (
        f"{program} did not pass (scripts/core_tests.sh exit {r.returncode}):\n{out[-6000:]}")


def test_core_script_reports_all_passed(core_run):
    r, out = core_run
    m = re.search(r"^(\d+) passed, (\d+) failed$", out, re.M)
    assert r.returncode == 0 and m and int(m.group(2)) == 0, f"exit {r.returncode}:\n{out[-6000:]}"
    assert int(m.group(1)) == len(PROGRAMS), out[-2000:]
