"""The GPU check (issue 16): one command from a fresh copy of the tree on a GPU machine to a report.

    python3 scripts/gpu_check.py [--out DIR] [--budget SECONDS] [--python PY] [--dry-run] [--only STEPS]

Steps, each under its own time limit cut to what is left of --budget (default 480 s):
  1. build hauler for the device's own architecture (HAULER_CUDA_ARCH, default 90: sm_90 machine
     code plus PTX) into a temporary prefix with the machine's python (no registry, no venv);
  2. the real-GPU tests (tests/test_*_device.py, the `real_gpu` tests: CuPy and torch CUDA arrays against
     the host engine on poisoned outputs);
  3. GPU benchmark rows, each section in its own process: pack/unpack, zero-copy gather, hauler.io
     device reads/writes, hauler.kv block moves (when hauler.kv exists), activation offload (a
     small transformer's training steps with and without hauler.offload: gradients bit for bit,
     peak device memory, step time), and the interposer's device-buffer tests where an MPI
     library is present;
  4. compute-sanitizer memcheck over the torch variants of step 2 with torch's caching allocator
     off (last: it is the slowest, and a refusal must not cost the benchmarks).
It writes gpu_check.json, gpu_check.txt and the step logs into --out (default $OUT when set, else
./gpu-check) and prints a summary whose last lines say PASS/FAIL for correctness and each target.
Without a GPU (or with --dry-run) it checks the build prerequisites, prints the build command it
would run, writes the report saying why nothing was measured, and exits 0.

On this workplace's lent GPU machine: the device tool's `run` with `bash scripts/gpu_check.sh` and
timeout_s 560, nothing carried (the report comes back from $OUT); a rerun on the still-warm machine
can skip the build with `bash scripts/gpu_check.sh --no-build`.

Exit status: 0 unless correctness failed on a GPU (1) or the arguments are bad (2). Targets are
reported, not enforced.

The same file is the benchmark worker (`--worker SECTION --json FILE`), run in a child process
whose PYTHONPATH holds the built hauler; the orchestrator itself needs only the standard library.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSON_NAME, TEXT_NAME = "gpu_check.json", "gpu_check.txt"
TEST_FILES = ["tests/test_datatype_device.py", "tests/test_gather_device.py", "tests/test_kv_device.py",
              "tests/test_offload_device.py"]
REAL_GPU_TESTS = "real_gpu and not emulation"  # the emulated variants run in CI already
SANITIZER_TESTS = "real_gpu and torch"
BENCH_SECTIONS = ("env", "pack", "gather", "io", "kv", "offload")
STEPS = ("tests",) + BENCH_SECTIONS + ("interpose", "sanitizer")  # in the order they run
# Per-step caps in seconds (each also cut to the budget left).
CAPS = {"build": 240, "tests": 120, "env": 40, "pack": 100, "gather": 100, "io": 60, "kv": 60, "offload": 90,
        "interpose": 60, "sanitizer": 150}
REPORT_RESERVE = 5  # seconds kept back for writing the report
DEFAULT_PREFIX = os.path.join(tempfile.gettempdir(), "hauler-gpu-check")  # fixed, so a rerun can --no-build

# The targets: (key, what, section, row filter, ratio field, threshold)
def _packs(lo, hi):
    return lambda r: r.get("op") in ("pack", "unpack") and r.get("block") is not None and lo <= r["block"] <= hi


def _gathers(lo):
    return lambda r: r.get("op") == "gather" and r.get("row") is not None and r["row"] >= lo


TARGETS = [
    ("pack_vs_memcpy", "pack/unpack >= 0.7x device memcpy, blocks >= 64 B", "pack", _packs(64, 1 << 62),
     "x_limit", 0.7),
    ("pack_vs_peers", "pack/unpack >= 5x faster of torch/CuPy strided copy, 1-8 B blocks", "pack", _packs(1, 8),
     "x_peer", 5.0),
    ("gather_vs_h2d", "zero-copy gather >= 0.8x pinned H2D memcpy, rows >= 512 B", "gather", _gathers(512),
     "x_limit", 0.8),
    ("gather_vs_torch", "zero-copy gather >= 2x torch gather-then-copy", "gather", _gathers(0), "x_peer", 2.0),
]


# =============================================================================================
# The orchestrator (standard library only)
# =============================================================================================
class Clock:
    def __init__(self, budget: float):
        self.t0 = time.monotonic()
        self.budget = budget

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def limit(self, step: str, uncapped: bool = False) -> float:
        return (self.left() if uncapped else min(CAPS[step], self.left())) - REPORT_RESERVE


def run_logged(argv, log_path, timeout, env=None, cwd=ROOT):
    """Run argv with its output appended to log_path; (rc, tail). rc 124 when it ran out of time."""
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(argv)}  (limit {timeout:.0f} s)\n")
        log.flush()
        try:
            p = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                               timeout=timeout, start_new_session=True)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = 124
            log.write(f"\n[gpu_check: killed after {timeout:.0f} s]\n")
        except OSError as e:
            rc = 127
            log.write(f"\n[gpu_check: could not start: {e}]\n")
    with open(log_path, errors="replace") as f:
        tail = f.read()[-3000:]
    return rc, tail


_SCRATCH = []  # this run's folder for JUnit files and worker results, removed when it ends


def scratch(name):
    if not _SCRATCH:
        _SCRATCH.append(tempfile.mkdtemp(prefix="gpu-check-"))
    return os.path.join(_SCRATCH[0], name)


def detect_gpu(timeout=20):
    """(True, description) when nvidia-smi lists a GPU, else (False, why not)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False, "nvidia-smi not found (no NVIDIA driver on this machine)"
    try:
        p = subprocess.run([smi, "-L"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"nvidia-smi -L did not answer in {timeout} s"
    out = p.stdout.decode("utf-8", "replace").strip()
    gpus = [ln for ln in out.splitlines() if ln.startswith("GPU ")]
    if p.returncode != 0 or not gpus:
        return False, f"nvidia-smi -L lists no GPU (exit {p.returncode}): {out[:200]}"
    return True, "; ".join(gpus)


def build_plan(python, prefix, arch, jobs):
    """The build command and environment: a non-editable install into `prefix` (no venv, no
    registry: the machine's own setuptools/pybind11, no build isolation, no dependencies)."""
    env = {"HAULER_CUDA_ARCH": arch, "HAULER_FORCE_CUDA": "1", "HAULER_BUILD_JOBS": str(jobs)}
    argv = [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
            "--disable-pip-version-check", "--no-cache-dir", "--upgrade", "--target", prefix, ROOT]
    return argv, env


def build_prereqs(python):
    """What the build needs from `python` and PATH, each True or a reason."""
    out = {"python": python, "nvcc": shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)}
    probe = ("import importlib.util as u, json, sys; "
             "print(json.dumps({m: bool(u.find_spec(m)) for m in sys.argv[1:]}))")
    mods = ["pip", "setuptools", "wheel", "pybind11", "numpy", "torch", "cupy", "pytest", "hypothesis"]
    try:
        p = subprocess.run([python, "-c", probe, *mods], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=60)
        out["modules"] = json.loads(p.stdout.decode()) if p.returncode == 0 else p.stderr.decode()[-300:]
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        out["modules"] = f"could not run {python}: {e}"
    return out


def child_env(prefix):
    env = dict(os.environ)
    env["PYTHONPATH"] = prefix + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def parse_junit(path):
    """(passed, failed, skipped, [failed test names]) from a JUnit XML file, or None."""
    import xml.etree.ElementTree as ET
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    passed = failed = skipped = 0
    names = []
    for case in root.iter("testcase"):
        tags = {c.tag for c in case}
        if tags & {"failure", "error"}:
            failed += 1
            names.append(f"{case.get('classname')}::{case.get('name')}")
        elif "skipped" in tags:
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped, names


def find_sanitizer():
    for c in (shutil.which("compute-sanitizer"), "/usr/local/cuda/bin/compute-sanitizer"):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def step_tests(report, clock, python, prefix, out):
    lim = clock.limit("tests")
    if lim < 10:
        report["tests"] = {"status": "skipped", "reason": "no time left in the budget"}
        return
    junit = scratch("tests.xml")
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", REAL_GPU_TESTS, "-rs",
            f"--junitxml={junit}", *TEST_FILES]
    rc, tail = run_logged(argv, os.path.join(out, "tests.log"), lim, env=child_env(prefix))
    counts = parse_junit(junit)
    res = {"rc": rc, "command": " ".join(argv)}
    if counts is None:
        res.update(status="fail", reason=f"pytest wrote no results (exit {rc}): {tail[-400:]}")
    else:
        p, f, s, names = counts
        res.update(passed=p, failed=f, skipped=s, failed_tests=names)
        if rc == 124:
            res.update(status="fail", reason=f"timed out after {lim:.0f} s")
        elif f or rc not in (0, 5):
            res.update(status="fail", reason=f"{f} failed: {', '.join(names[:5])}" if f else f"pytest exit {rc}")
        elif p == 0:
            res.update(status="fail", reason=f"no real-GPU test ran ({s} skipped): see tests.log")
        else:
            res.update(status="pass", reason=f"{p} passed, {s} skipped")
    report["tests"] = res


