"""The LD_PRELOAD interposer under real mpiexec jobs, Open MPI and MPICH.

C programs in tests/interpose/ are compiled with each flavour's mpicc and run with and without
the shim (injected by `hauler run`, exactly as users launch); every rank writes what it received
and the statuses it saw, and the files must be byte-identical. The shim's per-rank report must
show that packing actually happened, so a shim that passes everything through fails here.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hauler import interpose, mpi_find

HERE = Path(__file__).resolve().parent / "interpose"
TIMEOUT = 90  # seconds per mpiexec job: a hang fails instead of blocking CI
VENDOR = {"openmpi": mpi_find.OPEN_MPI, "mpich": mpi_find.MPICH}


def _tools(flav):
    """(mpicc, mpiexec) of a flavour, or skip when that MPI is not installed."""
    cc, run = shutil.which(f"mpicc.{flav}"), shutil.which(f"mpiexec.{flav}")
    if not cc or not run:
        pytest.skip(f"{VENDOR[flav]} is not installed (mpicc.{flav}, mpiexec.{flav}): "
                    f"{mpi_find.install_hint(VENDOR[flav])}")
    libs = interpose.libraries()
    assert flav in libs, (f"{VENDOR[flav]} is installed but no interposer was built for it "
                          f"(built: {sorted(libs)}); reinstall hauler")
    return cc, run


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    cache = {}
    out = tmp_path_factory.mktemp("interpose-bin")

    def get(flav, prog):
        key = (flav, prog)
        if key not in cache:
            cc, _ = _tools(flav)
            exe = out / f"{prog}_{flav}"
            src, args = HERE / f"{prog}.c", []
            if not src.exists():  # a Fortran program: the flavour's mpif90
                src, cc = HERE / "fort.F90", shutil.which(f"mpif90.{flav}")
                if not cc:
                    pytest.skip(f"no mpif90.{flav} (gfortran and the {VENDOR[flav]} Fortran bindings)")
                # fort: `use mpi` (MPICH's has no choice-buffer interfaces); fort08: `use mpi_f08`
                args = ["-DHAULER_F08"] if prog == "fort08" else ["-fallow-argument-mismatch"]
            p = subprocess.run([cc, "-O1", "-w", *args, str(src), "-o", str(exe)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
            assert p.returncode == 0, p.stdout.decode()
            cache[key] = str(exe)
        return cache[key]

    return get


def _launch(flav, np_, program, shim, env_extra=None):
    """Run `program` on np_ ranks; with shim=True through `hauler run`. Returns the process."""
    _, mpiexec = _tools(flav)
    q = mpi_find.VENDOR_QUIRKS[VENDOR[flav]]
    opts = ["-n", str(np_)] + list(q["args"])
    if os.geteuid() == 0:
        opts += list(q["root_args"])
    env = dict(os.environ)
    env.update(q["env"])
    env.pop("LD_PRELOAD", None)
    for k in [k for k in env if k.startswith("HAULER_INTERPOSE")]:
        env.pop(k)
    # a model this machine's `hauler-bench calibrate` wrote must not steer the tests, nor timing
    # (the model alone decides unless a test asks for trials: counts stay exact)
    if shim:
        env_extra = dict({"HAULER_INTERPOSE_MODEL": "builtin", "HAULER_INTERPOSE_TRIALS": "0"}, **(env_extra or {}))
    env.update(env_extra or {})
    env_extra = {k: v for k, v in (env_extra or {}).items() if k != "LD_PRELOAD"}  # hauler run adds it
    if shim:
        argv = [sys.executable, "-m", "hauler.cli", "run", "--launcher", mpiexec] + opts + ["--"] + program
        if flav == "openmpi":  # Open MPI forwards only what -x names
            extra = []
            for k in (env_extra or {}):
                extra += ["-x", k]
            argv[6:6] = extra
        else:
            extra = []
            for k, v in (env_extra or {}).items():
                extra += ["-genv", k, v]
            argv[6:6] = extra
    else:
        argv = [mpiexec] + opts + program
    p = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT)
    assert p.returncode == 0, f"{' '.join(argv)} failed ({p.returncode}):\n{p.stdout.decode()[-4000:]}"
    return p


REPORT = re.compile(r"hauler-interpose rank (\d+): (.*)")


def _report(path_pattern, np_):
    total = {}
    for r in range(np_):
        text = Path(path_pattern.replace("%r", str(r))).read_text()
        m = REPORT.search(text)
        assert m, text
        for kv in m.group(2).split():
            k, v = kv.split("=")
            total[k] = total.get(k, 0) + float(v)
            # every program here completes (or frees) each request before MPI_Finalize, so each
            # staging buffer the shim took must have been given back
            if k == "staging_held":
                assert v == "0", f"rank {r}: {v} staging buffers never given back:\n{text}"
    assert "staging_held" in total, text
    return total


def _compare(a, b, np_):
    for r in range(np_):
        x, y = Path(f"{a}.{r}").read_bytes(), Path(f"{b}.{r}").read_bytes()
        assert len(x) > 0
        assert x == y, f"rank {r}: output with the interposer differs from the library alone"


def _run_pair(flav, np_, prog_argv, tmp_path, extra=None, pack_all=True):
    """The program alone and under `hauler run`; pack_all: a model file that packs every
    non-contiguous message (the built-in model passes small messages through)."""
    lib, shim = str(tmp_path / "lib"), str(tmp_path / "shim")
    rep = str(tmp_path / "report.%r")
    _launch(flav, np_, [prog_argv[0], lib] + prog_argv[1:], shim=False)
    env = {"HAULER_INTERPOSE_REPORT": rep}
    if pack_all:
        env["HAULER_INTERPOSE_MODEL"] = str(_pack_all_model(tmp_path))
    env.update(extra or {})
    _launch(flav, np_, [prog_argv[0], shim] + prog_argv[1:], shim=True, env_extra=env)
    _compare(lib, shim, np_)
    return rep


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
@pytest.mark.parametrize("np_", [2, 3])
def test_p2p_pack_collectives_identical(flav, np_, built, tmp_path):
    seed = random.randrange(1, 10**9)
    rep = _run_pair(flav, np_, [built(flav, "p2p"), str(seed)], tmp_path)
    t = _report(rep, np_)
    print(f"seed={seed} report={t}")
    assert t["packed_msgs"] > 50 and t["unpacked_msgs"] > 50, t   # packing really happened
    assert t["mpi_pack"] >= 2 and t["bytes_packed"] > 0, t
    assert t["coll_packed"] == 4 * np_ and t["coll_passthrough"] == 0, t
    # a program that never loads CUDA: the shim never loaded or asked the driver either
    assert t["cuda_driver"] == 0 and t["device_passthrough"] == 0, t


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
@pytest.mark.parametrize("np_", [2, 3])
def test_fortran_identical(flav, np_, built, tmp_path):
    """A `use mpi` program: Open MPI's Fortran layer calls PMPI_* itself, so the shim's own
    Fortran entry points must catch it (fortran= counts them); MPICH's calls the C MPI_*."""
    rep = _run_pair(flav, np_, [built(flav, "fort")], tmp_path)
    t = _report(rep, np_)
    # per rank: Send, Sendrecv, 6 Isend packed; Recv, Sendrecv, 6 Irecv unpacked; 2 Pack + 2 Unpack
    assert t["packed_msgs"] == 8 * np_ and t["unpacked_msgs"] == 8 * np_ and t["mpi_pack"] == 4 * np_, t
    assert t["fortran"] == (21 * np_ if flav == "openmpi" else 0), t


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_fortran_f08_identical(flav, built, tmp_path):
    """The same program with `use mpi_f08`, identical results. Open MPI's f08 layer calls
    ompi_x_f / pmpi_test_ ..., which the shim defines too (same counts as `use mpi`). MPICH's f08
    MPI_Init calls PMPI_Init itself: the shim never switches on, and every call goes straight to
    the library (no report), never half through the shim."""
    rep = _run_pair(flav, 2, [built(flav, "fort08")], tmp_path)
    if flav == "mpich":
        assert not os.path.exists(rep.replace("%r", "0")) and not os.path.exists(rep.replace("%r", "1"))
        return
    t = _report(rep, 2)
    assert t["packed_msgs"] == 16 and t["unpacked_msgs"] == 16 and t["mpi_pack"] == 8, t
    assert t["fortran"] == 42, t


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
@pytest.mark.parametrize("np_", [2, 3])
def test_library_owned_requests_and_receives(flav, np_, built, tmp_path):
    """Shim-packed messages against what the library handles alone: persistent requests in the
    same Waitall/Testany/Testall arrays as the shim's, Probe/Iprobe counts, Mprobe/Mrecv and
    Improbe/Imrecv into the derived type, Sendrecv_replace against the shim's Sendrecv."""
    rep = _run_pair(flav, np_, [built(flav, "mixed")], tmp_path)
    t = _report(rep, np_)
    # per rank 3 + 2 + 2 packed sends and 3 + 1 unpacked receives; odd ranks one Sendrecv more
    assert t["packed_msgs"] == 7 * np_ + np_ // 2 and t["unpacked_msgs"] == 4 * np_ + np_ // 2, t


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_calibrated_model_read_by_default(flav, built, tmp_path, monkeypatch):
    """With HAULER_INTERPOSE_MODEL unset the shim reads the model `hauler-bench calibrate` writes
    ($XDG_CONFIG_HOME/hauler/interpose-model.txt); "builtin" ignores it."""
    from hauler.interpose import default_model_path, model_in_effect

    cfg = tmp_path / "config"
    (cfg / "hauler").mkdir(parents=True)
    env = {"XDG_CONFIG_HOME": str(cfg)}
    assert default_model_path().startswith(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~"))
    (cfg / "hauler" / "interpose-model.txt").write_text(f"# pack nothing\n{flav}.max_block 0\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(cfg))
    assert model_in_effect({"HAULER_INTERPOSE_MODEL": ""}) == str(cfg / "hauler" / "interpose-model.txt")
    assert model_in_effect({"HAULER_INTERPOSE_MODEL": "builtin"}) is None
    seed = str(random.randrange(1, 10**9))
    runs = {}
    for name, model in (("unset", ""), ("builtin", "builtin")):
        (tmp_path / name).mkdir()
        rep = _run_pair(flav, 2, [built(flav, "p2p"), seed], tmp_path / name, pack_all=False,
                        extra=dict(env, HAULER_INTERPOSE_MODEL=model))
        runs[name] = _report(rep, 2)
    assert runs["unset"]["packed_msgs"] == 0 and runs["unset"]["passthrough"] > 0, runs["unset"]
    assert runs["builtin"]["packed_msgs"] > 0, runs["builtin"]


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_builtin_model_identical(flav, built, tmp_path):
    """The default model (small messages and large blocks pass through) gives the same bytes."""
    rep = _run_pair(flav, 2, [built(flav, "p2p"), str(random.randrange(1, 10**9))], tmp_path, pack_all=False)
    t = _report(rep, 2)
    assert t["passthrough"] > 0 and t["packed_msgs"] > 0, t


# Faces of tests/interpose/halo.c's 26 that the shim packs: the 8 corners and the 4 edges along
# the last dimension are one dense run each, which the library sends as it is.
HALO_PACKED = 14


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_halo_26_neighbours_identical(flav, built, tmp_path):
    rep = _run_pair(flav, 4, [built(flav, "halo"), "5", "2"], tmp_path)
    t = _report(rep, 4)
    assert t["packed_msgs"] == 4 * 2 * HALO_PACKED and t["unpacked_msgs"] == 4 * 2 * HALO_PACKED, t
    assert t["contiguous"] == 4 * 2 * 2 * 12, t


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_threads_identical(flav, built, tmp_path):
    """MPI_THREAD_MULTIPLE: 4 threads per rank post, complete (Waitall, Wait, Testall, Waitany)
    and free their own packed messages and types at once, each also running an Alltoallw on its
    own communicator. A request the library completes in one
    thread frees its handle for the next request another thread posts; the shim's record of the
    first must be gone by then (before the fix about 7 runs in 10 differed here)."""
    threads, rounds = 4, 150
    rep = _run_pair(flav, 2, [built(flav, "threads"), str(threads), str(rounds)], tmp_path)
    t = _report(rep, 2)
    assert t["packed_msgs"] == 2 * threads * rounds and t["unpacked_msgs"] == 2 * threads * rounds, t
    assert t["coll_packed"] == 2 * threads * rounds and t["coll_passthrough"] == 0, t


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_pcontrol_pauses_and_resumes(flav, built, tmp_path):
    """MPI_Pcontrol(0) pauses the shim for new messages, MPI_Pcontrol(1) resumes it; the program
    switches between posting its receives and its sends, so staged receives meet the library's
    sends and the other way round, and every byte is as with the library alone."""
    rep = _run_pair(flav, 2, [built(flav, "halo"), "5", "4", "pcontrol"], tmp_path)
    t = _report(rep, 2)
    # per rank: receives staged in rounds 0, 1, 3 and paused in 2; sends staged in 0, 2, paused in 1, 3
    assert t["unpacked_msgs"] == 2 * 3 * HALO_PACKED and t["packed_msgs"] == 2 * 2 * HALO_PACKED, t
    assert t["paused"] == 2 * 3 * 26, t


SELECT = re.compile(r"hauler-interpose rank (\d+) select: (size=.*)")


def _selections(path_pattern, np_):
    """The report's per-selection lines of every rank, as dicts of strings."""
    out = []
    for r in range(np_):
        for m in SELECT.finditer(Path(path_pattern.replace("%r", str(r))).read_text()):
            out.append(dict(kv.split("=") for kv in m.group(2).split()))
    return out


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
@pytest.mark.parametrize("np_", [2, 3])
def test_selection_per_message_identical(flav, np_, built, tmp_path):
    """HAULER_INTERPOSE_TRIALS: each side times both paths per (type, count, direction, peer) and
    keeps the faster, re-checking at message 64, 128, ..., each side on its own, so a
    message may be packed on one side and typed on the other, and either side may switch between
    two messages. Against ANY_SOURCE/ANY_TAG from two senders, Probe/Mprobe + Get_count, a
    persistent receive, Sendrecv and Testsome, every received byte and status field is what the
    library alone gives; the report's counters account for every message."""
    rep = _run_pair(flav, np_, [built(flav, "select"), "160"], tmp_path, pack_all=False,
                    extra={"HAULER_INTERPOSE_TRIALS": "4"})
    t = _report(rep, np_)
    sel = _selections(rep, np_)
    assert t["trial_lib"] > 0 and t["trial_pack"] > 0, t
    assert sum(int(s["msgs"]) for s in sel) == t["trial_lib"] + t["trial_pack"] + t["kept_lib"] + t["kept_pack"], t
    assert t["packed_msgs"] > 0 and t["unpacked_msgs"] > 0, t
    assert {(s["dir"], s["peer"]) for s in sel} >= {("send", "node"), ("recv", "node"), ("recv", "any")}, sel
    for s in sel:
        assert int(s["rounds"]) >= (2 if int(s["msgs"]) >= 128 else 1), s  # first round, then again at 64
        lib, pack = float(s["lib_us"]), float(s["pack_us"])
        assert lib > 0 and pack > 0, s
        assert s["kept"] == ("pack" if pack < lib else "lib"), s  # the faster is kept


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_selection_keeps_the_faster_path(flav, tmp_path):
    """hauler-bench mpi's program: a ping-pong of a 1 MiB vector of 1-byte blocks, which both
    libraries walk byte by byte (10-50x the CPU time of packing it): every selection, send and
    receive on both ranks, keeps packing after its trials (CPU time, so a busy machine's
    descheduling does not decide) and the later messages are packed. And the NAS LU y face
    exchange (2.5 KiB blocks), which both libraries here move about 1.3x faster than a pack,
    send and unpack: each of its selections keeps the path its trials measured faster (the
    library in every run seen; the margin is too thin to assert on a busy machine)."""
    from hauler.bench.core import program_path
    cc, _ = _tools(flav)
    exe = tmp_path / "pingpong"
    subprocess.run([cc, "-O2", "-w", program_path("mpi_pingpong.c"), program_path("mpi_patterns.c"), "-o", str(exe)],
                   check=True, timeout=120)
    rep = str(tmp_path / "report.%r")
    _launch(flav, 2, [str(exe), "0.002", "vector:1:1048576", "nas_lu_y:64:0"], shim=True,
            env_extra={"HAULER_INTERPOSE_REPORT": rep, "HAULER_INTERPOSE_TRIALS": "4"})
    t = _report(rep, 2)
    sel = _selections(rep, 2)
    show = [" ".join(f"{k}={v}" for k, v in s.items()) for s in sel]
    assert len(sel) == 8 and {(s["dir"], s["block"]) for s in sel} == {
        (d, b) for d in ("send", "recv") for b in ("1", "2560")}, show
    for s in sel:
        lib, pack = float(s["lib_us"]), float(s["pack_us"])
        assert s["kept"] == ("pack" if pack < lib else "lib"), show
        if s["block"] == "1":
            assert s["kept"] == "pack", show
    # after its 4 + 4 trials every message of a 1-byte selection was packed (no re-check before 64)
    after = sum(int(s["msgs"]) - 8 for s in sel if s["block"] == "1" and int(s["msgs"]) < 64)
    assert t["kept_pack"] >= after > 0 and t["trial_lib"] >= 8 * 4, (t, show)


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
@pytest.mark.parametrize("prog,args,np_", [("p2p", ["9"], 3), ("mixed", [], 2), ("halo", ["5", "6"], 4)])
def test_trials_switching_paths_identical(flav, prog, args, np_, built, tmp_path):
    """The earlier programs with 2 trials a path (a new path every other message at first), the
    model seeding "pack": byte-identical to the library alone, and both paths really ran."""
    rep = _run_pair(flav, np_, [built(flav, prog)] + args, tmp_path, extra={"HAULER_INTERPOSE_TRIALS": "2"})
    t = _report(rep, np_)
    assert t["trial_lib"] > 0 and t["trial_pack"] > 0 and t["packed_msgs"] > 0, t


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_selection_off_for_device_buffers(flav, built, tmp_path):
    """A selection whose messages cannot be staged (here device memory, a stand-in libcuda and no
    GPU kernels) stops trying: the library takes every message, untimed, and the report says off."""
    _tools(flav)
    fake = tmp_path / "libcuda.so.1"
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(fake),
                    str(HERE / "fakecuda.c")], check=True, timeout=60)
    rep = _run_pair(flav, 2, [built(flav, "halo"), "6", "3"], tmp_path,
                    extra={"LD_PRELOAD": str(fake), "HAULER_INTERPOSE_TRIALS": "4"})
    t = _report(rep, 2)
    sel = _selections(rep, 2)
    assert t["packed_msgs"] == 0 and t["trial_pack"] == 2 * 2 * HALO_PACKED, t  # each selection's first pack trial
    assert sel and all(s["kept"] == "off" for s in sel), sel


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_kill_switch_passes_everything_through(flav, built, tmp_path):
    lib, shim = str(tmp_path / "lib"), str(tmp_path / "shim")
    _launch(flav, 2, [built(flav, "halo"), lib, "4", "1"], shim=False)
    rep = tmp_path / "report.%r"
    _launch(flav, 2, [built(flav, "halo"), shim, "4", "1"], shim=True,
            env_extra={"HAULER_INTERPOSE": "0", "HAULER_INTERPOSE_REPORT": str(rep)})
    _compare(lib, shim, 2)
    assert not list(tmp_path.glob("report.*")), "the switched-off shim wrote a report"


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_large_count_types_and_calls(flav, built, tmp_path):
    """MPI-4 large counts (MPICH 4; Open MPI 4.1 has none, and the program sends the same with the
    plain calls): a type built with MPI_Type_vector_c, and one built over it, stay with the library
    (the shim queried them with MPI_Type_get_envelope_c instead of aborting in the plain call);
    MPI_Send_c/Recv_c/Isend_c/Irecv_c/Sendrecv_c/Pack_c/Unpack_c of a plain vector are packed by the
    shim like the int calls; every byte and status as with the library alone."""
    rep = _run_pair(flav, 2, [built(flav, "largecount")], tmp_path)
    t = _report(rep, 2)
    if flav == "mpich":
        # per rank: the plain vector decoded, the two large-count types refused; plain(v) packs 2
        # sends and 2 receives and 2 Pack/Unpack, large_calls(v) 3 sends, 3 receives and 2 more
        assert t["types_decoded"] == 2 and t["types_refused"] == 4, t
        assert t["packed_msgs"] == 10 and t["unpacked_msgs"] == 10 and t["mpi_pack"] == 8, t
    else:
        assert t["types_decoded"] == 2 and t["types_refused"] == 0, t
        assert t["packed_msgs"] == 8 and t["unpacked_msgs"] == 8 and t["mpi_pack"] == 8, t


