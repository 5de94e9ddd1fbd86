"""``hauler-bench mpi``: the MPI library alone vs the library with hauler's interposer.

Two ranks of a small C program (compiled here with each flavour's mpicc) run

  * ping-pong of vector types (MPI_BYTE blocks of 1 B .. 4 KiB, stride 2 x block) and of the
    same bytes contiguous, messages of 1 KiB .. 4 MiB of data;
  * a 3D halo exchange (periodic, 26 subarray neighbours of an (n+2)^3 box of doubles);
  * application datatype patterns (bench/programs/mpi_patterns.c, after the DDTBench suite's
    published descriptions): WRF x/y halos as nested vectors and as subarrays, a MILC su3 face,
    NAS MG and LU faces, LAMMPS atom lists (indexed), SPECFEM3D mesh points (indexed_block),
    an FFT transpose (vector of resized), each exchanged both ways at 4 sizes;

once with the library alone and once under ``hauler run`` (LD_PRELOAD), for each installed MPI,
in one run. Output: a '#' header, one row per case with both times, the ratio, and a
correctness column (the receive buffers' checksums agree between the two runs and the
ping-pong data came back intact), then the issue's targets as a report (not a test).
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import core
from .core import Column, Report, format_size

NAME = "mpi"
HELP = ("MPI ping-pong, 3D halo exchange and application datatype patterns: the library alone vs with hauler's "
        "interposer")

BLOCKS = (1, 8, 64, 512, 4096)
MESSAGES = (1 << 10, 16 << 10, 256 << 10, 1 << 20, 4 << 20)
HALO_SIZES = (16, 48, 96)
# pattern -> its size parameter at 4 sizes (see mpi_patterns.c: grid edge, lattice edge, atoms,
# mesh points, FFT edge); --quick takes the first and the third
PATTERNS = {
    "wrf_x_vec": (32, 64, 128, 256), "wrf_x_sa": (32, 64, 128, 256),
    "wrf_y_vec": (32, 64, 128, 256), "wrf_y_sa": (32, 64, 128, 256),
    "milc_su3": (4, 8, 12, 16),
    "nas_mg_x": (18, 34, 66, 130), "nas_mg_y": (18, 34, 66, 130),
    "nas_lu_x": (12, 33, 64, 102), "nas_lu_y": (12, 33, 64, 102),
    "lammps_atoms": (4096, 32768, 262144, 1048576),
    "specfem3d_oc": (4096, 32768, 262144, 1048576),
    "fft_transpose": (64, 128, 256, 512),
}



def _fx(v: float) -> str:
    return f"{v:.2f}"


def _us(v: float) -> str:
    return f"{v:.1f}"


COLUMNS = [
    Column("mpi", "mpi", "", left=True, width=7),
    Column("case", "case", "", left=True, width=13),
    Column("block", "block", "B", lambda v: format_size(v) if v else "-", width=5),
    Column("bytes", "message", "B", format_size, width=7),
    Column("lib_us", "library", "us", _us, width=8),
    Column("shim_us", "+hauler", "us", _us, width=8),
    Column("lib_gbps", "library", "GB/s", _fx),
    Column("shim_gbps", "+hauler", "GB/s", _fx),
    Column("speedup", "speedup", "x", _fx),
    Column("spread", "rounds", "x", lambda v: v or "-", width=11),
    Column("one_run", "one run", "x", _fx, width=7),
    Column("vs_contig", "vs contig", "x", _fx, width=9),
    Column("bound", "bound", "x", _fx),
    Column("of_bound", "/bound", "x", _fx, width=6),
    Column("extra_ns", "+call", "ns", lambda v: f"{v:.0f}", width=6),
    Column("correct_text", "correct", "", left=True, width=7),
]

TARGETS = [
    # key, description, select, value key, op, threshold
    ("byte-vector-10x", "1 MiB vector of 1-byte blocks at least 10x faster than the library alone",
     lambda r: r["case"] == "vector" and r["block"] == 1 and r["bytes"] == 1 << 20, "speedup", ">=", 10.0),
    ("byte-vector-contig", "the same within 2x of sending the bytes contiguously (time / contiguous time)",
     lambda r: r["case"] == "vector" and r["block"] == 1 and r["bytes"] == 1 << 20, "vs_contig", "<=", 2.0),
    ("halo-bound", "3D halo exchange (26 subarray neighbours): speedup at least 0.8 of the bound column (the "
     "library's same exchange of contiguous faces, same run)", lambda r: r["case"] == "halo", "of_bound", ">=", 0.8),
    ("passthrough-1us", "a call the shim passes through costs under a microsecond more (Isend/Irecv/Waitall)",
     lambda r: r["case"] == "calls", "extra_ns", "<=", 1000.0),
    ("no-slowdown", "contiguous and 4 KiB-block messages no more than 5% slower (speedup >= 0.95)",
     lambda r: r["case"] == "contig" or (r["case"] == "vector" and r["block"] >= 4096), "speedup", ">=", 0.95),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mpi", default="all", type=core.mpi_flavours,
                   help="flavours to run: all, openmpi, mpich (comma-separated)")
    p.add_argument("--budget", type=core.positive_float, default=0.05,
                   help="seconds per timed batch (3 batches per case, median); default 0.05")
    p.add_argument("--rounds", type=core.positive_int, default=4,
                   help="launches of each side, alternated; medians over them (default 4)")
    p.add_argument("--quick", action="store_true",
                   help="1 B, 64 B and 4 KiB blocks; 1 KiB, 1 MiB messages; one halo size; 2 sizes per pattern")
    p.add_argument("-m", "--message-size", type=size_range, default=None, metavar="MIN:MAX",
                   help="ping-pong message sizes as OSU's -m: powers of two from MIN to MAX bytes (K/M suffixes; "
                        "MIN: alone is MIN up to 4M, :MAX alone is 1K up to MAX); the halo and the patterns keep "
                        "their own sizes")
    p.add_argument("--patterns", type=pattern_list, default=tuple(PATTERNS), metavar="LIST",
                   help="application patterns to run, comma-separated, or all, or none (default all: "
                        + ", ".join(PATTERNS) + ")")
    p.add_argument("--model", default=None, type=core.readable_file,
                   help="HAULER_INTERPOSE_MODEL file for the runs with the shim (default: the one the shim would "
                        "read, see the header's model line)")
    core.add_format_args(p)


def size_range(text: str) -> Tuple[int, int]:
    """argparse type of -m: "MIN:MAX", "MIN:" or ":MAX" (sizes as 4096, 64K, 1M)."""
    lo, sep, hi = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"want MIN:MAX (e.g. 1K:4M, 64K:, :1M), got {text!r}")
    try:
        a = core.parse_size(lo) if lo.strip() else MESSAGES[0]
        b = core.parse_size(hi) if hi.strip() else MESSAGES[-1]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if a > b:
        raise argparse.ArgumentTypeError(f"MIN ({a} bytes) is above MAX ({b} bytes) in {text!r}")
    if b > 1 << 30:
        raise argparse.ArgumentTypeError(f"MAX is at most 1G (the program's buffers are twice the message), got {text!r}")
    return a, b


def message_sizes(rng: Tuple[int, int]) -> Tuple[int, ...]:
    """OSU's sizes: MIN, then doubling while at most MAX."""
    out, m = [], rng[0]
    while m <= rng[1]:
        out.append(m)
        m *= 2
    return tuple(out)


