"""scripts/gpu_check.sh without a GPU (here and in CI): it parses its arguments, prints the build
command it would run, writes the report saying why nothing was measured and exits 0; and the
report's verdicts (targets, correctness) from measured rows."""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "scripts", "gpu_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gc = _module()
TARGET_KEYS = [t[0] for t in gc.TARGETS]


def _run(args, cwd, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(PYTHON=sys.executable, **(env_extra or {}))
    return subprocess.run(["bash", SCRIPT, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=180, text=True)


def _check_report(out_dir, stdout, why_part):
    with open(os.path.join(out_dir, gc.JSON_NAME)) as f:
        rep = json.load(f)
    with open(os.path.join(out_dir, gc.TEXT_NAME)) as f:
        text = f.read()
    assert rep["gpu"]["present"] is False and why_part in rep["gpu"]["why"]
    b = rep["build"]
    assert b["status"] == "dry run" and b["env"]["HAULER_CUDA_ARCH"] == "90" and b["env"]["HAULER_FORCE_CUDA"] == "1"
    assert b["command"][:3] == [sys.executable, "-m", "pip"] and "--no-build-isolation" in b["command"]
    assert b["command"][-1] == ROOT and "--target" in b["command"]
    assert b["prefix"] == gc.DEFAULT_PREFIX and "--upgrade" in b["command"]
    assert isinstance(b["prereqs"]["modules"], dict) and b["prereqs"]["modules"]["numpy"] is True
    assert set(rep["sections"]) == set(gc.BENCH_SECTIONS) | {"interpose"}
    assert all(s["status"] == "not run" and s["rows"] == [] for s in rep["sections"].values())
    assert rep["correctness"][0] == "NOT RUN" and why_part in rep["correctness"][1]
    assert [t["key"] for t in rep["targets"]] == TARGET_KEYS and all(t["status"] == "NOT RUN" for t in rep["targets"])
    # the summary ends with one verdict line per target, then correctness; the text file is the same table
    tail = stdout.strip().splitlines()
    verdicts = tail[-(len(TARGET_KEYS) + 2):-1]
    assert verdicts == [f"NOT RUN target {k}" for k in TARGET_KEYS] + ["NOT RUN correctness"], tail[-8:]
    assert "measured nothing" in tail[-1] and why_part in tail[-1]
    assert text.strip().splitlines()[-1] == "NOT RUN correctness"
    assert "build: dry run" in text and "pip install" in text
    return rep


def _gpu_here():
    return gc.detect_gpu()[0]


def test_without_a_gpu_reports_why_and_exits_0(tmp_path):
    if _gpu_here():
        pytest.skip("a GPU is present: the script would measure (test_dry_run covers the no-GPU logic)")
    out = tmp_path / "report"
    p = _run(["--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    _check_report(str(out), p.stdout, gc.detect_gpu()[1])


def test_dry_run_defaults_to_OUT_then_to_gpu_check(tmp_path):
    out = tmp_path / "from-env"
    p = _run(["--dry-run"], cwd=tmp_path, env_extra={"OUT": str(out)})
    assert p.returncode == 0, p.stderr
    _check_report(str(out), p.stdout, "--dry-run given")
    p = _run(["--dry-run", "--only", "tests,pack"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    _check_report(str(tmp_path / "gpu-check"), p.stdout, "--dry-run given")


@pytest.mark.parametrize("args, message", [(["--budget", "0"], "--budget must be positive"),
                                           (["--jobs", "-2"], "--jobs must be >= 0"),
                                           (["--bogus"], "unrecognized arguments: --bogus"),
                                           (["--no-build", "--prefix", "{tmp}"], "--no-build needs --prefix"),
                                           (["--only", "tests,bogus"], "--only takes steps from")])
def test_bad_arguments_exit_2_and_write_nothing(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]  # an empty folder: no build to reuse
    p = _run(args + ["--out", str(tmp_path / "r")], cwd=tmp_path)
    assert p.returncode == 2 and message in p.stderr, (p.returncode, p.stderr)
    assert not (tmp_path / "r").exists()


def test_a_gpu_whose_tests_all_skip_fails_correctness(tmp_path, monkeypatch, capsys):
    """The GPU path of the orchestrator over the build already installed here (a prefix whose
    `hauler` is this one), with nvidia-smi's answer replaced: the real-GPU tests all skip (no
    device behind it), which must read as a failure, not a pass; the workers say why they skip."""
    if _gpu_here():
        pytest.skip("a real GPU is present: scripts/gpu_check.sh measures it for real")
    import hauler
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    (prefix / "hauler").symlink_to(os.path.dirname(os.path.abspath(hauler.__file__)))
    if not (prefix / "hauler" / "_build_info.json").exists():
        pytest.skip("this hauler has no _build_info.json next to it (not built in place)")
    monkeypatch.setattr(gc, "detect_gpu", lambda timeout=20: (True, "GPU 0: stand-in"))
    out = tmp_path / "r"
    scratch_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "gpu-check-*")))
    rc = gc.main(["--out", str(out), "--prefix", str(prefix), "--no-build", "--only", "tests,env",
                  "--python", sys.executable, "--budget", "300"])
    printed = capsys.readouterr().out
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "gpu-check-*"))) <= scratch_before  # cleaned up
    with open(out / gc.JSON_NAME) as f:
        rep = json.load(f)
    assert rc == 1 and rep["build"]["status"] == "pass" and rep["build"]["reason"].startswith("reused")
    assert rep["tests"]["status"] == "fail" and "no real-GPU test ran" in rep["tests"]["reason"]
    assert rep["tests"]["skipped"] > 0 and rep["tests"]["passed"] == 0
    assert rep["sections"]["env"]["status"] == "skipped", rep["sections"]["env"]
    assert all(rep["sections"][s]["reason"] == "not in --only" for s in ("pack", "gather", "io", "kv", "interpose"))
    assert rep["sanitizer"]["reason"] == "not in --only"
    assert printed.strip().splitlines()[-1] == "FAIL correctness"
    assert os.path.getsize(out / "tests.log") > 0