@pytest.mark.parametrize("prog_flav,shim_flav", [("openmpi", "mpich"), ("mpich", "openmpi")])
def test_shim_of_the_other_mpi_refuses_in_one_line(prog_flav, shim_flav, built, tmp_path):
    """The shim of one MPI preloaded into a program of the other (as a hand-written LD_PRELOAD
    would): even passing calls through would cut the program's handles to the other MPI's width,
    so it checks which library answers PMPI_Init before the library starts, says so in one line
    and the ranks exit with status 1: no segfault, no core dump, no report."""
    _tools(shim_flav)
    exe = built(prog_flav, "largecount")
    _, mpiexec = _tools(prog_flav)
    q = mpi_find.VENDOR_QUIRKS[VENDOR[prog_flav]]
    opts = ["-n", "2"] + list(q["args"]) + (list(q["root_args"]) if os.geteuid() == 0 else [])
    wrong = interpose.libraries()[shim_flav]
    rep = str(tmp_path / "report.%r")
    env = dict(os.environ, **q["env"], LD_PRELOAD=wrong, HAULER_INTERPOSE_REPORT=rep)
    fwd = (["-x", "LD_PRELOAD", "-x", "HAULER_INTERPOSE_REPORT"] if prog_flav == "openmpi"
           else ["-genv", "LD_PRELOAD", wrong, "-genv", "HAULER_INTERPOSE_REPORT", rep])
    p = subprocess.run([mpiexec] + fwd + opts + [exe, str(tmp_path / "out")], env=env, cwd=tmp_path,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT)
    text = p.stdout.decode("utf-8", "replace")
    assert p.returncode not in (0, 139) and p.returncode > 0, (p.returncode, text[-4000:])
    assert "Segmentation" not in text and "signal" not in text and not list(tmp_path.glob("core*")), text[-4000:]
    lines = [ln for ln in text.splitlines() if ln.startswith("hauler-interpose:")]
    assert len(lines) == 1, text[-4000:]   # one line for the job, from its first rank
    built_for = "MPICH" if shim_flav == "mpich" else "Open MPI"
    assert f"built for {built_for}" in lines[0], lines
    assert ("libmpi.so.40" if prog_flav == "openmpi" else "libmpich.so.12") in lines[0], lines
    assert not list(tmp_path.glob("report.*")) and not list(tmp_path.glob("out.*")), "the program ran on"