def step_sanitizer(report, clock, python, prefix, out):
    san = find_sanitizer()
    if san is None:
        report["sanitizer"] = {"status": "skipped", "reason": "compute-sanitizer not found"}
        return
    lim = clock.limit("sanitizer")
    if lim < 20:
        report["sanitizer"] = {"status": "skipped", "reason": "no time left in the budget"}
        return
    env = child_env(prefix)
    env["HAULER_TEST_EXAMPLES"] = "0.1"  # the memcheck slows every kernel: a tenth of the examples
    # Each torch tensor its own cudaMalloc, so a write past a device output is outside any
    # allocation and memcheck sees it (a caching pool would hide it; CuPy's cannot be turned off
    # from outside, so its variants are left to the plain run).
    env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
    argv = [san, "--tool", "memcheck", "--error-exitcode", "86", "--target-processes", "all",
            python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", SANITIZER_TESTS, *TEST_FILES]
    rc, tail = run_logged(argv, os.path.join(out, "sanitizer.log"), lim, env=env)
    m = re.findall(r"ERROR SUMMARY: (\d+) error", tail)
    res = {"rc": rc, "command": " ".join(argv)}
    if rc == 124:
        res.update(status="fail" if m and int(m[-1]) else "incomplete",
                   reason=f"timed out after {lim:.0f} s" + (f"; {m[-1]} errors so far" if m else ""))
    elif m and int(m[-1]) == 0 and rc == 0:
        res.update(status="pass", reason="ERROR SUMMARY: 0 errors")
    elif rc == 86 or (m and int(m[-1]) > 0):
        res.update(status="fail", reason=f"memcheck found {m[-1] if m else 'some'} error(s): see sanitizer.log")
    elif not m:
        res.update(status="refused", reason=f"compute-sanitizer did not run the tests (exit {rc}): "
                                            + " | ".join(tail.strip().splitlines()[-3:]))
    else:
        res.update(status="fail", reason=f"the tests failed under memcheck (exit {rc}): see sanitizer.log")
    report["sanitizer"] = res


def step_worker(report, clock, python, prefix, out, section):
    lim = clock.limit(section)
    if lim < 10:
        report["sections"][section] = {"status": "skipped", "reason": "no time left in the budget", "rows": []}
        return
    path = scratch(section + ".json")
    argv = [python, os.path.abspath(__file__), "--worker", section, "--json", path]
    rc, tail = run_logged(argv, os.path.join(out, "bench.log"), lim, env=child_env(prefix))
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, ValueError):
        res = {"status": "error", "rows": [], "notes": [],
               "reason": ("timed out after %.0f s" % lim) if rc == 124 else
               f"the worker wrote nothing (exit {rc}): " + " | ".join(tail.strip().splitlines()[-3:])}
    if rc == 124 and res.get("status") != "error":
        res["status"], res["reason"] = "incomplete", f"timed out after {lim:.0f} s; rows so far kept"
    report["sections"][section] = res