def pattern_list(text: str) -> Tuple[str, ...]:
    """argparse type of --patterns: all, none, or names of PATTERNS (comma-separated)."""
    if text.strip() == "all":
        return tuple(PATTERNS)
    if text.strip() == "none":
        return ()
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in PATTERNS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown pattern(s) {', '.join(bad) or text!r}; choose all, none or any of "
                                         f"{', '.join(PATTERNS)}")
    return names


def main(args: argparse.Namespace) -> int:
    flavours = core.flavours_arg(args.mpi)
    rep = run(flavours, args.budget, args.quick, core.output_of(args), args.rounds, args.model,
              sizes=args.message_size, patterns=args.patterns)
    return 0 if rep.rows and all(r["correct"] for r in rep.rows) else 1


def _flavours(wanted: Optional[Sequence[str]]) -> Tuple[List[Tuple[str, str, str, str]], List[str]]:
    """[(flavour, mpicc, mpiexec, library)] runnable here, and warnings for the ones that are not."""
    from hauler import interpose, mpi_find

    libs = interpose.libraries()
    out, warn = [], []
    for flav in (wanted or ["openmpi", "mpich"]):
        cc, ex = shutil.which(f"mpicc.{flav}"), shutil.which(f"mpiexec.{flav}")
        if not cc or not ex:
            try:
                found = mpi_find.find_mpicc()
            except mpi_find.MpiNotFound:
                found = None
            if found is not None and interpose.FLAVOURS.get(found.vendor) == flav:
                cc, ex = found.path, mpi_find.find_mpiexec(found)
        if not cc or not ex:
            if wanted:
                warn.append(f"{flav}: not installed; skipped")
            continue
        if flav not in libs:
            warn.append(f"{flav}: installed but hauler's interposer was not built for it; skipped")
            continue
        out.append((flav, cc, ex, libs[flav]))
    return out, warn


