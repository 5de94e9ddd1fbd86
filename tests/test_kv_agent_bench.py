"""The two-process transfer benchmark runs end to end (tiny sizes; figures are not checked: speed
is the benchmark's business, never a test's; the bytes are)."""
import os
import subprocess
import sys


def test_bench_kv_transfer_runs():
    r = subprocess.run([sys.executable, "-m", "hauler.bench.kv_transfer", "--extents", "4K,64K", "--counts", "16",
                        "--repeat", "1", "--no-nixl"], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if not ln.startswith("#")]
    assert lines[0].split()[:3] == ["extent", "blocks", "MiB"]
    assert [ln.split()[:2] for ln in lines[1:3]] == [["4096", "16"], ["65536", "16"]]
    assert [ln.split()[-1] for ln in lines[1:3]] == ["yes", "yes"]  # the blocks read equal the peer's
    assert "read issued -> notification seen: hauler_cma" in r.stdout