@pytest.mark.parametrize("prog_flav,launcher_flav", [("openmpi", "mpich"), ("mpich", "openmpi")])
def test_hauler_run_picks_the_programs_mpi(prog_flav, launcher_flav, built):
    """`hauler run` picks the shim from the library the program loads (DT_NEEDED), not from the
    launcher's name, and says which; --dry-run shows the command."""
    _tools(launcher_flav)
    exe = built(prog_flav, "largecount")
    _, launcher = _tools(launcher_flav)
    p = subprocess.run([sys.executable, "-m", "hauler.cli", "run", "--dry-run", "--launcher", launcher,
                        "-n", "2", "--", exe, "x"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 0, p.stderr
    lib = interpose.libraries()[prog_flav]
    assert lib in p.stdout and interpose.libraries()[launcher_flav] not in p.stdout, p.stdout
    needed = "libmpi.so.40" if prog_flav == "openmpi" else "libmpich.so.12"
    assert f"MPI {prog_flav} ({exe} needs {needed})" in p.stderr and "warning" in p.stderr, p.stderr
    assert interpose.program_flavour([sys.executable])[0] in (None, "openmpi", "mpich")


def test_elf_needed_of_non_elf(tmp_path):
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\n")
    assert interpose.elf_needed(str(script)) == [] and interpose.elf_needed(str(tmp_path / "none")) == []
    trunc = tmp_path / "t"
    trunc.write_bytes(Path(sys.executable).resolve().read_bytes()[:200])  # header only: sections cut off
    assert interpose.elf_needed(str(trunc)) == []
    assert interpose.program_flavour([str(script)])[0] is None


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_report_one_file_per_rank(flav, built, tmp_path):
    """HAULER_INTERPOSE_REPORT never makes the ranks share one file: a directory gets
    hauler-interpose.<rank>.txt, a name without %r gets .<rank> appended."""
    exe = built(flav, "largecount")
    d = tmp_path / "reports"
    d.mkdir()
    _launch(flav, 2, [exe, str(tmp_path / "a")], shim=True, env_extra={"HAULER_INTERPOSE_REPORT": str(d)})
    assert sorted(p.name for p in d.iterdir()) == ["hauler-interpose.0.txt", "hauler-interpose.1.txt"]
    _report(str(d / "hauler-interpose.%r.txt"), 2)
    plain = tmp_path / "report.txt"
    _launch(flav, 2, [exe, str(tmp_path / "b")], shim=True, env_extra={"HAULER_INTERPOSE_REPORT": str(plain)})
    assert not plain.exists()
    t = _report(str(plain) + ".%r", 2)
    for r in (0, 1):
        assert Path(f"{plain}.{r}").read_text().count("hauler-interpose rank") == 1


@pytest.mark.parametrize("bad", ["pack_everything 1\n", "max_block\n", "min_bytes ten\n", "%%garbage%%\n",
                                 "grid peer 64\n", "max_block 64 extra\n"])
def test_bad_model_file_reported_once_builtin_used(bad, built, tmp_path):
    """A model file with a line the shim does not understand is named once (rank 0, the line's
    number) and not half used: its earlier line (min_bytes huge: pass everything) does not apply,
    the built-in model packs the program's vectors, results as with the library alone."""
    flav = "mpich" if shutil.which("mpiexec.mpich") else "openmpi"
    model = tmp_path / "bad-model.txt"
    model.write_text("# a model\nmin_bytes 1000000000\n" + bad + "max_block 64\n")
    lib, shim = str(tmp_path / "lib"), str(tmp_path / "shim")
    exe = built(flav, "largecount")
    _launch(flav, 2, [exe, lib], shim=False)
    rep = str(tmp_path / "report.%r")
    p = _launch(flav, 2, [exe, shim], shim=True,
                env_extra={"HAULER_INTERPOSE_MODEL": str(model), "HAULER_INTERPOSE_REPORT": rep})
    _compare(lib, shim, 2)
    text = p.stdout.decode("utf-8", "replace")
    lines = [ln for ln in text.splitlines() if "HAULER_INTERPOSE_MODEL" in ln]
    assert len(lines) == 1 and f"{model} line 3:" in lines[0] and "built-in" in lines[0], text[-3000:]
    assert _report(rep, 2)["packed_msgs"] > 0


def test_feature_switch_p2p_off(built, tmp_path):
    flav = "openmpi" if shutil.which("mpiexec.openmpi") else "mpich"
    rep = _run_pair(flav, 2, [built(flav, "p2p"), "7"], tmp_path, extra={"HAULER_INTERPOSE_P2P": "0"})
    t = _report(rep, 2)
    assert t["packed_msgs"] == 0 and t["unpacked_msgs"] == 0 and t["mpi_pack"] >= 2, t


def test_mpi4py_under_hauler_run(tmp_path):
    pytest.importorskip("mpi4py")
    _tools("openmpi")  # mpi4py here is built against Open MPI
    prog = [sys.executable, str(HERE / "mpi4py_prog.py")]
    lib, shim = str(tmp_path / "lib"), str(tmp_path / "shim")
    rep = str(tmp_path / "report.%r")
    _launch("openmpi", 2, prog + [lib], shim=False)
    model = tmp_path / "model.txt"   # every non-contiguous message packed, whatever the default model
    model.write_text("max_block 1000000000\nmin_bytes 0\n")
    _launch("openmpi", 2, prog + [shim], shim=True,
            env_extra={"HAULER_INTERPOSE_REPORT": rep, "HAULER_INTERPOSE_MODEL": str(model)})
    _compare(lib, shim, 2)
    t = _report(rep, 2)
    assert t["packed_msgs"] >= 6 and t["mpi_pack"] >= 2, t


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_cli_path_and_injection(flav):
    _, mpiexec = _tools(flav)
    p = subprocess.run([sys.executable, "-m", "hauler.cli", "interpose", "--path", "--mpi", flav],
                       stdout=subprocess.PIPE, text=True, check=True)
    path = p.stdout.strip()
    assert os.path.isfile(path) and f"/{flav}/" in path
    syms = subprocess.run(["nm", "-D", "--defined-only", path], stdout=subprocess.PIPE, text=True).stdout
    exported = {ln.split()[-1] for ln in syms.splitlines() if ln.strip()}
    assert {"MPI_Send", "MPI_Waitall", "MPI_Type_commit", "MPI_Testsome"} <= exported
    def mpi_name(s):   # C, Fortran, and Open MPI's mpi_f08 targets (ompi_x_f, pmpi_x_)
        return s.startswith(("MPI_", "mpi_")) or (s.startswith("ompi_") and s.endswith("_f")) or \
            (s.startswith("pmpi_") and s.endswith("_"))
    assert all(mpi_name(s) for s in exported), sorted(s for s in exported if not mpi_name(s))
    # Fortran names only where the MPI's Fortran layer bypasses the C entry points (Open MPI)
    fortran = {"mpi_send_", "mpi_send", "mpi_send__", "MPI_SEND", "mpi_waitall_", "mpi_init_",
               "ompi_send_f", "ompi_waitall_f", "pmpi_test_"}
    assert fortran <= exported if flav == "openmpi" else \
        not any(s.startswith(("mpi_", "ompi_", "pmpi_")) for s in exported)
    p = subprocess.run([sys.executable, "-m", "hauler.cli", "run", "--launcher", mpiexec, "--dry-run", "-n", "2",
                        "--", "prog", "arg"], stdout=subprocess.PIPE, text=True, check=True)
    words = p.stdout.split()
    if flav == "openmpi":
        assert words[1:3] == ["-x", f"LD_PRELOAD={path}"], words
    else:
        assert words[1:4] == ["-genv", "LD_PRELOAD", path], words
    assert words[-4:] == ["-n", "2", "prog", "arg"] or words[-2:] == ["prog", "arg"]


def _bench(*args):
    env = dict(os.environ)
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return subprocess.run([sys.executable, "-m", "hauler.bench.cli"] + list(args), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)


def test_bench_mpi_quick_rows_correct():
    """`hauler-bench mpi` runs both sides for every MPI here; structure and correctness, never speed."""
    import json
    _tools("openmpi" if shutil.which("mpiexec.openmpi") else "mpich")
    p = _bench("mpi", "--quick", "--budget", "0.005", "--rounds", "1", "--json", "-m", "1K:2K",
               "--patterns", "milc_su3,lammps_atoms,fft_transpose")
    assert p.returncode == 0, p.stdout[-3000:]
    rep = json.loads(p.stdout)
    assert rep["rows"] and all(r["correct"] for r in rep["rows"])
    assert {r["case"] for r in rep["rows"]} == {"vector", "contig", "halo", "halobytes", "calls", "milc_su3",
                                                "lammps_atoms", "fft_transpose"}
    assert {r["bytes"] for r in rep["rows"] if r["case"] in ("vector", "contig")} == {1024, 2048}
    # each pattern at the quick sizes (the first and third), with its geometric mean
    for flav in {r["mpi"] for r in rep["rows"]}:
        assert sorted(r["pattern_n"] for r in rep["rows"] if r["case"] == "milc_su3" and r["mpi"] == flav) == [4, 12]
    means = {(m["mpi"], m["pattern"]) for m in rep["info"]["pattern_means"]}
    assert means == {(r["mpi"], r["case"]) for r in rep["rows"] if r["case"] in ("milc_su3", "lammps_atoms",
                                                                                 "fft_transpose")}
    assert all(r["bound"] > 0 for r in rep["rows"] if r["case"] == "halo")
    assert all(r["extra_ns"] is not None for r in rep["rows"] if r["case"] == "calls")
    assert {t["key"] for t in rep["targets"]} == {"byte-vector-10x", "byte-vector-contig", "halo-bound",
                                                  "passthrough-1us", "no-slowdown", "patterns"}


def test_bench_mpi_options():
    """-m MIN:MAX (OSU's sizes: MIN doubling up to MAX) and --patterns, with precise refusals."""
    from hauler.bench import mpi as bm
    assert bm.message_sizes(bm.size_range("1K:8K")) == (1024, 2048, 4096, 8192)
    assert bm.message_sizes(bm.size_range("3:20")) == (3, 6, 12)
    assert bm.size_range("64K:") == (65536, bm.MESSAGES[-1]) and bm.size_range(":2K") == (bm.MESSAGES[0], 2048)
    for bad, says in (("8K:1K", "above MAX"), ("1K", "want MIN:MAX"), ("x:1K", "not a size"), ("1K:2G", "at most 1G")):
        with pytest.raises(Exception, match=says):
            bm.size_range(bad)
    assert bm.pattern_list("none") == () and bm.pattern_list("all") == tuple(bm.PATTERNS)
    assert bm.pattern_list("milc_su3, fft_transpose") == ("milc_su3", "fft_transpose")
    with pytest.raises(Exception, match="unknown pattern.*wrf"):
        bm.pattern_list("milc_su3,wrf")
    p = _bench("mpi", "-m", "9K:1K")
    assert p.returncode == 2 and "above MAX" in p.stdout, p.stdout
    p = _bench("mpi", "--help")
    assert p.returncode == 0
    for opt in ("--mpi", "--budget", "--rounds", "--quick", "--message-size", "--patterns", "--model", "--json", "--csv"):
        assert opt in p.stdout, opt
    geo = bm.pattern_means([{"mpi": "x", "case": "milc_su3", "speedup": 0.5}, {"mpi": "x", "case": "milc_su3",
                                                                                "speedup": 2.0}])
    assert geo == {("x", "milc_su3"): (1.0, 2)}
    t = bm.pattern_targets({("x", "milc_su3"): (1.0, 2), ("x", "fft_transpose"): (0.9, 4)})
    assert [v["status"] for v in t] == ["MISS"] and "fft_transpose 0.90x" in t[0]["measured"]


def test_calibrate_writes_a_model_the_shim_reads(built, tmp_path):
    flav = "openmpi" if shutil.which("mpiexec.openmpi") else "mpich"
    _tools(flav)
    model = tmp_path / "model.txt"
    p = _bench("calibrate", "--quick", "--budget", "0.005", "--rounds", "1", "--mpi", flav, "--out", str(model))
    assert p.returncode == 0, p.stdout[-3000:]
    text = model.read_text()
    assert re.search(rf"^{flav}\.max_block \d+$", text, re.M) and re.search(rf"^{flav}\.min_bytes \d+$", text, re.M)
    assert re.search(rf"^{flav}\.grid peer \d+ \d+ [\d.]+$", text, re.M), text
    assert re.search(rf"^{flav}\.grid self \d+ \d+ [\d.]+$", text, re.M), text
    # a model for another flavour only must not change this one's choices: pack nothing here
    model.write_text("max_block 0\nmin_bytes 0\nother.max_block 1000000\n")
    rep = _run_pair(flav, 2, [built(flav, "halo"), "5", "1"], tmp_path, pack_all=False,
                    extra={"HAULER_INTERPOSE_MODEL": str(model)})
    t = _report(rep, 2)
    assert t["packed_msgs"] == 0 and t["passthrough"] > 0, t


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_model_grid_chooses_per_peer(flav, built, tmp_path):
    """With a measured grid, messages to the rank itself and to the other rank are decided apart
    (2 ranks of the periodic halo: the faces along the first dimension go to the other rank, the
    rest to the rank itself); max_block/min_bytes no longer decide point-to-point messages."""
    packed = {}
    for wins in ("peer", "self"):
        model = tmp_path / f"grid_{wins}.txt"
        loses = "self" if wins == "peer" else "peer"
        model.write_text(f"max_block 0\nmin_bytes 1000000000\n{flav}.grid {wins} 8 1024 2.0\n"
                         f"{flav}.grid {loses} 8 1024 0.5\nother.grid {loses} 8 1024 9.0\n")
        (tmp_path / wins).mkdir()  # reports are appended to: one folder per run
        rep = _run_pair(flav, 2, [built(flav, "halo"), "5", "1"], tmp_path / wins, pack_all=False,
                        extra={"HAULER_INTERPOSE_MODEL": str(model)})
        t = _report(rep, 2)
        assert 0 < t["packed_msgs"] < 2 * HALO_PACKED and t["packed_msgs"] == t["unpacked_msgs"], t
        packed[wins] = t["packed_msgs"]
    assert packed["peer"] + packed["self"] == 2 * HALO_PACKED, packed


def test_choose_model():
    from hauler.bench.calibrate import choose_model
    rows = [{"block": b, "bytes": m, "speedup": s} for b, m, s in [
        (1, 1024, 3.0), (1, 1 << 20, 20.0), (8, 256, 0.5), (8, 1024, 1.5), (8, 1 << 20, 5.0),
        (4096, 1 << 20, 1.2), (16384, 1 << 20, 0.9)]]
    assert choose_model(rows) == {"max_block": 4096, "min_bytes": 1024}


def test_calibrate_takes_each_launchs_own_ratio():
    """calibrate's speedup is the median of each launch's paused/packing ratio, not a ratio of
    medians across launches (a slow launch must not flip a cell); a launch that checked out wrong,
    or receive checksums that differ between launches, make the case incorrect."""
    from hauler.bench.calibrate import in_launch
    # (time packing, correct, checksum, time paused): a fast launch and two slow ones, all 2x
    rows = [(1.0, True, "a", 2.0), (5.0, True, "a", 10.0), (6.0, True, "a", 12.0)]
    tl, ts, speedup, correct = in_launch(rows)
    assert (tl, ts, speedup, correct) == (10.0, 5.0, 2.0, True)
    assert in_launch(rows[:2] + [(6.0, False, "a", 12.0)])[3] is False
    assert in_launch(rows[:2] + [(6.0, True, "b", 12.0)])[3] is False


def test_bench_mpi_compares_cases_within_each_launch():
    """`vs contig` and `bound` divide two cases' times launch by launch (a slow launch slows both),
    then take the median; a launch with no time for the base case is left out."""
    from hauler.bench.mpi import launch_ratio
    rows = [(2.0, True, "x", 0.0), (9.0, True, "x", 0.0), (4.0, True, "x", 0.0)]
    assert launch_ratio(rows, [1.0, 3.0, 0.0]) == 2.5
    assert launch_ratio(rows, []) is None


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_device_buffers_go_to_the_library(flav, built, tmp_path):
    """With a CUDA driver loaded in the program (here a stand-in libcuda.so.1 that calls every
    buffer device memory), no buffer is packed on the host: all goes to the library unchanged."""
    cc, _ = _tools(flav)
    fake = tmp_path / "libcuda.so.1"
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(fake),
                    str(HERE / "fakecuda.c")], check=True, timeout=60)
    rep = _run_pair(flav, 2, [built(flav, "halo"), "6", "1"], tmp_path, extra={"LD_PRELOAD": str(fake)})
    t = _report(rep, 2)
    assert t["cuda_driver"] == 2 and t["device_passthrough"] == 2 * 2 * HALO_PACKED and t["packed_msgs"] == 0, t
    # this stand-in reports no allocation ranges, so nothing is cached: one query per message
    assert t["cuda_queries"] == 2 * 2 * HALO_PACKED, t


