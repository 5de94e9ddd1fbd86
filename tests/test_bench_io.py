"""`hauler-bench io --quick` as a user runs it (a subprocess): structure and correctness, never speed."""
import json
import os
import shutil
import subprocess
import sys

import pytest


def bench(*args):
    p = subprocess.run([sys.executable, "-m", "hauler.bench.cli", "io"] + list(args), env=dict(os.environ),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"hauler-bench io {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    return json.loads(bench("--quick", "--json", "--dir", str(d), "--parts", "sweep,file",
                            "--sizes", "4K,1M", "--qd", "1,8", "--file-size", "8M", "--budget", "2M",
                            "--repeat", "1"))


def test_rows_correct_and_complete(quick):
    rows = quick["rows"]
    assert quick["benchmark"] == "io"
    sweep = [r for r in rows if r["part"] == "sweep"]
    assert {(r["pattern"], r["bs"], r["qd"]) for r in sweep} == {
        (p, b, q) for p in ("read", "write", "randread", "randwrite") for b in (4096, 1 << 20) for q in (1, 8)}
    files = [r for r in rows if r["part"] == "file"]
    peers = {(r["pattern"], r["peer"]) for r in files}
    assert ("read", "numpy.fromfile") in peers and ("write", "numpy.tofile") in peers
    assert ("read", "python read") in peers
    for r in rows:
        assert r["correct"] is True, r
        assert r["hauler_gbps"] > 0
    keys = {t["key"] for t in quick["targets"]}
    assert keys == {"fio_1M_qd32", "cold_1G", "offload_hidden", "offload_vs_limit", "optimizer_step",
                    "optimizer_rss"}


def test_offload_row_measures_a_training_loop(tmp_path):
    pytest.importorskip("torch")
    rep = json.loads(bench("--quick", "--json", "--dir", str(tmp_path), "--parts", "offload"))
    (row,) = [r for r in rep["rows"] if r["part"] == "offload"]
    assert row["correct"] is True and row["torch_threads"] >= 1
    # checked, not assumed: the gradients compared after bytes went to the store and back
    assert row["check"]["max_abs_diff"] == 0.0 and row["check"]["bytes_written"] > 0 < row["check"]["bytes_read"]
    assert len(row["rounds"]["plain"]) == len(row["rounds"]["offload"]) == 3
    # the quick model saves 9 tensors of 2 MiB per step (4 x (Linear input, GELU input), and the
    # loss's square), each written once and read back unless still in memory
    assert row["bytes_written_per_step"] == 9 * (2 << 20)
    assert 0 < row["bytes_read_per_step"] <= row["bytes_written_per_step"] - 2 * (2 << 20)  # keep_last=2
    assert row["io_time_s_per_step"] > 0 and 0 <= row["hidden_fraction"] <= 1
    assert row["peak_rss_mib_plain"] > 0 and row["peak_rss_mib_offload"] > 0
    (t,) = [t for t in rep["targets"] if t["key"] == "offload_hidden"]
    if row["torch_threads"] < len(os.sched_getaffinity(0)):   # decided where a core is left free
        assert t["status"] in ("PASS", "MISS") and t["worst"] == row["hidden_fraction"]
    else:
        assert t["status"] == "N/A" and t["worst"] is None and "no offload row with a core left free" in t["measured"]
    assert row["offload_path"] == "host" and row["failed_writes"] == 0
    if shutil.which("fio"):   # the limit, measured in the same run (--quick too)
        assert len(row["rounds"]["plain"]) and row["fio_beside_exposed_s_per_step"] >= 0
        (t,) = [t for t in rep["targets"] if t["key"] == "offload_vs_limit"]
        assert t["status"] in ("PASS", "MISS", "N/A")


def test_table_has_header_and_targets(tmp_path):
    out = bench("--quick", "--dir", str(tmp_path), "--parts", "file", "--file-size", "4M", "--repeat", "1",
                "--no-fio")
    assert out.startswith("# hauler-bench io")
    assert "# backend" in out and "# targets" in out
    assert "fio is not installed" not in out


def test_fallback_backend_prints_a_banner(tmp_path):
    env = dict(os.environ, HAULER_IO_BACKEND="threads")
    p = subprocess.run([sys.executable, "-m", "hauler.bench.cli", "io", "--quick", "--dir", str(tmp_path),
                        "--parts", "file", "--file-size", "4M", "--repeat", "1", "--no-fio"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "threads (forced by HAULER_IO_BACKEND=threads)" in p.stdout
    assert "# WARNING: I/O backend threads" in p.stdout


def test_registration_fallback_prints_a_banner(tmp_path):
    """A registration that fails (RLIMIT_MEMLOCK, CAP_IPC_LOCK dropped) is named in the banner."""
    import resource
    import shutil
    from hauler import io
    if io.backend() != "io_uring":
        pytest.skip("io_uring unavailable here: " + io.backend_description())
    cmd = [sys.executable, "-m", "hauler.bench.cli", "io", "--quick", "--dir", str(tmp_path),
           "--parts", "file", "--file-size", "4M", "--repeat", "1", "--no-fio"]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("setpriv (util-linux) is needed to drop CAP_IPC_LOCK as root")
        cmd = [shutil.which("setpriv"), "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--"] + cmd
    p = subprocess.run(cmd, env=dict(os.environ, HAULER_IO_REGISTER="1"), capture_output=True, text=True,
                       timeout=300,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_MEMLOCK, (65536, 65536)))
    assert p.returncode == 0, p.stderr
    assert "# WARNING: io_uring REGISTRATION FAILED" in p.stdout and "ENOMEM" in p.stdout, p.stdout


def test_whole_file_writes_are_checked_against_what_was_written(tmp_path):
    """Every writer's file is compared with the source (torch.save's through torch.load): a file
    that differs in one byte reads as not correct."""
    import numpy as np
    from hauler.bench.io import _written_right
    torch = pytest.importorskip("torch")
    src = np.arange(4096, dtype=np.uint8)
    paths = {n: str(tmp_path / n) for n in ("numpy", "python", "torch")}
    hpath = str(tmp_path / "hauler")
    for p in (hpath, paths["numpy"], paths["python"]):
        src.tofile(p)
    torch.save(torch.from_numpy(src), paths["torch"])
    names = ("hauler", "numpy.tofile", "python write", "torch.save")
    assert all(_written_right(n, paths, hpath, src, torch) for n in names)
    bad = src.copy()
    bad[100] ^= 1
    assert not any(_written_right(n, paths, hpath, bad, torch) for n in names)