def mpi_probe(python):
    """Which MPI this machine has: the launchers on PATH and the library mpi4py loads."""
    tools = {t: shutil.which(t) for t in ("mpicc", "mpiexec", "mpirun")}
    code = ("import mpi4py; mpi4py.rc.initialize = False; mpi4py.rc.finalize = False; "
            "from mpi4py import MPI; print(MPI.Get_library_version().strip().splitlines()[0])")
    try:
        p = subprocess.run([python, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        lib = p.stdout.decode("utf-8", "replace").strip().splitlines()
        mpi4py = lib[-1] if p.returncode == 0 and lib else "mpi4py cannot load an MPI library: " + (
            lib[-1] if lib else f"exit {p.returncode}")
    except (OSError, subprocess.SubprocessError) as e:
        mpi4py = f"mpi4py probe failed: {e}"
    return "; ".join(f"{k}: {v or 'none'}" for k, v in tools.items()) + f"; mpi4py: {mpi4py}"


def step_interpose(report, clock, python, prefix, out):
    """The shim's device-buffer tests where the build found an MPI library. They drive the shim's
    device path through a stand-in driver and the emulated kernels (tests/test_interpose.py); an
    MPI program on real device buffers is not part of the suite yet, and the report says so."""
    sec = {"rows": [], "notes": [mpi_probe(python)]}
    report["sections"]["interpose"] = sec
    info_path = os.path.join(prefix, "hauler", "_build_info.json")
    try:
        with open(info_path) as f:
            interp = json.load(f).get("interpose", {})
    except (OSError, ValueError) as e:
        sec.update(status="skipped", reason=f"no build info: {e}")
        return
    if not interp.get("built"):
        sec.update(status="skipped", reason="the interposer was not built: " + str(interp.get("reason")))
        return
    libs = ", ".join(f"{k} ({v.get('vendor')}, mpiexec {v.get('mpiexec')})" for k, v in interp["libraries"].items())
    lim = clock.limit("interpose")
    if lim < 10:
        sec.update(status="skipped", reason="no time left in the budget")
        return
    junit = scratch("interpose.xml")
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "device", f"--junitxml={junit}",
            "tests/test_interpose.py"]
    rc, _ = run_logged(argv, os.path.join(out, "tests.log"), lim, env=child_env(prefix))
    counts = parse_junit(junit)
    sec["command"] = " ".join(argv)
    sec["notes"].append("these tests drive the shim's device path through a stand-in driver and the emulated "
                        "kernels; no MPI program on real device buffers is in the suite yet")
    if counts is None:
        sec.update(status="error", reason=f"pytest wrote no results (exit {rc})")
    else:
        p, f, s, names = counts
        sec.update(status="fail" if f or rc not in (0, 5) else "pass",
                   reason=f"MPI: {libs}; {p} passed, {f} failed, {s} skipped" + (f": {names[:3]}" if f else ""))


def evaluate_targets(report):
    out = []
    for key, what, section, pick, field, threshold in TARGETS:
        rows = [r for r in report["sections"].get(section, {}).get("rows", [])
                if pick(r) and isinstance(r.get(field), (int, float))]
        if not rows:
            out.append({"key": key, "what": what, "status": "NOT RUN", "detail": "no rows measured"})
            continue
        worst = min(rows, key=lambda r: r[field])
        ok = worst[field] >= threshold
        out.append({"key": key, "what": what, "status": "PASS" if ok else "FAIL", "worst": worst[field],
                    "detail": f"worst {worst[field]:.2f}x at {worst['case']} ({worst['op']}); "
                              f"{sum(r[field] >= threshold for r in rows)}/{len(rows)} rows meet {threshold}x"})
    report["targets"] = out


def correctness(report):
    """PASS when the real-GPU tests passed and every measured row's bytes matched its peers."""
    if not report["gpu"]["present"] or report.get("dry_run"):
        return "NOT RUN", "no GPU: " + report["gpu"]["why"]
    if report.get("build_only"):
        return "NOT RUN", "--build-only"
    problems = []
    if report.get("build", {}).get("status") != "pass":
        problems.append("build failed")
    t = report.get("tests", {})
    if t.get("status") != "pass":
        problems.append("tests: " + str(t.get("reason")))
    if report.get("sanitizer", {}).get("status") == "fail":
        problems.append("memcheck: " + str(report["sanitizer"].get("reason")))
    for name, sec in report.get("sections", {}).items():
        bad = [r["case"] + " " + r["op"] + (f" ({r['error']})" if r.get("error") else "")
               for r in sec.get("rows", []) if r.get("ok") is False]
        if bad:
            problems.append(f"{name}: wrong bytes or errors in {', '.join(bad[:4])}")
        elif sec.get("status") in ("fail", "error"):
            problems.append(f"{name}: {sec.get('status')}: {sec.get('reason')}")
    return ("FAIL", "; ".join(problems)) if problems else ("PASS", "tests passed and every row matched its peers")


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def render_text(report):
    lines = [f"# hauler GPU check {report['started']}  host {report['host']}",
             f"# gpu: {'yes' if report['gpu']['present'] else 'no'}: {report['gpu']['why']}"]
    b = report.get("build", {})
    lines.append(f"# build: {b.get('status')}: {b.get('reason', '')}")
    pre = b.get("prereqs", {})
    lines.append(f"# build prerequisites: nvcc {pre.get('nvcc') or 'NOT FOUND'}; python {pre.get('python')} "
                 f"modules: {pre.get('modules')}")
    lines.append("#   $ " + " ".join(f"{k}={v}" for k, v in b.get("env", {}).items()) + " "
                 + " ".join(b.get("command", [])))
    for step in ("tests", "sanitizer"):
        s = report.get(step)
        if s:
            lines.append(f"# {step}: {s.get('status')}: {s.get('reason', '')}")
    for name, sec in report.get("sections", {}).items():
        lines.append("")
        lines.append(f"## {name}: {sec.get('status')}" + (f": {sec['reason']}" if sec.get("reason") else ""))
        for n in sec.get("notes", []):
            lines.append(f"#  {n}")
        rows = sec.get("rows", [])
        if rows and name != "env":
            lines.append(f"{'case':<34} {'op':<10} {'MiB':>8} {'hauler GB/s':>11} {'peer GB/s':>10} {'peer':<16}"
                         f" {'limit GB/s':>10} {'x limit':>7} {'x peer':>7} {'ok':>4}")
            for r in rows:
                lines.append(f"{r['case']:<34.34} {r['op']:<10.10} {_fmt(r.get('mib'), '.1f'):>8} "
                             f"{_fmt(r.get('gbps')):>11} {_fmt(r.get('peer_gbps')):>10} {str(r.get('peer')):<16.16} "
                             f"{_fmt(r.get('limit_gbps')):>10} {_fmt(r.get('x_limit')):>7} {_fmt(r.get('x_peer')):>7} "
                             f"{'yes' if r.get('ok') else ('NO' if r.get('ok') is False else '-'):>4}")
        elif rows:
            for r in rows:
                lines.append(f"#  {r['case']}: {r.get('value')}")
    lines.append("")
    lines.append("## summary")
    for t in report.get("targets", []):
        lines.append(f"target {t['key']}: {t['status']}: {t['what']}: {t['detail']}")
    c, why = report["correctness"]
    lines.append(f"correctness: {c}: {why}")
    for t in report.get("targets", []):
        lines.append(f"{t['status']} target {t['key']}")
    lines.append(f"{c} correctness")
    return "\n".join(lines) + "\n"


def write_report(report, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, JSON_NAME), "w") as f:
        json.dump(report, f, indent=1, sort_keys=True, default=str)
    text = render_text(report)
    with open(os.path.join(out, TEXT_NAME), "w") as f:
        f.write(text)
    return text


def orchestrate(args):
    clock = Clock(args.budget)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    for name in ("build.log", "tests.log", "bench.log", "sanitizer.log"):
        p = os.path.join(out, name)
        if os.path.exists(p):
            os.remove(p)
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
              "budget_s": args.budget, "out": out, "sections": {}}
    present, why = detect_gpu()
    if args.dry_run:
        why = "--dry-run given" + (f" (a GPU is present: {why})" if present else f" ({why})")
        present = False
    report["gpu"] = {"present": present, "why": why}
    report["dry_run"] = not present
    report["build_only"] = bool(args.build_only)
    build_now = present or args.build_only
    prefix = os.path.abspath(args.prefix)
    jobs = args.jobs or os.cpu_count() or 1
    argv, benv = build_plan(args.python, prefix, args.arch, jobs)
    report["build"] = {"command": argv, "env": benv, "prefix": prefix, "prereqs": build_prereqs(args.python)}
    print(f"gpu_check: GPU: {'yes' if present else 'no'}: {why}", flush=True)
    print("gpu_check: build: " + " ".join(f"{k}={v}" for k, v in benv.items()) + " " + " ".join(argv), flush=True)

    pre = report["build"]["prereqs"]
    mods = pre["modules"]
    missing = [m for m, ok in mods.items() if not ok] if isinstance(mods, dict) else [mods]
    print(f"gpu_check: build prerequisites: nvcc {pre['nvcc'] or 'NOT FOUND'}; python modules missing: "
          f"{', '.join(missing) or 'none'}", flush=True)
    if not build_now:
        report["build"].update(status="dry run", reason="not run: " + why)
        for step in ("tests", "sanitizer"):
            report[step] = {"status": "not run", "reason": "no GPU"}
        for s in BENCH_SECTIONS + ("interpose",):
            report["sections"][s] = {"status": "not run", "reason": "no GPU: nothing measured", "rows": []}
        report["correctness"] = correctness(report)
        evaluate_targets(report)
        text = write_report(report, out)
        print(text, end="")
        print(f"gpu_check: measured nothing: {why}; report in {out}")
        return 0

    env = dict(os.environ, **benv)
    lim = clock.limit("build", uncapped=args.build_only)
    if args.no_build:  # a rerun on the same machine: the earlier build in --prefix
        rc, tail = 0, f"--no-build: reusing {prefix}"
    else:
        rc, tail = run_logged(argv, os.path.join(out, "build.log"), lim, env=env)
    info_path = os.path.join(prefix, "hauler", "_build_info.json")
    cuda = {}
    try:
        with open(info_path) as f:
            cuda = json.load(f).get("cuda", {})
    except (OSError, ValueError):
        pass
    if rc != 0 or not cuda.get("built"):
        report["build"].update(status="fail", reason=("timed out after %.0f s" % lim) if rc == 124 else
                               f"exit {rc}: " + " | ".join(tail.strip().splitlines()[-4:]))
    else:
        report["build"].update(status="pass", reason=("reused, " if args.no_build else "") +
                               f"sm {','.join(cuda.get('arch', []))}, nvcc {cuda.get('nvcc_version')}, "
                               f"{time.monotonic() - clock.t0:.0f} s")
    print(f"gpu_check: build {report['build']['status']}: {report['build']['reason']}", flush=True)
    if args.build_only:
        for step in ("tests", "sanitizer"):
            report[step] = {"status": "not run", "reason": "--build-only"}
    elif report["build"]["status"] == "pass":
        skipped = {"status": "skipped", "reason": "not in --only", "rows": []}
        if "tests" in args.only:
            step_tests(report, clock, args.python, prefix, out)
        else:
            report["tests"] = dict(skipped)
        print(f"gpu_check: tests {report['tests']['status']}: {report['tests']['reason']}", flush=True)
        for s in BENCH_SECTIONS + ("interpose",):
            if s not in args.only:
                report["sections"][s] = dict(skipped)
            elif s == "interpose":
                step_interpose(report, clock, args.python, prefix, out)
            else:
                step_worker(report, clock, args.python, prefix, out, s)
            print(f"gpu_check: {s} {report['sections'][s]['status']}: {report['sections'][s].get('reason', '')}",
                  flush=True)
        if "sanitizer" in args.only:
            step_sanitizer(report, clock, args.python, prefix, out)
        else:
            report["sanitizer"] = dict(skipped)
    else:
        for step in ("tests", "sanitizer"):
            report[step] = {"status": "not run", "reason": "the build failed"}
    report["elapsed_s"] = round(time.monotonic() - clock.t0, 1)
    report["correctness"] = correctness(report)
    evaluate_targets(report)
    text = write_report(report, out)
    print(text, end="")
    if args.build_only:
        return 0 if report["build"]["status"] == "pass" else 1
    return 1 if report["correctness"][0] == "FAIL" else 0