@pytest.fixture(scope="session")
def fake_gpu(tmp_path_factory):
    """A fake driver (every buffer is "device" memory, allocations are malloc) and the host
    emulation of the kernels as libhauler_cuda.so: the GPU packing path end to end, no GPU."""
    d = tmp_path_factory.mktemp("fakegpu")
    root = HERE.parent.parent
    subprocess.run(["cc", "-DFAKE_DRIVER", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(d / "libcuda.so.1"),
                    str(HERE / "fakecuda.c")], check=True, timeout=60)
    subprocess.run(["c++", "-std=c++17", "-O1", "-shared", "-fPIC", "-I" + str(root / "csrc"), "-Wl,-z,defs",
                    "-o", str(d / "libhauler_cuda.so"), str(HERE / "emukernels.cpp"),
                    str(root / "csrc/common/gpu_emulation.cpp"), str(root / "csrc/datatype/pack_emulate.cpp"),
                    str(root / "csrc/gather/gather_emulate.cpp"), str(root / "csrc/kv/kv_emulate.cpp")],
                   check=True, timeout=300)
    return {"LD_PRELOAD": str(d / "libcuda.so.1"), "HAULER_CUDA_LIB": str(d / "libhauler_cuda.so")}


def _gpu_model(tmp_path, oneshot_max):
    model = tmp_path / "gpu_model.txt"
    model.write_text(f"max_block 1000000000\nmin_bytes 0\ngpu_oneshot_max {oneshot_max}\n")
    return {"HAULER_INTERPOSE_MODEL": str(model)}


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
@pytest.mark.parametrize("method", ["device", "oneshot"])
def test_device_buffers_packed_by_gpu_kernels(flav, method, built, fake_gpu, tmp_path):
    """Device buffers with a GPU backend: packed by the (emulated) kernels into device staging or
    mapped host staging as the model says, unpacked the same way; bytes as with the library alone."""
    env = dict(fake_gpu, **_gpu_model(tmp_path, 0 if method == "device" else 1 << 40))
    rep = _run_pair(flav, 2, [built(flav, "halo"), "6", "1"], tmp_path, extra=env)
    t = _report(rep, 2)
    # 2 ranks x 26 neighbour messages each way; gpu_device/gpu_oneshot count both sides
    assert t["gpu_packed"] == 2 * HALO_PACKED and t["gpu_unpacked"] == 2 * HALO_PACKED, t
    assert t["packed_msgs"] == 2 * HALO_PACKED, t
    assert t[f"gpu_{method}"] == 2 * 2 * HALO_PACKED and t["device_passthrough"] == 0 and t["cuda_driver"] == 2, t
    # the driver is asked once per allocation range (each rank's array lies in one or two of the
    # stand-in's 2 MiB ranges), not once per message
    assert 2 <= t["cuda_queries"] <= 4, t
    other = "oneshot" if method == "device" else "device"
    assert t[f"gpu_{other}"] == 0, t


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_device_buffers_gpu_mixed_completions(flav, built, fake_gpu, tmp_path):
    """GPU-staged messages against library-owned requests and receives (persistent, probes,
    Mrecv, Sendrecv_replace); the default model (large messages: device staging)."""
    rep = _run_pair(flav, 2, [built(flav, "mixed")], tmp_path, extra=dict(fake_gpu, **_gpu_model(tmp_path, 65536)))
    t = _report(rep, 2)
    assert t["gpu_packed"] == 15 and t["gpu_unpacked"] == 9 and t["packed_msgs"] == 15, t


