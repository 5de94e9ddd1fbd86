"""The two-process transfer benchmark runs end to end (tiny sizes; figures are not checked: speed
is the benchmark's business, never a test's; the bytes are)."""
import json
import os
import subprocess
import sys

import pytest


def test_bench_kv_transfer_runs():
    r = subprocess.run([sys.executable, "-m", "hauler.bench.kv_transfer", "--extents", "4K,64K", "--counts", "16",
                        "--repeat", "1", "--no-nixl", "--no-mooncake"], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if not ln.startswith("#")]
    assert lines[0].split()[:3] == ["extent", "blocks", "MiB"]
    assert [ln.split()[:2] for ln in lines[1:3]] == [["4096", "16"], ["65536", "16"]]
    assert [ln.split()[-1] for ln in lines[1:3]] == ["yes", "yes"]  # the blocks read equal the peer's
    assert "Mooncake: skipped (--no-mooncake)" in r.stdout
    assert "read issued -> notification seen: hauler_cma" in r.stdout


def _mooncake_imports():
    # in a child: the engine's native libraries stay out of the test process
    return subprocess.run([sys.executable, "-c", "from mooncake.engine import TransferEngine"],
                          capture_output=True, timeout=120).returncode == 0


@pytest.mark.skipif(not _mooncake_imports(), reason="mooncake.engine does not import (CI does not install it)")
def test_bench_kv_transfer_mooncake_row():
    # 2,100 extents: three Mooncake batches (at most 1,024 descriptors each) per request, more than
    # it is given in flight at once
    r = subprocess.run([sys.executable, "-m", "hauler.bench.kv_transfer", "--repeat", "1", "--no-nixl", "--json",
                        "--extents", "4K,64K", "--counts", "16,2100", "--max-bytes", "16M"],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    assert res["mooncake"] == "ran", res["mooncake"]
    assert [(row["extent"], row["blocks"]) for row in res["rows"]] == [(4096, 16), (4096, 2100), (65536, 16),
                                                                          (65536, 256)]
    for row in res["rows"]:
        assert row["mooncake_read"][0] > 0 and row["mooncake_write"][0] > 0
        # ok covers Mooncake's read (the blocks equal the peer's) and its write (the peer's pool holds
        # the written blocks)
        assert row["ok"] is True, row
    assert res["latency"]["mooncake"][0] > 0  # its notification reached the peer