def _launch(flav: str, mpiexec: str, lib: Optional[str], argv: List[str],
            env_extra: Optional[Dict[str, str]] = None) -> Dict[Tuple, Tuple]:
    from hauler import interpose, mpi_find

    vendor = {"openmpi": mpi_find.OPEN_MPI, "mpich": mpi_find.MPICH}[flav]
    q = mpi_find.VENDOR_QUIRKS[vendor]
    opts = ["-n", "2"] + list(q["args"])
    if os.geteuid() == 0:
        opts += list(q["root_args"])
    env = dict(os.environ)
    env.update(q["env"])
    env.pop("LD_PRELOAD", None)
    if os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    for k, v in (env_extra or {}).items():  # handed to the ranks the way each launcher wants
        env[k] = v
        opts += ["-x", k] if flav == "openmpi" else ["-genv", k, v]
    cmd = interpose.launch_argv(mpiexec, opts, argv, env) if lib else [mpiexec] + opts + argv
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1800)
    text = p.stdout.decode("utf-8", "replace")
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{text[-3000:]}")
    rows = {}
    for line in text.splitlines():
        w = line.split()
        if w[:1] == ["row"]:  # time (shim on), correct, checksum, time with the shim paused
            rows[(w[1], int(w[2]), int(w[3]))] = (float(w[4]), w[5] == "1", w[6], float(w[7]))
    return rows


def alternate(flav: str, mpiexec: str, lib: str, argv: List[str], rounds: int,
              shim_env: Optional[Dict[str, str]] = None,
              with_alone: bool = True) -> Tuple[Dict[Tuple, List], Dict[Tuple, List]]:
    """Launches the library alone and with the shim alternately (A B A B ...: a noisy phase hits
    both sides of a round); each case's results, one per round, per side. with_alone=False: the
    shim's launches only (their rows carry the library's time too, paused by MPI_Pcontrol)."""
    alone: Dict[Tuple, List] = {}
    shim: Dict[Tuple, List] = {}
    sides = ((alone, None), (shim, lib)) if with_alone else ((shim, lib),)
    for _ in range(rounds):
        for dest, use in sides:
            for k, v in _launch(flav, mpiexec, use, argv, shim_env if use else None).items():
                dest.setdefault(k, []).append(v)
    return alone, shim