def test_device_buffers_gpu_switch_off(built, fake_gpu, tmp_path):
    flav = "openmpi" if shutil.which("mpiexec.openmpi") else "mpich"
    rep = _run_pair(flav, 2, [built(flav, "halo"), "4", "1"], tmp_path,
                    extra=dict(fake_gpu, HAULER_INTERPOSE_GPU="0"))
    t = _report(rep, 2)
    assert t["gpu_packed"] == 0 and t["packed_msgs"] == 0 and t["device_passthrough"] == 2 * 2 * HALO_PACKED, t


# ---------------------------------------------------------------------------------------------
# One decoder: the shim's (MPI_Pack) and Datatype.from_mpi's are csrc/datatype/decode.cpp
# ---------------------------------------------------------------------------------------------
DECODE_LINES = 2 * (2 * (4 + 3 + 4 + 6 + 1) + 4)  # counts 1 and 3 of the 40 types each program builds


def _pack_all_model(tmp_path):
    model = tmp_path / "model.txt"
    model.write_text("max_block 1000000000\nmin_bytes 0\n")
    return str(model)


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_shim_decodes_as_the_library_packs(flav, built, tmp_path):
    """darray (both orders, block/cyclic/none, default and given dargs), subarray, resized,
    struct, nested dup, indexed of resized: MPI_Pack through the shim equals the library's own
    MPI_Pack (the shim paused), and the shim decoded every type (none left to the library)."""
    rep = str(tmp_path / "report.%r")
    out = tmp_path / "out"
    _launch(flav, 1, [built(flav, "decode"), str(out)], shim=True,
            env_extra={"HAULER_INTERPOSE_REPORT": rep, "HAULER_INTERPOSE_MODEL": _pack_all_model(tmp_path)})
    lines = (tmp_path / "out.0").read_text().splitlines()
    assert lines[-1] == f"lines {DECODE_LINES}", lines[-1]
    assert not [x for x in lines if "DIFFERS" in x], "\n".join(lines)
    t = _report(rep, 1)
    assert t["types_refused"] == 0 and t["types_decoded"] >= DECODE_LINES // 2, t
    assert t["mpi_pack"] == DECODE_LINES, t