# =============================================================================================
# The benchmark worker (runs with the built hauler, torch and CuPy importable)
# =============================================================================================
class _HostMapped:
    """Pinned host memory presented as a device array (UVA: the kernel writes it over the link)."""

    def __init__(self, t):
        self.t = t
        self.__cuda_array_interface__ = {"version": 3, "shape": (t.numel() * t.element_size(),), "typestr": "|u1",
                                         "data": (t.data_ptr(), False), "strides": None, "stream": None}


def _median_time(torch, fn, reps, warm=2, wall=False):
    """Median seconds of fn() on the current stream (CUDA events), or by wall clock with a
    synchronize (for peers that do host work). Something that takes over a quarter of a second
    (a 1-byte-wide cudaMemcpy2D, say) gets one warm-up and three runs, to keep to the budget."""
    torch.cuda.synchronize()  # hauler calls without stream= run on the legacy stream, not the timed one
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    if time.perf_counter() - t0 > 0.25:
        warm, reps = 0, min(reps, 3)
    for _ in range(warm - 1):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        if wall:
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        else:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) / 1e3)
    return statistics.median(ts)


def _row(case, op, nbytes, t_hauler, peers, t_limit, ok, **extra):
    """A result row: GB/s of hauler, its best peer and the limit; x_limit = limit time / hauler
    time (the fraction of the limit's bandwidth reached), x_peer = best peer time / hauler time."""
    gb = lambda t: nbytes / t / 1e9 if t else None  # noqa: E731
    peers = {k: v for k, v in peers.items() if v}
    best = min(peers, key=peers.get) if peers else None
    return dict(case=case, op=op, bytes=nbytes, mib=nbytes / 2**20, seconds=t_hauler, gbps=gb(t_hauler),
                peers={k: gb(v) for k, v in peers.items()}, peer=best, peer_gbps=gb(peers[best]) if best else None,
                limit_gbps=gb(t_limit), x_limit=(t_limit / t_hauler) if t_limit and t_hauler else None,
                x_peer=(peers[best] / t_hauler) if best and t_hauler else None, ok=ok, **extra)


def _try(fn, notes, what, res=None):
    """fn(), or None with a note when it raises: a peer that is missing or refuses is a note, not
    a failed check. With `res`, the exception comes from a hauler call that must work and is
    also a row with ok False."""
    try:
        return fn()
    except Exception as e:
        notes.append(f"{what}: not measured: {type(e).__name__}: {str(e)[:160]}")
        if res is not None:
            _error_row(res, what, e)
        return None


def _error_row(res, name, e):
    res["rows"].append(dict(case=name, op="error", ok=False, error=f"{type(e).__name__}: {str(e)[:300]}"))


def worker_env(torch, cp, res):
    import hauler
    p = torch.cuda.get_device_properties(0)
    rows = [("device", f"{p.name}, cc {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
                       f"{p.total_memory / 2**30:.0f} GiB"),
            ("torch", torch.__version__), ("cupy", getattr(cp, "__version__", None)),
            ("hauler.cuda_status", hauler.cuda_status())]
    if cp is not None:
        # cudaDevAttrHostNativeAtomicSupported = 86, cudaDevAttrPageableMemoryAccess = 88
        rows.append(("host-native atomics (cudaDevAttrHostNativeAtomicSupported)",
                     bool(cp.cuda.runtime.deviceGetAttribute(86, 0))))
        rows.append(("pageable memory access", bool(cp.cuda.runtime.deviceGetAttribute(88, 0))))
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    t = _median_time(torch, lambda: y.copy_(x), 10)
    rows.append(("device memcpy, 1 GiB (read + write counted)", f"{2 * x.numel() / t / 1e9:.0f} GB/s"))
    h = torch.empty(2**28, dtype=torch.uint8, pin_memory=True)
    d = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    t = _median_time(torch, lambda: d.copy_(h, non_blocking=True), 10)
    rows.append(("pinned host to device, 256 MiB", f"{d.numel() / t / 1e9:.1f} GB/s"))
    res["rows"] = [dict(case=k, value=v) for k, v in rows]
    res["status"] = "pass"


def _guarded(res, name, fn, *args, **kw):
    """One case: an exception in hauler's call is a wrong result (a row with ok False and the
    error), and the next cases still run."""
    try:
        fn(*args, **kw)
    except Exception as e:
        _error_row(res, name, e)
        res["notes"].append(f"{name}: {type(e).__name__}: {str(e)[:300]}")


def _pack_case(torch, cp, hauler_dt, res, name, base, sl, **kw):
    _guarded(res, name, _pack_case_rows, torch, cp, hauler_dt, res, name, base, sl, **kw)


def _pack_case_rows(torch, cp, hauler_dt, res, name, base, sl, block=None, memcpy2d=None, reps=15, oneshot=False):
    """pack and unpack of the strided device view base[sl] against its peers; memcpy2d = (width,
    spitch, height) when the layout is 2-D."""
    notes = res["notes"]
    view = base[sl]
    t, buf, off = hauler_dt.Datatype.from_array(view)
    n = t.size
    stream = torch.cuda.current_stream().cuda_stream
    out = torch.full((n,), 0xA5, dtype=torch.uint8, device="cuda")
    t.pack(buf, out=out, offset=off, stream=stream)
    ref = view.contiguous().view(-1).view(torch.uint8)
    ok = bool(torch.equal(out, ref))
    th = _median_time(torch, lambda: t.pack(buf, out=out, offset=off, stream=stream), reps)
    peers = {"torch.contiguous": _median_time(torch, lambda: view.contiguous(), reps)}
    cview = cp.asarray(view) if cp is not None else None
    if cview is not None:
        peers["cupy.ascontiguous"] = _try(lambda: _median_time(torch, lambda: cp.ascontiguousarray(cview), reps),
                                          notes, f"{name}: cupy")
    flat = torch.empty(n, dtype=torch.uint8, device="cuda")
    if memcpy2d is not None and cp is not None:
        w, sp, h = memcpy2d
        peers["cudaMemcpy2DAsync"] = _try(lambda: _median_time(torch, lambda: cp.cuda.runtime.memcpy2DAsync(
            flat.data_ptr(), w, view.data_ptr(), sp, w, h, 3, stream), reps), notes, f"{name}: memcpy2D")
    src_c = ref.clone()
    tl = _median_time(torch, lambda: flat.copy_(src_c), reps)
    res["rows"].append(_row(name, "pack", n, th, peers, tl, ok, block=block))
    # unpack: the packed bytes back into a poisoned copy of the view's buffer
    target = torch.zeros_like(base)[sl]  # the same layout in another buffer
    t2, buf2, off2 = hauler_dt.Datatype.from_array(target)
    t2.unpack(out, buf2, offset=off2, stream=stream)
    ok_u = bool(torch.equal(target, view))
    packed_view = out.view(view.dtype).view(view.shape)
    thu = _median_time(torch, lambda: t2.unpack(out, buf2, offset=off2, stream=stream), reps)
    peers_u = {"torch.copy_": _median_time(torch, lambda: target.copy_(packed_view), reps)}
    if cp is not None:
        ct, cpk = cp.asarray(target), cp.asarray(packed_view)
        peers_u["cupy.setitem"] = _try(lambda: _median_time(torch, lambda: ct.__setitem__(Ellipsis, cpk), reps),
                                       notes, f"{name}: cupy unpack")
    if memcpy2d is not None and cp is not None:
        w, sp, h = memcpy2d
        peers_u["cudaMemcpy2DAsync"] = _try(lambda: _median_time(torch, lambda: cp.cuda.runtime.memcpy2DAsync(
            target.data_ptr(), sp, out.data_ptr(), w, w, h, 3, stream), reps), notes, f"{name}: memcpy2D unpack")
    res["rows"].append(_row(name, "unpack", n, thu, peers_u, tl, ok_u, block=block))
    if oneshot:
        _try(lambda: _to_host_row(torch, res, name, t, buf, off, out, ref, src_c, stream, block, reps), notes,
             f"{name}: one-shot / staging")