def _rows(section, field, key, values):
    return [dict(case=f"case {v}", op=section, **{key: size, field: v}) for size, v in values]


def test_targets_take_the_worst_row_in_their_range():
    rep = {"sections": {
        "pack": {"rows": _rows("pack", "x_limit", "block", [(1, 0.1), (64, 0.9), (4096, 0.75)])
                 + [dict(case="x", op="unpack", block=8, x_peer=6.0), dict(case="y", op="pack", block=2, x_peer=4.0),
                    dict(case="h", op="to host", block=64, x_limit=0.01)]},
        "gather": {"rows": _rows("gather", "x_limit", "row", [(64, 0.2), (512, 0.85), (4096, 0.81)])
                   + [dict(case="s", op="scatter", row=None, ok=True)]}}}
    gc.evaluate_targets(rep)
    got = {t["key"]: t for t in rep["targets"]}
    # the 1 B row is below the range, the "to host" row is no pack/unpack
    assert got["pack_vs_memcpy"]["status"] == "PASS" and got["pack_vs_memcpy"]["worst"] == 0.75
    assert got["pack_vs_peers"]["status"] == "FAIL" and got["pack_vs_peers"]["worst"] == 4.0
    assert "1/2 rows" in got["pack_vs_peers"]["detail"]
    assert got["gather_vs_h2d"]["status"] == "PASS" and got["gather_vs_h2d"]["worst"] == 0.81
    assert got["gather_vs_torch"]["status"] == "NOT RUN"  # no row has x_peer


def test_correctness_fails_on_any_wrong_row_or_failed_step():
    base = {"gpu": {"present": True, "why": "GPU 0"}, "dry_run": False, "build": {"status": "pass"},
            "tests": {"status": "pass"}, "sanitizer": {"status": "pass"},
            "sections": {"pack": {"status": "pass", "rows": [dict(case="a", op="pack", ok=True)]}}}
    assert gc.correctness(base)[0] == "PASS"
    bad_row = json.loads(json.dumps(base))
    bad_row["sections"]["pack"]["rows"].append(dict(case="b", op="unpack", ok=False))
    verdict, why = gc.correctness(bad_row)
    assert verdict == "FAIL" and "b unpack" in why
    for step, status in (("tests", "fail"), ("sanitizer", "fail"), ("build", "fail")):
        r = json.loads(json.dumps(base))
        r[step] = {"status": status, "reason": "x"}
        assert gc.correctness(r)[0] == "FAIL", step
    refused = json.loads(json.dumps(base))
    refused["sanitizer"] = {"status": "refused", "reason": "Device not supported"}
    assert gc.correctness(refused)[0] == "PASS"  # a sanitizer that cannot run is reported, not a failure