def test_shim_and_from_mpi_decode_alike(tmp_path):
    """The same kinds of types through mpi4py: the shim's MPI_Pack, the library's (shim paused)
    and Datatype.from_mpi all give the same bytes."""
    pytest.importorskip("mpi4py")
    _tools("openmpi")  # mpi4py here is built against Open MPI
    rep = str(tmp_path / "report.%r")
    _launch("openmpi", 1, [sys.executable, str(HERE / "decode_prog.py"), str(tmp_path / "out")], shim=True,
            env_extra={"HAULER_INTERPOSE_REPORT": rep, "HAULER_INTERPOSE_MODEL": _pack_all_model(tmp_path)})
    lines = (tmp_path / "out.0").read_text().splitlines()
    assert len(lines) == DECODE_LINES
    assert not [x for x in lines if "DIFFERS" in x], "\n".join(lines)
    t = _report(rep, 1)
    assert t["types_refused"] == 0 and t["mpi_pack"] == DECODE_LINES, t


PIPE = {"HAULER_INTERPOSE_PIPELINE": "65536", "HAULER_INTERPOSE_PIPELINE_CHUNK": "32768"}


@pytest.mark.parametrize("flav,np_,trials", [("openmpi", 2, "0"), ("openmpi", 3, "4"), ("mpich", 2, "0"),
                                             ("mpich", 3, "4")])