def _to_host_row(torch, res, name, t, buf, off, out, ref, src_c, stream, block, reps):
    """The two paths the shim chooses between for a device send buffer: the kernel writes mapped
    pinned host memory directly (one-shot), or packs on the device and copies the bytes over."""
    n = t.size
    host = torch.full((n,), 0x5A, dtype=torch.uint8, pin_memory=True)
    mapped = _HostMapped(host)
    t.pack(buf, out=mapped, offset=off, stream=stream)
    torch.cuda.synchronize()
    ok = bool(torch.equal(host, ref.cpu()))
    t_one = _median_time(torch, lambda: t.pack(buf, out=mapped, offset=off, stream=stream), reps)
    t_stage = _median_time(torch, lambda: (t.pack(buf, out=out, offset=off, stream=stream),
                                           host.copy_(out, non_blocking=True)), reps)
    t_d2h = _median_time(torch, lambda: host.copy_(src_c, non_blocking=True), reps)
    res["rows"].append(_row(name, "to host", n, t_one, {"device staging": t_stage}, t_d2h, ok, block=block,
                            path="one-shot (mapped pinned host) vs device staging; limit: pinned D2H memcpy"))


def worker_pack(torch, cp, res):
    from hauler import datatype
    res["notes"].append("x limit: device memcpy of the packed bytes / hauler; x peer: fastest peer / hauler")
    payload = 64 << 20
    every = slice(None)
    for b in (1, 2, 4, 8, 16, 64, 256, 512, 1024, 4096):
        count = payload // b
        src = torch.randint(0, 256, (count, 2 * b), dtype=torch.uint8, device="cuda")
        _pack_case(torch, cp, datatype, res, f"vector {b} B blocks, stride {2 * b} B", src, (every, slice(0, b)),
                   block=b, memcpy2d=(b, 2 * b, count), oneshot=b in (8, 64, 512, 4096))
        del src
    a = torch.randn(8192, 8192, dtype=torch.float64, device="cuda")
    _pack_case(torch, cp, datatype, res, "2-D halo column 8192x8192 f64", a, (every, slice(0, 1)),
               memcpy2d=(8, 8192 * 8, 8192), oneshot=True)
    _pack_case(torch, cp, datatype, res, "2-D halo 4-wide column", a, (every, slice(8188, 8192)),
               memcpy2d=(32, 8192 * 8, 8192))
    del a
    v = torch.randn(384, 384, 384, dtype=torch.float64, device="cuda")
    _pack_case(torch, cp, datatype, res, "3-D halo face k=0 384^3 f64", v, (every, every, slice(0, 1)))
    _pack_case(torch, cp, datatype, res, "3-D halo face j=0 384^3 f64", v, (every, slice(0, 1)),
               memcpy2d=(384 * 8, 384 * 384 * 8, 384), oneshot=True)
    _pack_case(torch, cp, datatype, res, "3-D halo face i=0 384^3 f64", v, (slice(0, 1),))
    res["status"] = "pass" if all(r["ok"] for r in res["rows"]) else "fail"


def _uva_tensor(torch, cp, host):
    """A CUDA tensor over pinned host memory (UVA), through CuPy's UnownedMemory, or None."""
    mem = cp.cuda.UnownedMemory(host.data_ptr(), host.numel() * host.element_size(), host, 0)
    arr = cp.ndarray(tuple(host.shape), dtype=cp.float32, memptr=cp.cuda.MemoryPointer(mem, 0))
    return torch.as_tensor(arr, device="cuda")


def worker_gather(torch, cp, res):
    import numpy as np
    res["notes"].append("table 1 GiB of float32 in pinned (registered) host memory; 64 MiB gathered per call; "
                        "limit: pinned host-to-device memcpy of the same bytes; peer: the faster of "
                        "table[idx].pin_memory().cuda() and index_select into a pinned buffer + copy")
    base = np.random.default_rng(1).integers(0, 2**31, 2**28, dtype=np.int32).view(np.float32)  # 1 GiB
    gathered = 64 << 20
    for row in (64, 128, 256, 512, 1024, 2048, 4096):
        _guarded(res, f"rows {row} B", _gather_rows, torch, cp, res, base, row, gathered)
    res["status"] = "pass" if all(r["ok"] for r in res["rows"]) else "fail"


def _gather_rows(torch, cp, res, base, row, gathered):
    import numpy as np

    from hauler.gather import FeatureStore
    notes = res["notes"]
    cols = row // 4
    table = base.reshape(-1, cols)
    n = gathered // row
    idx = np.random.default_rng(row).integers(0, table.shape[0], n).astype(np.int64)
    idx_t = torch.from_numpy(idx)
    fs = FeatureStore({"t": table}).pin()
    try:
        out = torch.full((n, cols), float("nan"), device="cuda")
        torch.cuda.synchronize()  # torch's CUDA array interface names no stream: hauler uses the legacy one
        fs.gather("t", idx, out=out)
        torch.cuda.synchronize()
        want = torch.from_numpy(table[idx])
        ok = bool(torch.equal(out.cpu().view(torch.int32), want.view(torch.int32)))
        th = _median_time(torch, lambda: fs.gather("t", idx, out=out), 10, wall=True)
        tt = torch.from_numpy(table)
        pinned = torch.empty((n, cols), dtype=torch.float32, pin_memory=True)
        peers = {"torch pin().cuda()": _median_time(torch, lambda: tt[idx_t].pin_memory().cuda(), 5, wall=True),
                 "index_select+copy": _median_time(torch, lambda: out.copy_(
                     torch.index_select(tt, 0, idx_t, out=pinned), non_blocking=True), 5, wall=True)}
        uva = None
        if cp is not None:  # torch has no UVA view of host memory of its own: CuPy's UnownedMemory
            uva = _try(lambda: _uva_tensor(torch, cp, tt), notes if row == 64 else [], "UVA view")
        uva_t = None
        if uva is not None:
            idx_d = idx_t.cuda()
            uva_t = _try(lambda: _median_time(torch, lambda: torch.index_select(uva, 0, idx_d, out=out), 10),
                         notes, f"rows {row} B: index_select on a UVA view")
        lim = _median_time(torch, lambda: out.copy_(pinned, non_blocking=True), 10)
        r = _row(f"rows {row} B, {n} rows", "gather", gathered, th, peers, lim, ok, row=row,
                 uva_index_select_gbps=gathered / uva_t / 1e9 if uva_t else None)
        res["rows"].append(r)
        # scatter (assign) back from the device, a correctness row
        src = torch.randn(1024, cols, device="cuda")
        torch.cuda.synchronize()
        sidx = np.random.default_rng(row + 1).choice(table.shape[0], 1024, replace=False)
        before = table[sidx].copy()
        fs.scatter("t", sidx, src)
        ok_s = bool(np.array_equal(table[sidx].view(np.int32), src.cpu().numpy().view(np.int32)))
        table[sidx] = before
        res["rows"].append(dict(case=f"rows {row} B, 1024 rows", op="scatter", bytes=1024 * row,
                                mib=1024 * row / 2**20, ok=ok_s, row=None))
    finally:
        fs.unpin()
        fs.close()


