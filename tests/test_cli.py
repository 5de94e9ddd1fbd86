"""`hauler info` as a user runs it: a subprocess, text and --json."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import hauler
from hauler import config


def hauler_cmd():
    exe = shutil.which("hauler", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "hauler.cli"]


def run(*args, env=None, check=True):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(hauler_cmd() + list(args), env=e, capture_output=True, text=True,
                       timeout=120)
    if check:
        assert p.returncode == 0, f"hauler {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}"
    return p


def test_console_script_is_installed():
    assert shutil.which("hauler", path=os.path.dirname(sys.executable)), \
        "the `hauler` console script is not installed next to this Python"


def test_info_text():
    out = run("info").stdout
    assert out.startswith(f"hauler {hauler.__version__}\n")
    for word in ("core", "build", "cuda", "mpi", "cores", "settings"):
        assert f"\n  {word}" in out or f"\n{word}" in out, f"no {word!r} line in:\n{out}"
    for s in config.SETTINGS:
        assert s.name in out


def test_info_json():
    info = json.loads(run("info", "--json").stdout)
    assert info["version"] == hauler.__version__
    assert info["core"]["importable"] is True
    assert info["cores"]["usable"] >= 1 and info["cores"]["os"] >= info["cores"]["usable"]
    assert [s["name"] for s in info["settings"]] == [s.name for s in config.SETTINGS]
    assert all(s["error"] is None for s in info["settings"])

    b = info["build"]["info"]
    assert b is not None, info["build"]["error"]
    assert b["schema"] == 1 and b["version"] == hauler.__version__
    assert "-std=c++17" in b["core"]["flags"] and "-fvisibility=hidden" in b["core"]["flags"]
    assert isinstance(b["cuda"]["built"], bool) and b["cuda"]["reason"]
    assert info["cuda"]["library_exists"] == b["cuda"]["built"]

    cu = info["cuda"]
    assert cu["error"] is None, cu["error"]
    assert cu["available"] is hauler.cuda_available()
    assert cu["status"] == hauler.cuda_status()

    m = info["mpi"]
    assert isinstance(m["found"], bool)
    if m["found"]:
        assert os.path.isfile(m["path"]) and m["vendor"] in ("Open MPI", "MPICH", "MVAPICH",
                                                            "Intel MPI", "unknown")
    else:
        assert "apt-get install" in m["install_hint"]


def test_info_reports_bad_settings_and_mpi_without_failing():
    p = run("info", "--json", env={"HAULER_THREADS": "many", "HAULER_MPICC": "/nonexistent/mpicc"})
    info = json.loads(p.stdout)
    threads = next(s for s in info["settings"] if s["name"] == "HAULER_THREADS")
    assert threads["error"].startswith("HAULER_THREADS='many': expected")
    assert info["mpi"]["found"] is False
    assert "HAULER_MPICC='/nonexistent/mpicc'" in info["mpi"]["error"]
    assert "INVALID: HAULER_THREADS='many'" in run("info", env={"HAULER_THREADS": "many"}).stdout


def test_no_subcommand_prints_usage():
    p = run(check=False)
    assert p.returncode == 2 and "info" in p.stderr


def test_info_does_not_initialize_mpi():
    code = ("import sys, hauler.cli; hauler.cli.collect_info(); "
            "assert 'mpi4py.MPI' not in sys.modules, 'hauler info imported mpi4py.MPI'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("kind", ["missing", "not executable", "not a program"])
def test_run_with_a_launcher_that_cannot_start(kind, tmp_path):
    """A launcher that is missing or cannot run is named in one line, not a traceback: exit 127
    (missing, or no execute permission) or 126 (the kernel refuses to run it)."""
    launcher = tmp_path / "mpiexec.mpich"  # a known launcher by name: nothing asks it --version
    if kind != "missing":
        launcher.write_text("plain text, no interpreter line\n")
        launcher.chmod(0o644 if kind == "not executable" else 0o755)
    if kind == "not executable" and os.access(launcher, os.X_OK):
        pytest.skip("this user may execute any file")
    p = run("run", "--launcher", str(launcher), "--", "true", check=False)
    if kind == "not a program":
        assert p.returncode == 126, (p.returncode, p.stderr)
        # after the line that names the shim chosen, the one line of the failure
        first, last = p.stderr.strip().splitlines()
        assert first.startswith("hauler run: MPI ") and " shim " in first, p.stderr
        assert last.startswith(f"hauler run: cannot start {str(launcher)!r}: "), p.stderr
    else:
        assert p.returncode == 127, (p.returncode, p.stderr)
        assert p.stderr.strip() == (f"hauler run: launcher {str(launcher)!r} not found or not executable "
                                    f"(give one with --launcher, or put mpiexec on PATH)"), p.stderr


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("where", ["alone", "with options", "before --"])
def test_run_help_goes_to_stdout_and_exits_0(flag, where):
    args = {"alone": [flag], "with options": ["-n", "2", flag],
            "before --": ["--dry-run", flag, "--", "prog"]}[where]
    p = run("run", *args, check=False)
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert p.stderr == ""
    assert p.stdout.startswith("usage: hauler run ")
    for option in ("--launcher MPIEXEC", "--dry-run", "-h, --help", "launcher options"):
        assert option in p.stdout, option


def test_run_help_after_the_separator_belongs_to_the_program():
    p = run("run", "--dry-run", "--launcher", "mpiexec", "--", "prog", "--help", check=False)
    assert "usage: hauler run" not in p.stdout
    if p.returncode == 0:  # an interposer was built: the dry run shows the program's own --help
        assert p.stdout.split()[-2:] == ["prog", "--help"]


def test_run_without_separator_is_a_usage_error():
    p = run("run", "prog", check=False)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("usage: hauler run ") and "--help" in p.stderr


@pytest.mark.parametrize("launcher,expect", [
    ("mpiexec.openmpi", ["-x", "LD_PRELOAD={lib}:/usr/lib/user.so", "-x", "HAULER_INTERPOSE_LOG=debug",
                         "-x", "HAULER_INTERPOSE_REPORT=/tmp/r.%r", "-n", "2"]),
    ("prterun", ["-x", "LD_PRELOAD={lib}:/usr/lib/user.so", "-x", "HAULER_INTERPOSE_LOG=debug",
                 "-x", "HAULER_INTERPOSE_REPORT=/tmp/r.%r", "-n", "2"]),
    ("mpiexec.hydra", ["-genv", "LD_PRELOAD", "{lib}:/usr/lib/user.so", "-genv", "HAULER_INTERPOSE_LOG", "debug",
                       "-genv", "HAULER_INTERPOSE_REPORT", "/tmp/r.%r", "-n", "2"]),
    ("srun", ["--export=ALL,LD_PRELOAD={lib}:/usr/lib/user.so,HAULER_INTERPOSE_LOG=debug,"
              "HAULER_INTERPOSE_REPORT=/tmp/r.%r", "-n", "2"]),
])
def test_run_dry_run_each_launchers_syntax(launcher, expect, tmp_path):
    """--dry-run shows how each known launcher gets the shim (the user's LD_PRELOAD kept after it)
    and every HAULER_* setting to remote ranks; srun with --export=ALL,..., never -x (exclude)."""
    from hauler import interpose
    libs = interpose.libraries()
    if not libs:
        pytest.skip("no interposer built")
    fake = tmp_path / launcher   # only its name matters to a dry run
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAULER_")}
    env.update(LD_PRELOAD="/usr/lib/user.so", HAULER_INTERPOSE_LOG="debug", HAULER_INTERPOSE_REPORT="/tmp/r.%r")
    p = subprocess.run([sys.executable, "-m", "hauler.cli", "run", "--dry-run", "--launcher", str(fake), "-n", "2",
                        "--", "true"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 0, p.stderr
    words = p.stdout.split()
    assert words[0] == str(fake) and words[-1] == "true", words
    lib = next(w for w in words if "libhauler_interpose.so" in w).split("LD_PRELOAD=")[-1].split(",")[0].split(":")[0]
    assert lib in libs.values()
    assert words[1:-1] == [w.format(lib=lib) for w in expect], words
    assert "-x" not in words or launcher != "srun"


def test_run_unknown_launcher_is_refused_with_the_known_list(tmp_path):
    fake = tmp_path / "aprun"
    fake.write_text("#!/bin/sh\necho some other launcher\n")
    fake.chmod(0o755)
    p = run("run", "--dry-run", "--launcher", str(fake), "--", "true", check=False)
    assert p.returncode == 2, p.stderr
    msg = p.stderr.strip()
    assert len(msg.splitlines()) == 1 and "aprun" in msg, msg
    for known in ("prterun", "mpiexec.hydra", "srun", "-genv", "hauler interpose --path"):
        assert known in msg, msg