def measured(found: Sequence[Tuple[str, str, str, str]], budget: float, specs: List[str], rounds: int,
             shim_env: Optional[Dict[str, str]], warnings: List[str], with_alone: bool = True):
    """Compiles the ping-pong program with each flavour's mpicc and runs `specs` alone and with the
    shim (alternate); yields (flavour, alone, shim). A flavour that fails to compile or run is a
    warning, not a row."""
    with tempfile.TemporaryDirectory(prefix="hauler-bench-mpi-") as tmp:
        src = [core.program_path("mpi_pingpong.c"), core.program_path("mpi_patterns.c")]
        for flav, cc, mpiexec, lib in found:
            exe = os.path.join(tmp, f"pingpong_{flav}")
            p = subprocess.run([cc, "-O2", "-w", *src, "-o", exe], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if p.returncode != 0:
                warnings.append(f"{flav}: compiling the benchmark failed: {p.stdout.decode()[-500:]}")
                continue
            try:
                alone, shim = alternate(flav, mpiexec, lib, [exe, str(budget)] + specs, rounds, shim_env,
                                        with_alone)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                warnings.append(f"{flav}: {e}")
                continue
            yield flav, alone, shim


def launch_ratio(rows: List[Tuple], base: List[float]) -> Optional[float]:
    """A case's time over another case's time in the same launch (e.g. a packed vector over the
    same bytes contiguous: each launch's own transfer speed), the median over the launches."""
    r = [v[0] / c for v, c in zip(rows, base) if c > 0]
    return statistics.median(r) if r else None


def round_ratios(alone: List[Tuple], shim: List[Tuple]) -> List[float]:
    """Each round's library time over its shim time (its two launches ran back to back)."""
    return [x[0] / y[0] for x, y in zip(alone, shim) if y[0] > 0]


def summary(alone: List[Tuple], shim: List[Tuple]) -> Tuple[float, float, Optional[float], bool]:
    """(library time, shim time, speedup, correct) of one case: median times over the rounds, the
    median of each round's own ratio, and whether every launch checked out and left the same
    receive checksum."""
    tl = statistics.median(v[0] for v in alone)
    ts = statistics.median(v[0] for v in shim)
    ratios = round_ratios(alone, shim)
    correct = all(v[1] for v in alone + shim) and len({v[2] for v in alone + shim}) == 1
    return tl, ts, (statistics.median(ratios) if ratios else None), correct


def run(flavours: Optional[Sequence[str]] = None, budget: float = 0.05, quick: bool = False,
        out: Optional[core.Output] = None, rounds: int = 4, model: Optional[str] = None,
        sizes: Optional[Tuple[int, int]] = None, patterns: Sequence[str] = tuple(PATTERNS)) -> Report:
    from hauler import interpose

    hinfo = core.hauler_info()
    in_effect = os.path.abspath(model) if model else interpose.model_in_effect()
    mach = core.machine_info()
    found, warnings = _flavours(flavours)
    blocks = (1, 64, 4096) if quick else BLOCKS
    messages = message_sizes(sizes) if sizes else (1 << 10, 1 << 20) if quick else MESSAGES
    halos = HALO_SIZES[:1] if quick else HALO_SIZES
    specs = [f"vector:{b}:{m}" for m in messages for b in blocks if b <= m]
    specs += [f"contig:0:{m}" for m in messages] + [f"halo{k}:{n}:0" for n in halos for k in ("", "bytes")]
    specs += ["calls:0:8", "calls:8:64"]  # pass-through cost: 8 contiguous bytes; 8 blocks of 8 B (< min_bytes)
    specs += [f"{p}:{n}:0" for p in patterns for n in (PATTERNS[p][0::2] if quick else PATTERNS[p])]
    header = [
        ("hauler", f"{hinfo['version']} ({hinfo['core']}); build: {hinfo['build_summary']}"),
        ("MPI", ", ".join(f"{f}: {cc}" for f, cc, _, _ in found) or "none"),
        ("machine", f"{mach['cpu']}, {mach['cores_usable']} usable cores of {mach['cores_os']}, {mach['memory']}; "
                    f"{mach['host']}, {mach['os']}; {mach['date']}"),
        ("ranks", "2 on this machine (shared memory); library alone, then with libhauler_interpose.so "
                  "(LD_PRELOAD as `hauler run` injects it), same binary, same run"),
        ("timing", f"median of 3 batches of ~{budget:g} s each; {rounds} alternated launches per side, times are "
                   f"their medians and speedups the median of each round's ratio; ping-pong: one-way time = round "
                   f"trip / 2; halo: one 26-neighbour exchange; patterns: one exchange (each rank sends and "
                   f"receives its type); calls: per MPI call of 16 Irecv + 16 Isend to "
                   f"self + Waitall, +call = the shim's extra ns per call"),
        ("model", in_effect or "the shim's built-in model (" + (
            "HAULER_INTERPOSE_MODEL=builtin" if os.environ.get("HAULER_INTERPOSE_MODEL") == "builtin" else
            f"HAULER_INTERPOSE_MODEL unset, no calibrated model at {interpose.default_model_path()}") + ")"),
        ("choice", "HAULER_INTERPOSE_TRIALS=" + (os.environ.get("HAULER_INTERPOSE_TRIALS") or "4 (default)") +
                   ": the shim times both paths per type, count, direction and peer and keeps the faster (the "
                   "model seeds it); each case warms up 12 iterations first"),
        ("pipeline", "HAULER_INTERPOSE_PIPELINE=" + (os.environ.get("HAULER_INTERPOSE_PIPELINE") or "0 (off, default)") +
                     ", chunk " + (os.environ.get("HAULER_INTERPOSE_PIPELINE_CHUNK") or "262144 (default)") +
                     ": packed messages at least that large go in chunks, packing overlapped with the transfer"),
        ("GB/s", "data bytes of the message (halo: all 26 faces) / one-way time / 1e9"),
        ("x", "speedup = library time / +hauler time (rounds: the lowest and highest of the rounds' own "
              "ratios, the spread a noisy machine gives between launches); one run = in the launches with the "
              "shim, batches with it paused by MPI_Pcontrol(0) over batches with it on, interleaved (cancels what "
              "slows both sides of a launch alike, not what slows one side, e.g. the library's contiguous "
              "transfers; the paused side still pays the shim's pass-through, see +call); vs contig = +hauler "
              "time of the vector / the time for the same bytes contiguous in the same launch (the shim passes "
              "them through), the median over the launches; bound (halo) = the "
              "library's halo time / its time for the same exchange of faces already contiguous (halobytes rows), "
              "launch by launch, the median: the most any packing can gain, packing for free"),
        ("correct", "ping-pong data came back exactly (gaps untouched) and the receive buffers' checksums agree "
                    "between the two runs"),
    ]
    rep = Report(benchmark=NAME, config={"budget": budget, "quick": quick, "cases": specs,
                                         "flavours": [f for f, _, _, _ in found]},
                 header=header, columns=COLUMNS, warnings=warnings,
                 info={"hauler": hinfo, "machine": mach})
    out = out or core.Output("table")
    if not found:
        rep.warnings.append("no MPI flavour with a built interposer found: nothing measured")
    out.begin(rep)
    extra = {"HAULER_INTERPOSE_MODEL": os.path.abspath(model)} if model else None
    for flav, alone, shim in measured(found, budget, specs, rounds, extra, rep.warnings):
        # the shim's launches' own contiguous times, round by round: a packed message rides on the
        # same launch's contiguous transfers, which swing 3-4x between launches here
        contig = {k[2]: [v[0] for v in rounds] for k, rounds in shim.items() if k[0] == "contig"}
        faces = {k[1]: [v[0] for v in rounds] for k, rounds in alone.items() if k[0] == "halobytes"}
        for key in alone:
            if key not in shim:
                continue
            kind, a, b = key
            tl, ts, speedup, correct = summary(alone[key], shim[key])
            half = 2 if kind in ("vector", "contig") else 1   # ping-pong: one way is half a round trip
            one_l, one_s = tl / half, ts / half
            nbytes = b
            row = {"mpi": flav, "case": kind, "block": a if kind in ("vector", "calls") else 0,
                   "bytes": nbytes, "lib_us": one_l * 1e6, "shim_us": one_s * 1e6,
                   "lib_gbps": core.gbps(nbytes, one_l) if kind != "calls" else None,
                   "shim_gbps": core.gbps(nbytes, one_s) if kind != "calls" else None,
                   "speedup": speedup, "spread": None, "one_run": None,
                   "vs_contig": launch_ratio(shim[key], contig[b]) if kind == "vector" and b in contig else None,
                   "extra_ns": (ts - tl) * 1e9 if kind == "calls" else None,
                   "bound": launch_ratio(alone[key], faces[a]) if kind == "halo" and faces.get(a) else None,
                   "correct": correct}
            row["correct_text"] = "yes" if row["correct"] else "NO"
            # the same launch with the shim paused (MPI_Pcontrol(0)) over the shim on, per round
            row["one_run_rounds"] = [v[3] / v[0] for v in shim[key] if v[0] > 0]
            row["one_run"] = statistics.median(row["one_run_rounds"]) if row["one_run_rounds"] else None
            row["speedup_rounds"] = round_ratios(alone[key], shim[key])
            rr = row["speedup_rounds"]
            row["spread"] = f"{min(rr):.2f}-{max(rr):.2f}" if len(rr) > 1 else None
            row["lib_rounds_us"] = [v[0] / half * 1e6 for v in alone[key]]
            row["shim_rounds_us"] = [v[0] / half * 1e6 for v in shim[key]]
            if kind in ("halo", "halobytes"):
                row["halo_n"] = a
            if kind in PATTERNS:
                row["pattern_n"] = a
            if row["bound"] and speedup:
                row["of_bound"] = speedup / row["bound"]
            rep.rows.append(row)
            out.row(rep, row)
    rep.footer.append("halo rows: the message column is the bytes moved per exchange by one rank (26 faces of an "
                      "(n+2)^3 box of doubles); n = " + ", ".join(str(n) for n in halos) + "; halobytes: the same "
                      "faces from and into contiguous buffers (the shim passes them through)")
    geo = pattern_means(rep.rows)
    one = pattern_means(rep.rows, "one_run")
    for (flav, name), (mean, n) in sorted(geo.items()):
        also = f"; one run {one[(flav, name)][0]:.2f}x" if (flav, name) in one else ""
        rep.footer.append(f"pattern {flav} {name}: speedup {mean:.2f}x (geometric mean over {n} sizes{also})")
    rep.info["pattern_means"] = [{"mpi": f, "pattern": p, "speedup": m, "sizes": n} for (f, p), (m, n) in geo.items()]
    rep.targets = evaluate_targets(rep.rows) + pattern_targets(geo)
    out.end(rep)
    return rep


def pattern_means(rows: List[Dict[str, Any]], key: str = "speedup") -> Dict[Tuple[str, str], Tuple[float, int]]:
    """(flavour, pattern) -> (geometric mean of its rows' `key` over the sizes, number of sizes)."""
    by: Dict[Tuple[str, str], List[float]] = {}
    for r in rows:
        if r["case"] in PATTERNS and r.get(key):
            by.setdefault((r["mpi"], r["case"]), []).append(r[key])
    return {k: (math.exp(sum(math.log(v) for v in vs) / len(vs)), len(vs)) for k, vs in by.items()}


def pattern_targets(geo: Dict[Tuple[str, str], Tuple[float, int]], need: float = 0.95) -> List[Dict[str, Any]]:
    """Per flavour: no application pattern below `need` x the library alone (geometric mean over its sizes)."""
    out = []
    for flav in sorted({f for f, _ in geo}):
        means = {p: m for (f, p), (m, _) in geo.items() if f == flav}
        bad = {p: m for p, m in means.items() if m < need}
        worst = min(means, key=means.get)
        out.append({"key": "patterns", "mpi": flav, "threshold": need, "worst": means[worst],
                    "target": f"[{flav}] no application pattern below {need}x the library alone (geometric mean "
                              f"over its sizes)",
                    "status": "MISS" if bad else "PASS",
                    "measured": (f"{len(bad)} of {len(means)} patterns miss ("
                                 + ", ".join(f"{p} {m:.2f}x" for p, m in sorted(bad.items())) + "); "
                                 if bad else f"all {len(means)} met; ") + f"worst {worst} {means[worst]:.2f}x"})
    return out


def evaluate_targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    out = []
    for key, desc, select, value, op, need in TARGETS:
        for flav in sorted({r["mpi"] for r in rows}):
            sel = [r for r in rows if r["mpi"] == flav and select(r) and r.get(value) is not None]
            t: Dict[str, Any] = {"key": key, "mpi": flav, "target": f"[{flav}] {desc}", "threshold": need}
            if not sel:
                t.update(status="N/A", measured="no such rows in this run")
            else:
                vals = [(r[value], r) for r in sel]
                worst = min(vals, key=lambda v: v[0]) if op == ">=" else max(vals, key=lambda v: v[0])
                bad = [v for v in vals if (v[0] < need if op == ">=" else v[0] > need)]
                t["status"] = "MISS" if bad else "PASS"
                t["worst"] = worst[0]
                t["measured"] = (f"{len(bad)} of {len(vals)} rows miss; " if bad else f"all {len(vals)} met; ") + \
                    f"worst {worst[0]:.2f}{'ns' if value == 'extra_ns' else 'x'} ({worst[1]['case']} block {format_size(worst[1]['block'])} " \
                    f"{format_size(worst[1]['bytes'])})"
                one = [r["one_run"] for r in sel if r.get("one_run") is not None]
                if value == "speedup" and op == ">=" and need > 1 and one:
                    t["one_run_worst"] = min(one)
                    t["measured"] += f"; in one run (MPI_Pcontrol): worst {min(one):.2f}x, " + \
                        ("met" if min(one) >= need else f"{sum(1 for x in one if x < need)} of {len(one)} miss")
            out.append(t)
    return out