def worker_io(torch, cp, res):
    import numpy as np

    from hauler import io
    notes = res["notes"]
    notes.append(f"hauler.io device path: {io.cufile_status()}")
    d = tempfile.mkdtemp(prefix="gpu-check-io-", dir=os.environ.get("HAULER_GPU_CHECK_SCRATCH") or None)
    try:
        n = 512 << 20
        src = torch.randint(-2**31, 2**31 - 1, (n // 4,), dtype=torch.int32, device="cuda")
        path, tpath, npath = (os.path.join(d, x) for x in ("h.bin", "t.pt", "n.bin"))

        def hw():
            with io.File(path, "w") as f:
                f.write(src)
                f.sync(data_only=True)
        th_w = _median_time(torch, hw, 3, warm=1, wall=True)
        with io.File(path) as f:
            label = "O_DIRECT" if f.direct else f"buffered ({f.direct_reason})"
        notes.append(f"file: {label}; the peers' reads may come from the page cache (files just written)")

        def tw():
            torch.save(src.cpu(), tpath)
            os.sync()

        def nw():
            src.cpu().numpy().tofile(npath)
            os.sync()
        peers_w = {"torch.save(t.cpu())": _median_time(torch, tw, 3, warm=1, wall=True),
                   "np.tofile(t.cpu())": _median_time(torch, nw, 3, warm=1, wall=True)}
        h = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        lim_w = _median_time(torch, lambda: h.copy_(src.view(torch.uint8), non_blocking=True), 5)
        ok_w = bool(np.array_equal(np.fromfile(path, dtype=np.int32), src.cpu().numpy()))
        res["rows"].append(_row("512 MiB device -> file", "write", n, th_w, peers_w, None, ok_w,
                                path_label=io.cufile_status(), d2h_gbps=n / lim_w / 1e9))
        out = torch.zeros_like(src)

        def hr():
            with io.File(path) as f:
                f.read_into(out)
        th_r = _median_time(torch, hr, 3, warm=1, wall=True)
        ok = bool(torch.equal(out, src))
        peers_r = {"torch.load().cuda()": _median_time(torch, lambda: torch.load(tpath).cuda(), 3, warm=1, wall=True),
                   "np.fromfile+copy": _median_time(torch, lambda: torch.from_numpy(
                       np.fromfile(npath, dtype=np.int32)).cuda(), 3, warm=1, wall=True)}
        res["rows"].append(_row("512 MiB file -> device", "read", n, th_r, peers_r, None, ok,
                                path_label=io.cufile_status()))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    res["status"] = "pass" if all(r["ok"] for r in res["rows"]) else "fail"


def worker_kv(torch, cp, res):
    try:
        from hauler import kv
    except ImportError as e:
        res.update(status="skipped", reason=f"hauler.kv is not in this tree ({e}): nothing to measure")
        return
    import inspect

    import numpy as np
    notes = res["notes"]
    # queue on the timed stream where the movers take stream= (else they run on it and wait)
    ks = {"stream": torch.cuda.current_stream().cuda_stream} if "stream" in inspect.signature(
        kv.run_plan).parameters else {}
    L, NB, BS, H, D = 8, 2048, 16, 8, 128
    caches = [torch.randn(2, NB, BS, H, D, device="cuda").to(torch.bfloat16) for _ in range(L)]
    layout = kv.KVLayout.vllm_flash(caches)
    nsel = 256
    blocks = np.random.default_rng(5).choice(NB, nsel, replace=False).astype(np.int64)
    blocks_d = torch.from_numpy(blocks).cuda()
    nbytes = L * 2 * nsel * BS * H * D * 2
    notes.append(f"{L} layers of vLLM flash caches (2, {NB}, {BS}, {H}, {D}) bf16; {nsel} blocks = "
                 f"{nbytes >> 20} MiB per move; limit: one device memcpy of the same bytes; peers: one "
                 "copy_ per extent, and index_select per layer")
    out = torch.empty(L, 2, nsel, BS, H, D, dtype=torch.bfloat16, device="cuda")
    ref = torch.stack([c[:, blocks_d] for c in caches])
    flat_a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    flat_b = torch.empty_like(flat_a)
    lim = _median_time(torch, lambda: flat_b.copy_(flat_a), 10)

    def per_extent_gather():
        for li, c in enumerate(caches):
            for p in range(2):
                for i, b in enumerate(blocks.tolist()):
                    out[li, p, i].copy_(c[p, b])

    def fancy_gather():
        for li, c in enumerate(caches):
            torch.index_select(c, 1, blocks_d, out=out[li])

    plan = None
    try:
        dst = kv.contiguous_layout_like(layout, nsel, out)
        plan = kv.plan(layout, blocks, dst, np.arange(nsel, dtype=np.int64))
    except Exception as e:
        notes.append(f"kv.plan: {type(e).__name__}: {e}")
    if plan is not None:
        def run():
            kv.run_plan(plan, **ks)
    else:
        def run():
            kv.gather_blocks(layout, blocks, out, **ks)
    out.fill_(float("nan"))
    run()
    torch.cuda.synchronize()
    ok = bool(torch.equal(out.view(torch.int16), ref.view(torch.int16)))
    th = _median_time(torch, run, 10)
    peers = {"copy_ per extent": _median_time(torch, per_extent_gather, 3, warm=1),
             "index_select": _median_time(torch, fancy_gather, 10)}
    res["rows"].append(_row(f"{nsel} of {NB} blocks, {L} layers", "gather", nbytes, th, peers, lim, ok))
    # scatter back into another cache set, copy inside a cache, device -> pinned host
    tgt = [torch.zeros_like(c) for c in caches]
    tlayout = kv.KVLayout.vllm_flash(tgt)
    ok_s = _try(lambda: (kv.scatter_blocks(tlayout, blocks, out, **ks), torch.cuda.synchronize(),
                         all(torch.equal(t[:, blocks_d].view(torch.int16), c[:, blocks_d].view(torch.int16))
                             for t, c in zip(tgt, caches)))[-1], notes, "scatter_blocks", res)
    if ok_s is not None:
        ts = _median_time(torch, lambda: kv.scatter_blocks(tlayout, blocks, out, **ks), 10)
        peers_s = {"index_copy_": _median_time(torch, lambda: [t.index_copy_(1, blocks_d, out[li])
                                                                for li, t in enumerate(tgt)], 10)}
        res["rows"].append(_row(f"{nsel} blocks, {L} layers", "scatter", nbytes, ts, peers_s, lim, ok_s))
    host = torch.empty(out.shape, dtype=torch.bfloat16, pin_memory=True)
    ok_h = _try(lambda: (kv.gather_blocks(layout, blocks, host, **ks), torch.cuda.synchronize(),
                         torch.equal(host.view(torch.int16), ref.cpu().view(torch.int16)))[-1], notes,
                "gather_blocks into pinned host memory")
    if ok_h is not None:
        hflat = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        th_h = _median_time(torch, lambda: kv.gather_blocks(layout, blocks, host, **ks), 10)
        peers_h = {"index_select+copy": _median_time(torch, lambda: host.copy_(
            torch.stack([c.index_select(1, blocks_d) for c in caches]), non_blocking=True), 5)}
        lim_h = _median_time(torch, lambda: hflat.copy_(flat_a, non_blocking=True), 10)
        res["rows"].append(_row(f"{nsel} blocks -> pinned host", "to host", nbytes, th_h, peers_h, lim_h, ok_h))
    if hasattr(kv, "SwapSpace"):
        _guarded(res, f"{nsel} blocks swap", _kv_swap_rows, torch, kv, res, layout, caches, tgt, blocks, blocks_d,
                 nbytes)
    else:
        notes.append("kv.SwapSpace is not in this tree: no swap rows")
    # copy inside each cache (last: it changes the caches): half the blocks onto blocks nobody reads
    rest = np.setdiff1d(np.arange(NB), blocks)[: nsel // 2]
    mapping = np.stack([blocks[: nsel // 2], rest], axis=1).astype(np.int64)
    s_d, d_d = torch.from_numpy(mapping[:, 0]).cuda(), torch.from_numpy(mapping[:, 1]).cuda()
    ok_c = _try(lambda: (kv.copy_blocks(layout, layout, mapping, **ks), torch.cuda.synchronize(),
                         all(torch.equal(c[:, d_d].view(torch.int16), c[:, s_d].view(torch.int16))
                             for c in caches))[-1], notes, "copy_blocks inside a cache", res)
    if ok_c is not None:
        tc = _median_time(torch, lambda: kv.copy_blocks(layout, layout, mapping, **ks), 10)
        peers_c = {"index_copy_": _median_time(torch, lambda: [c.index_copy_(1, d_d, c.index_select(1, s_d))
                                                                for c in caches], 10)}
        half = nbytes // 2
        lim_c = _median_time(torch, lambda: flat_b[:half].copy_(flat_a[:half]), 10)
        res["rows"].append(_row(f"{nsel // 2} blocks inside each cache", "copy", half, tc, peers_c, lim_c, ok_c))
    if hasattr(kv.Agent, "register"):
        _guarded(res, "kv CUDA IPC between 2 processes", _kv_ipc_rows, torch, kv, res)
    res["status"] = "pass" if all(r["ok"] for r in res["rows"]) else "fail"


_IPC_SHAPE = (4, 1024, 16, 8, 128)  # layers, blocks, tokens, heads, head size (bf16): 256 blocks = 32 MiB


def _kv_ipc_owner(conn):
    """The second process of the CUDA IPC check: owns a device cache, exports it, and hands back
    its bytes (as int16) on request so the reader can check its pushes."""
    import torch
    from hauler import kv
    L, NB, BS, H, D = _IPC_SHAPE
    torch.manual_seed(11)
    caches = [torch.randn(2, NB, BS, H, D, device="cuda").to(torch.bfloat16) for _ in range(L)]
    snap = lambda: [c.cpu().view(torch.int16).numpy() for c in caches]  # noqa: E731
    with kv.Agent("gpu-check-owner") as agent:
        conn.send((agent.register(kv.KVLayout.vllm_flash(caches)), snap()))
        while conn.recv() == "snapshot":
            torch.cuda.synchronize()
            conn.send(snap())


def _kv_ipc_rows(torch, kv, res):
    """hauler.kv.Agent with a peer's device cache on this GPU through CUDA IPC handles (two real
    processes): random blocks pulled into our device cache and pushed back into the peer's, every
    byte compared; the limit is one device memcpy of the same bytes in this process."""
    import multiprocessing

    import numpy as np
    L, NB, BS, H, D = _IPC_SHAPE
    ctx = multiprocessing.get_context("spawn")  # a forked child cannot use CUDA
    here, there = ctx.Pipe()
    owner = ctx.Process(target=_kv_ipc_owner, args=(there,), daemon=True)
    owner.start()
    try:
        if not here.poll(120):
            raise RuntimeError("the owner process did not register its cache within 120 s")
        meta, theirs = here.recv()
        mine = [torch.zeros(2, NB, BS, H, D, dtype=torch.bfloat16, device="cuda") for _ in range(L)]
        rng = np.random.default_rng(12)
        n = 256
        src, dst = rng.choice(NB, n, replace=False), rng.choice(NB, n, replace=False)
        nbytes = L * 2 * n * BS * H * D * 2
        with kv.Agent("gpu-check-reader") as agent:
            agent.register(kv.KVLayout.vllm_flash(mine))
            peer = agent.connect(meta)
            res["notes"].append(f"kv CUDA IPC: {n} random blocks of {L} layers (2, {NB}, {BS}, {H}, {D}) bf16 "
                                f"between 2 processes, {nbytes >> 20} MiB per move, transport {peer.transport_name}")
            agent.read(peer, dst, src).wait(60)
            torch.cuda.synchronize()
            ok_r = all(np.array_equal(m[:, dst].cpu().view(torch.int16).numpy(), t[:, src])
                       for m, t in zip(mine, theirs)) and peer.transport_name == "cuda_ipc"
            t_r = _median_time(torch, lambda: agent.read(peer, dst, src).wait(60), 5, wall=True)
            back = np.setdiff1d(np.arange(NB), src)[:n]  # our blocks into other blocks of the peer
            agent.write(peer, dst, back).wait(60)
            here.send("snapshot")
            now = here.recv()
            ok_w = all(np.array_equal(a[:, back], m[:, dst].cpu().view(torch.int16).numpy()) and
                       np.array_equal(np.delete(a, back, axis=1), np.delete(t, back, axis=1))
                       for a, m, t in zip(now, mine, theirs))
            t_w = _median_time(torch, lambda: agent.write(peer, dst, back).wait(60), 5, wall=True)
        flat_a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        flat_b = torch.empty_like(flat_a)
        lim = _median_time(torch, lambda: flat_b.copy_(flat_a), 10)
        res["rows"].append(_row(f"{n} blocks, peer's device cache (CUDA IPC)", "read", nbytes, t_r, {}, lim, ok_r))
        res["rows"].append(_row(f"{n} blocks, peer's device cache (CUDA IPC)", "write", nbytes, t_w, {}, lim, ok_w))
    finally:
        try:
            here.send("exit")
        except OSError:
            pass  # the owner is gone already
        owner.join(30)
        if owner.is_alive():
            owner.kill()


def _kv_swap_rows(torch, kv, res, layout, caches, tgt, blocks, blocks_d, nbytes):
    """SwapSpace: the live device cache to its pinned host block group and back, against torch's
    index_select + copy each way; the limits are pinned D2H and H2D memcpy of the same bytes."""
    space = kv.SwapSpace(host_bytes=2 * nbytes + (64 << 20))
    try:
        for t in tgt:
            t.zero_()
        tlayout = kv.KVLayout.vllm_flash(tgt)
        space.swap_out("r", layout, blocks, dirty="all").result()
        space.swap_in("r", tlayout, blocks).result()
        torch.cuda.synchronize()
        ok = all(torch.equal(t[:, blocks_d].view(torch.int16), c[:, blocks_d].view(torch.int16))
                 for t, c in zip(tgt, caches))
        t_out = _median_time(torch, lambda: space.swap_out("r", layout, blocks, dirty="all").result(), 5, wall=True)
        t_in = _median_time(torch, lambda: space.swap_in("r", tlayout, blocks).result(), 5, wall=True)
        staged = torch.empty((len(caches), 2, len(blocks)) + tuple(caches[0].shape[2:]), dtype=caches[0].dtype,
                             pin_memory=True)
        dev = torch.empty(staged.shape, dtype=staged.dtype, device="cuda")

        def torch_out():
            for li, c in enumerate(caches):
                torch.index_select(c, 1, blocks_d, out=dev[li])
            staged.copy_(dev, non_blocking=True)

        def torch_in():
            dev.copy_(staged, non_blocking=True)
            for li, t in enumerate(tgt):
                t.index_copy_(1, blocks_d, dev[li])
        flat_h = staged.view(-1).view(torch.uint8)
        flat_d = dev.view(-1).view(torch.uint8)
        lim_out = _median_time(torch, lambda: flat_h.copy_(flat_d, non_blocking=True), 10)
        lim_in = _median_time(torch, lambda: flat_d.copy_(flat_h, non_blocking=True), 10)
        res["rows"].append(_row(f"{len(blocks)} blocks, SwapSpace", "swap out", nbytes, t_out,
                                {"index_select+D2H": _median_time(torch, torch_out, 5, wall=True)}, lim_out, ok))
        res["rows"].append(_row(f"{len(blocks)} blocks, SwapSpace", "swap in", nbytes, t_in,
                                {"H2D+index_copy_": _median_time(torch, torch_in, 5, wall=True)}, lim_in, ok))
    finally:
        space.close()


def worker_offload(torch, cp, res):
    """hauler.offload's CUDA path: a small transformer's training steps from the same weights
    without offload, with it (every activation of 1 MiB or more to the files), and with a budget of
    half the activations; gradients compared bit for bit, peak device memory, seconds per step."""
    import warnings

    from hauler.offload import OffloadPathNotice, offload
    notes = res["notes"]
    # deterministic kernels, so that equal gradients mean something (set before cuBLAS starts)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    d = tempfile.mkdtemp(prefix="gpu-check-offload-", dir=os.environ.get("HAULER_GPU_CHECK_SCRATCH") or None)
    torch.manual_seed(0)
    width, layers, seq, batch = 1024, 6, 512, 16
    model = torch.nn.Sequential(*[torch.nn.TransformerEncoderLayer(width, 16, 4 * width, dropout=0.0, batch_first=True)
                                  for _ in range(layers)]).cuda()
    x = torch.randn(batch, seq, width, device="cuda")
    case = f"transformer {layers} x d{width}, batch {batch} x {seq}"

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from support.offload_device import train_step

    def step(off, keep=False):
        grads = train_step(model, x, off)
        return grads if keep else None

    def measure(off, steps=3):
        step(off)   # warm-up: allocator, pinned host cache, files
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            step(off)
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps, torch.cuda.max_memory_allocated()

    offs = []
    try:
        ref, again = step(None, True), step(None, True)
        repeatable = all(torch.equal(a, b) for a, b in zip(ref, again))
        if not repeatable:
            notes.append("two plain steps gave different gradients (a nondeterministic kernel): the offload "
                         "comparison below cannot be bit for bit")
        del again
        t_plain, peak_plain = measure(None)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            full = offload(d, min_bytes=1 << 20)
            offs.append(full)
            got = step(full, True)
        notes += [str(w.message) for w in seen if issubclass(w.category, OffloadPathNotice)]
        equal = all(torch.equal(a, b) for a, b in zip(ref, got))
        del got
        total = full.stats["bytes_written"]
        before = dict(full.stats)
        t_off, peak_off = measure(full)
        per = {k: (full.stats[k] - before[k]) / 4 for k in ("bytes_written", "bytes_read", "wait_s")}
        res["rows"].append(_row(case, "train step, offload all", int(per["bytes_written"]), t_off,
                                {"no offload": t_plain}, None, equal and repeatable and full.stats["failed_writes"] == 0,
                                path=full.stats["path"], peak_mib=peak_off / 2**20, peak_mib_plain=peak_plain / 2**20,
                                s_per_step_plain=t_plain, bytes_read_per_step=per["bytes_read"],
                                wait_s_per_step=per["wait_s"], grads_bit_identical=equal, plain_repeatable=repeatable,
                                stats=dict(full.stats)))
        half = offload(d, min_bytes=1 << 20, budget=total // 2)
        offs.append(half)
        step(half)   # the first step measures the activations; the budget holds from the second on
        got = step(half, True)
        equal = all(torch.equal(a, b) for a, b in zip(ref, got))
        del got
        before = dict(half.stats)
        t_half, peak_half = measure(half)
        res["rows"].append(_row(case, f"train step, budget {total // 2 >> 20} MiB",
                                int((half.stats["bytes_written"] - before["bytes_written"]) / 4), t_half,
                                {"no offload": t_plain}, None, equal and repeatable and half.stats["failed_writes"] == 0,
                                path=half.stats["path"], peak_mib=peak_half / 2**20, peak_mib_plain=peak_plain / 2**20,
                                s_per_step_plain=t_plain, grads_bit_identical=equal, stats=dict(half.stats)))
    finally:
        for off in offs:
            off.close()
        shutil.rmtree(d, ignore_errors=True)
    for r in res["rows"]:   # the table shows GB/s; these are the figures that matter here
        notes.append(f"{r['op']}: {r['seconds']:.3f} s/step (no offload {r['s_per_step_plain']:.3f}), peak device "
                     f"memory {r['peak_mib']:.0f} MiB (no offload {r['peak_mib_plain']:.0f}), "
                     f"{r['bytes'] / 2**20:.0f} MiB written per step, path {r['path']}, gradients "
                     f"{'bit-identical' if r['grads_bit_identical'] else 'DIFFERENT'}")
    res["status"] = "pass" if res["rows"] and all(r["ok"] for r in res["rows"]) else "fail"


WORKERS = {"env": worker_env, "pack": worker_pack, "gather": worker_gather, "io": worker_io, "kv": worker_kv,
           "offload": worker_offload}


def worker(section, path):
    res = {"status": "error", "rows": [], "notes": []}

    def save():
        with open(path, "w") as f:
            json.dump(res, f, default=str)
    try:
        import torch
        try:
            import cupy as cp
        except ImportError as e:
            cp = None
            res["notes"].append(f"CuPy not importable ({e}): its peers are not measured")
        if not torch.cuda.is_available():
            res.update(status="skipped", reason="torch sees no CUDA device")
            return 0
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            if cp is not None:
                with cp.cuda.ExternalStream(s.cuda_stream):
                    WORKERS[section](torch, cp, res)
            else:
                WORKERS[section](torch, cp, res)
        torch.cuda.synchronize()
    except Exception as e:
        import traceback
        res["status"], res["reason"] = "error", f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()[-3000:]
        print(res["traceback"], file=sys.stderr)
    finally:
        save()
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu-check",
                    help="report folder (default: $OUT when set, else ./gpu-check)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for everything (default 480)")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that builds and runs (default: this one)")
    ap.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"install prefix for the build (default {DEFAULT_PREFIX})")
    ap.add_argument("--arch", default=os.environ.get("HAULER_CUDA_ARCH") or "90",
                    help="HAULER_CUDA_ARCH for the build (default 90: sm_90 machine code + PTX)")
    ap.add_argument("--jobs", type=int, default=0, help="HAULER_BUILD_JOBS (default: every core)")
    ap.add_argument("--dry-run", action="store_true", help="measure nothing even where a GPU is present")
    ap.add_argument("--build-only", action="store_true",
                    help="run the build step (also without a GPU; no time cap but --budget) and stop")
    ap.add_argument("--no-build", action="store_true",
                    help="reuse the build already in --prefix (a rerun on the same machine)")
    ap.add_argument("--only", default=",".join(STEPS),
                    help=f"the steps to run after the build, comma-separated (default: all of {','.join(STEPS)})")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        if not args.json:
            ap.error("--worker needs --json")
        return worker(args.worker, args.json)
    if args.budget <= 0:
        ap.error(f"--budget must be positive, got {args.budget}")
    if args.no_build and not os.path.isfile(os.path.join(args.prefix, "hauler", "_build_info.json")):
        ap.error("--no-build needs --prefix naming a folder that holds a build (hauler/_build_info.json)")
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in args.only if x not in STEPS]
    if unknown or not args.only:
        ap.error(f"--only takes steps from {','.join(STEPS)}; got {unknown or 'none'}")
    if args.jobs < 0:
        ap.error(f"--jobs must be >= 0, got {args.jobs}")
    try:
        return orchestrate(args)
    finally:
        while _SCRATCH:
            shutil.rmtree(_SCRATCH.pop(), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
