"""`hauler-bench pack` as a user runs it (a subprocess): structure and correctness, never speed."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from hauler.bench import core

ROW_KEYS = {"case", "kind", "base", "block", "stride", "packed_bytes", "extent", "hauler_pack_gbps",
            "hauler_unpack_gbps", "mpi_pack_gbps", "mpi_unpack_gbps", "memcpy1_gbps", "memcpyN_gbps",
            "memcpy_gbps", "pack_vs_mpi", "unpack_vs_mpi", "pack_vs_memcpy", "unpack_vs_memcpy",
            "correct", "checks", "kernel", "threads", "timings"}
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None


def bench(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "hauler.bench.cli"] + list(args), env=dict(os.environ),
                       capture_output=True, text=True, timeout=180)
    if check:
        assert p.returncode == 0, f"hauler-bench {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def quick_json():
    return json.loads(bench("pack", "--quick", "--json").stdout)


def test_quick_json_rows_correct(quick_json):
    rows = quick_json["rows"]
    assert quick_json["benchmark"] == "pack"
    assert {r["kind"] for r in rows} == {"vector", "subarray"}
    assert {r["base"] for r in rows} == {"byte", "double"}
    assert 1 in {r["block"] for r in rows}
    for r in rows:
        assert ROW_KEYS <= set(r), f"missing keys {ROW_KEYS - set(r)} in {r['case']}"
        assert r["correct"] is True, f"{r['case']}/{r['base']}/{r['block']}: {r['checks']}"
        assert all(v is not False for v in r["checks"].values())
        assert r["hauler_pack_gbps"] > 0 and r["hauler_unpack_gbps"] > 0 and r["memcpy_gbps"] > 0
        if HAVE_MPI4PY:
            assert r["checks"]["pack_vs_mpi"] is True and r["mpi_pack_gbps"] > 0
    assert [t["key"] for t in quick_json["targets"]] == ["mpi_1B", "mpi_8_16B", "mpi_all", "memcpy_64B"]
    assert all(t["status"] in ("PASS", "MISS", "N/A") for t in quick_json["targets"])
    info = quick_json["info"]
    assert info["machine"]["cores_usable"] >= 1 and info["hauler"]["version"]
    if HAVE_MPI4PY:
        assert info["mpi"]["available"] and info["mpi"]["library"]
        assert not quick_json["warnings"]


def test_table_output_header_rows_targets():
    out = bench("pack", "--quick", "--cases", "vector", "--base", "double", "--threads", "1").stdout
    lines = out.splitlines()
    assert lines[0] == "# hauler-bench pack"
    header = [l for l in lines if l.startswith("#")]
    rows = [l for l in lines if not l.startswith("#")]
    for word in ("hauler", "threads  1", "MPI", "machine", "GB/s", "correct"):
        assert any(l.startswith("# " + word) for l in header), f"no '# {word}' header line in:\n{out}"
    assert rows and all(l.split()[:2] == ["vector", "double"] and " ok" in l for l in rows), out
    assert any(l.startswith("# targets") for l in header)


def test_csv_and_no_mpi_banner():
    out = bench("pack", "--quick", "--no-mpi", "--cases", "subarray", "--csv", "--size", "256K").stdout
    assert "# WARNING: --no-mpi" in out
    body = [l for l in out.splitlines() if not l.startswith("#")]
    assert body[0].startswith("case,base,block,stride,hauler_pack_gbps")
    assert len(body) > 1 and all(",ok-np," in l for l in body[1:])


def test_no_subcommand_prints_help_and_exits_2():
    p = bench(check=False)
    assert p.returncode == 2 and "pack" in p.stderr


def test_importing_the_bench_does_not_initialize_mpi():
    code = ("import sys, hauler.bench, hauler.bench.cli, hauler.bench.core, hauler.bench.pack; "
            "assert 'mpi4py.MPI' not in sys.modules, 'mpi4py.MPI imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_core_helpers():
    assert core.parse_size("64M") == 64 << 20 and core.parse_size("8MiB") == 8 << 20
    assert core.parse_size("4096") == 4096 and core.parse_size("1.5k") == 1536
    with pytest.raises(ValueError):
        core.parse_size("lots")
    assert [core.format_size(n) for n in (1, 12, 1024, 65536, 64 << 20, 1536)] == ["1", "12", "1K", "64K",
                                                                                   "64M", "1536"]
    a, b = core.Timing([1.0, 2.0, 1.0]), core.Timing([3.0, 4.0, 2.0])
    assert core.paired_ratio(a, b) == 2.0
    t = core.time_interleaved({"x": lambda: None, "y": lambda: None}, repeat=3, warmup=0)
    assert len(t["x"].times) == len(t["y"].times) == 3


def test_gather_quick_json_rows_correct_and_targets():
    out = json.loads(bench("gather", "--quick", "--json", "--loader-batches", "2").stdout)
    assert out["benchmark"] == "gather"
    rows = out["rows"]
    assert {r["row_bytes"] for r in rows} == {64, 256, 1024} and {r["order"] for r in rows} == {"random", "sorted"}
    for r in rows:
        assert r["correct"] is True
        for k in ("hauler_gbps", "numpy_gbps", "index_select_gbps", "fancy_gbps", "memcpy_gbps", "vs_numpy",
                  "vs_index_select", "vs_memcpy"):
            assert r[k] > 0, k
    assert [t["key"] for t in out["targets"]] == ["gbps_512", "numpy_256", "isel_256", "memcpy_1k", "cache_bytes",
                                                  "cache_epoch"]
    assert all(t["status"] in ("PASS", "MISS", "N/A") for t in out["targets"])
    assert set(out["info"]["loader"]) == {"workers0_torch_s", "workers0_hauler_s", "workers2_torch_s",
                                          "workers2_hauler_s"}
    nvme = out["info"]["nvme"]                  # the file table block: cold gathers vs np.memmap
    assert {(r["row_bytes"], r["order"]) for r in nvme} == {(256, "random"), (256, "sorted"), (4096, "random"),
                                                            (4096, "sorted")}
    for r in nvme:
        assert r["correct"] is True and r["hauler_ms"] > 0 and r["memmap_ms"] > 0 and r["memmap_random_ms"] > 0
        # hauler reads only the 4 KiB blocks holding the rows
        assert r["useful_bytes"] <= r["hauler_read"] <= r["useful_bytes"] // r["row_bytes"] * 2 * 4096
    cache = {r["case"]: r for r in out["info"]["cache"]}   # the feature cache block (issue 22)
    assert list(cache) == ["none", "lru", "static", "hybrid", "memory"]
    assert all(r["correct"] is True and r["epoch_s"] > 0 for r in cache.values())
    assert cache["memory"]["bytes_read"] == 0 and cache["none"]["bytes_read"] > 0
    for k in ("lru", "static", "hybrid"):
        assert cache[k]["hits"] > 0 and cache[k]["bytes_read"] < cache["none"]["bytes_read"]


def test_gather_table_output():
    out = bench("gather", "--quick", "--no-loader", "--rows", "128", "--orders", "random").stdout
    lines = out.splitlines()
    assert lines[0] == "# hauler-bench gather"
    rows = [l for l in lines if not l.startswith("#")]
    assert len(rows) == 1 and rows[0].split()[:2] == ["128", "random"] and " ok " in rows[0]
    assert any(l.startswith("# targets") for l in lines)
    assert any(l.startswith("# NVMe table:") for l in lines)


@pytest.mark.parametrize("args, says", [
    (["mpi", "--rounds", "0"], "argument --rounds: expected a positive integer, got '0'"),
    (["mpi", "--budget", "-1"], "argument --budget: expected a positive number of seconds, got '-1'"),
    (["mpi", "--budget", "nan"], "argument --budget: expected a positive number of seconds, got 'nan'"),
    (["mpi", "--mpi", "openmpi,foo"], "argument --mpi: choose all or any of openmpi, mpich"),
    (["mpi", "--model", "/nonexistent/model.txt"], "argument --model: no readable file '/nonexistent/model.txt'"),
    (["calibrate", "--rounds", "0"], "argument --rounds: expected a positive integer, got '0'"),
    (["calibrate", "--mpi", ""], "argument --mpi: choose all or any of openmpi, mpich"),
    (["io", "--repeat", "0"], "argument --repeat: expected a positive integer, got '0'"),
    (["gather", "--warmup", "-1"], "argument --warmup: expected 0 or a positive integer, got '-1'"),
    (["pack", "--warmup", "x"], "argument --warmup: expected 0 or a positive integer, got 'x'"),
])
def test_bad_arguments_are_refused_before_anything_runs(args, says, tmp_path):
    """Each is refused by the argument parser (exit 2, the argument named); before, some ran with
    a clamped value, and `calibrate --rounds 0` wrote a model from no measurement, which the shim
    would then have read by default."""
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "hauler.bench.cli"] + args, env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and says in p.stderr, p.stderr
    assert not (tmp_path / "hauler").exists()


def test_benchmark_programs_ship_as_package_data(tmp_path):
    """The programs the benchmarks run are files of hauler.bench: found in this install and in a
    plain (non-editable) build of the package, where setup.py's package_data copies them."""
    for name in ("mpi_pingpong.c", "offload_step.py"):
        assert os.path.isfile(core.program_path(name)), name
    with pytest.raises(FileNotFoundError, match="no_such_program"):
        core.program_path("no_such_program.c")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(tmp_path)], cwd=root, check=True,
                   capture_output=True, timeout=300)
    code = ("import os, sys; from hauler.bench import core; "
            "print(*[os.path.realpath(core.program_path(n)) for n in sys.argv[1:]], sep='\\n')")
    out = subprocess.run([sys.executable, "-c", code, "mpi_pingpong.c", "offload_step.py"], cwd=str(tmp_path),
                         env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out == [os.path.realpath(tmp_path / "hauler" / "bench" / "programs" / n)
                   for n in ("mpi_pingpong.c", "offload_step.py")]