def test_pipelined_messages_identical(flav, np_, trials, built, tmp_path):
    """HAULER_INTERPOSE_PIPELINE: 192 KiB vector sends go as a header + 32 KiB chunks, met by blocking,
    non-blocking, ANY_SOURCE/ANY_TAG, pre-posted same-tag, contiguous, shorter, Sendrecv(_replace),
    Ssend/Bsend receives; the receive buffers and statuses are byte-identical to the library alone.
    With trials each side also switches paths between messages (pipelined, packed, library)."""
    rep = _run_pair(flav, np_, [built(flav, "pipe"), "3"], tmp_path, extra=dict(PIPE, HAULER_INTERPOSE_TRIALS=trials))
    t = _report(rep, np_)
    # trial messages go whole, and with trials a selection may keep the library: only without
    # trials (the model packs everything) must every vector send be pipelined
    if trials == "0":
        assert t["pipe_sent"] > 0, t
    assert t["pipe_chunks"] >= 3 * t["pipe_sent"], t  # 192 KiB in 32 KiB chunks (96 KiB for case 7)
    assert t["pipe_sent"] == t["pipe_received"], t  # every pipelined message pulled whole by its receive


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_pipeline_off_unless_every_rank_agrees(flav, built, tmp_path):
    """Ranks with different HAULER_INTERPOSE_PIPELINE values: one line, nobody pipelines, same bytes."""
    lib, shim = str(tmp_path / "lib"), str(tmp_path / "shim")
    rep = str(tmp_path / "report.%r")
    _launch(flav, 2, [built(flav, "pipe"), lib, "1"], shim=False)
    # rank-dependent value through the program's environment is not possible with one launcher
    # line, so the chunk differs instead: set per rank by a wrapper script
    wrap = tmp_path / "wrap.sh"
    wrap.write_text("#!/bin/sh\nr=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}}\n"
                    "export HAULER_INTERPOSE_PIPELINE_CHUNK=$((32768 * (r + 1)))\nexec \"$@\"\n")
    wrap.chmod(0o755)
    p = _launch(flav, 2, [str(wrap), built(flav, "pipe"), shim, "1"], shim=True,
                env_extra={"HAULER_INTERPOSE_REPORT": rep, "HAULER_INTERPOSE_PIPELINE": "65536"})
    _compare(lib, shim, 2)
    out = p.stdout.decode()
    assert out.count("HAULER_INTERPOSE_PIPELINE (or _CHUNK) differs between ranks") == 1, out
    t = _report(rep, 2)
    assert t["pipe_sent"] == 0 and t["pipe_watched"] == 0, t


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_pipeline_refuses_a_probe_of_a_header(flav, built, tmp_path):
    """A probe cannot tell a pipelined message's size: with the pipeline on, MPI_Probe finding a
    header-sized message is refused in one line and the job ends non-zero (no silent short count)."""
    prog = built(flav, "pipe")
    with pytest.raises(AssertionError) as e:
        _launch(flav, 2, [prog, str(tmp_path / "x"), "1", "probe"], shim=True,
                env_extra=dict(PIPE, HAULER_INTERPOSE_MODEL=str(_pack_all_model(tmp_path))))
    assert "MPI_Probe found a" in str(e.value) and "HAULER_INTERPOSE_PIPELINE=0" in str(e.value), str(e.value)


def _pack_all_model(tmp_path):
    """A model file that packs every non-contiguous message (the built-in one passes small ones
    through)."""
    model = tmp_path / "model.txt"
    model.write_text("# pack everything non-contiguous\nmax_block 1000000000\nmin_bytes 0\n")
    return model
