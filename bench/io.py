"""``hauler-bench io``: file I/O bandwidth of hauler.io against fio, numpy, torch and plain Python.

Three parts, in one run (every reader on a cold cache: O_DIRECT, or posix_fadvise(DONTNEED) on a
file fsynced before):

* sweep    -- sequential and random reads and writes, request sizes 4 KiB..64 MiB and queue depths
              1..64: hauler (HAULER_IO_TASK_SIZE = the request size, HAULER_IO_QUEUE_DEPTH = the
              depth; random pieces through File.read_many/write_many) against fio with the same
              parameters (--direct=1, --ioengine=io_uring --fixedbufs; psync jobs when hauler's
              backend is the thread pool): the physical limit. Rounds alternate hauler and fio.
* file     -- a whole cold file (1 GiB by default) read and written by hauler (defaults), fio
              (1 MiB, depth 32), numpy.fromfile/tofile, torch.load/save and plain Python
              (f.read / f.write), each write followed by fsync.
* optimizer -- Adam steps with the state on disk (hauler.offload.OptimizerOffload) against
              torch.optim.Adam in memory, in one process, alternating (bit-equal parameters
              checked); the bound is max(compute: the in-memory step, I/O: the step's bytes at
              fio's 1 MiB qd32 speed); peak RSS of one fresh process per kind.
* offload  -- a training loop (an MLP, forward + backward) with and without hauler.offload:
              steps of both kinds alternate in one process (s/step, CPU s/step, bytes moved, and
              how much of the I/O time was hidden behind compute: 1 - (median extra s/step with
              offload) / (the same writes and reads replayed alone, without compute, in that
              process)); peak RSS from one fresh process per kind. With torch's default threads
              (every core computes), then with one core left to the I/O threads. The limit of
              hiding, in the same run: fio moving the same bytes in its own process beside a
              plain step (how much of its I/O time that step absorbs).

GB/s are decimal (1e9 B/s) of the median round; ratios are medians of within-round ratios.
A ``# targets`` block reports issue 4's targets against this run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from . import core
from .core import Column, Report, format_size

NAME = "io"
HELP = "file I/O GB/s: hauler.io (io_uring/O_DIRECT) vs fio, numpy, torch and Python reads/writes; offload"

SIZES = (4 << 10, 1 << 20, 64 << 20)
QDS = (1, 32, 64)
PATTERNS = ("read", "write", "randread", "randwrite")
PARTS = ("sweep", "file", "offload", "optimizer")
QUICK_SIZES = (4 << 10, 1 << 20)
QUICK_QDS = (1, 32)
DEFAULT_FILE = 1 << 30
QUICK_FILE = 32 << 20
DEFAULT_BUDGET = 64 << 20       # bytes per sweep measurement (at most)
QUICK_BUDGET = 8 << 20
DEFAULT_REPEAT = 3
QUICK_REPEAT = 2


@dataclass
class Options:
    directory: Optional[str] = None
    file_size: int = DEFAULT_FILE
    sizes: Tuple[int, ...] = SIZES
    qds: Tuple[int, ...] = QDS
    patterns: Tuple[str, ...] = PATTERNS
    budget: int = DEFAULT_BUDGET
    repeat: int = DEFAULT_REPEAT
    parts: Tuple[str, ...] = ("sweep", "file", "offload", "optimizer")
    quick: bool = False
    fio: bool = True
    seed: int = 12345


# -- arguments ------------------------------------------------------------------------------------

def _sizes_arg(text: str) -> Tuple[int, ...]:
    try:
        return tuple(core.parse_size(t) for t in text.split(",") if t.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ints_arg(text: str) -> Tuple[int, ...]:
    try:
        v = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        v = ()
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, comma-separated, got {text!r}")
    return v




def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=None,
                   help="directory for the test files (default: a new one under $TMPDIR or /var/tmp; "
                        "it must be on the drive you want to measure)")
    p.add_argument("--file-size", type=lambda t: _sizes_arg(t)[0], default=None,
                   help=f"size of the test files (default {format_size(DEFAULT_FILE)}, {format_size(QUICK_FILE)} "
                        f"with --quick; scaled down to a quarter of the free space)")
    p.add_argument("--sizes", type=_sizes_arg, default=None,
                   help=f"request sizes of the sweep (default {','.join(format_size(s) for s in SIZES)})")
    p.add_argument("--qd", type=_ints_arg, default=None,
                   help=f"queue depths of the sweep (default {','.join(map(str, QDS))})")
    p.add_argument("--patterns", type=core.list_arg(PATTERNS), default=PATTERNS, metavar=",".join(PATTERNS),
                   help="access patterns to measure (comma-separated; default all)")
    p.add_argument("--budget", type=lambda t: _sizes_arg(t)[0], default=None,
                   help=f"bytes moved per sweep measurement, at most (default {format_size(DEFAULT_BUDGET)})")
    p.add_argument("--repeat", type=core.positive_int, default=None, help=f"rounds (default {DEFAULT_REPEAT})")
    p.add_argument("--parts", type=core.list_arg(PARTS), default=PARTS, metavar=",".join(PARTS),
                   help="parts to run (comma-separated): the request size/depth sweep, whole files, activation "
                        "offload, optimizer state offload")
    p.add_argument("--no-fio", action="store_true", help="do not run fio")
    p.add_argument("--quick", action="store_true", help="small files and few cases (for tests)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the random data and offsets")
    core.add_format_args(p)


def options_from_args(a: argparse.Namespace) -> Options:
    q = a.quick
    return Options(directory=a.dir, file_size=a.file_size or (QUICK_FILE if q else DEFAULT_FILE),
                   sizes=a.sizes or (QUICK_SIZES if q else SIZES), qds=a.qd or (QUICK_QDS if q else QDS),
                   patterns=tuple(a.patterns), budget=a.budget or (QUICK_BUDGET if q else DEFAULT_BUDGET),
                   repeat=max(1, a.repeat or (QUICK_REPEAT if q else DEFAULT_REPEAT)), parts=tuple(a.parts),
                   quick=q, fio=not a.no_fio, seed=a.seed)


def main(args: argparse.Namespace) -> int:
    rep = run(options_from_args(args), core.output_of(args))
    return 0 if all(r.get("correct", True) is not False for r in rep.rows) else 1


# -- helpers --------------------------------------------------------------------------------------

def _fx(v: float) -> str:
    return f"{v:.2f}"


def _fio_version() -> Optional[str]:
    exe = shutil.which("fio")
    if not exe:
        return None
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def run_fio(path: str, rw: str, bs: int, qd: int, size: int, amount: int, direct: bool,
            engine: str = "io_uring") -> float:
    """fio's bandwidth (bytes/s) for one job on `path`."""
    cmd = ["fio", "--name=hauler-bench", f"--filename={path}", f"--rw={rw}", f"--bs={bs}",
           f"--iodepth={qd}", f"--ioengine={engine}", f"--direct={1 if direct else 0}",
           f"--size={size}", f"--io_size={amount}", "--norandommap", "--randrepeat=0",
           "--invalidate=1", "--output-format=json", "--thread"]
    if engine == "io_uring":
        cmd.append("--fixedbufs")  # registered buffers: fio's fastest io_uring setting (no per-I/O page pinning)
    if engine == "psync":
        cmd.remove(f"--iodepth={qd}")
        cmd += [f"--numjobs={qd}", "--group_reporting", f"--io_size={max(bs, amount // qd)}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"fio failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    j = json.loads(p.stdout[p.stdout.index("{"):])
    job = j["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return float(side["bw_bytes"])


def drop_cache(path: str) -> None:
    """Evicts the file from the page cache (fsync first, so every page is clean)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def aligned(np: Any, n: int) -> Any:
    raw = np.empty(n + 4096, dtype=np.uint8)
    s = (-raw.ctypes.data) % 4096
    return raw[s:s + n]


def pattern_bytes(np: Any, off: int, n: int) -> Any:
    """The test pattern of file range [off, off+n) (8-byte words holding their index); off, n % 8 == 0."""
    return np.arange(off // 8, (off + n) // 8, dtype=np.uint64).view(np.uint8)


def _settings(**kv: Any):
    from hauler import config

    class _Ctx:
        def __enter__(self):
            for k, v in kv.items():
                config.set(k, v)

        def __exit__(self, *exc):
            for k in kv:
                config.set(k, None)
    return _Ctx()


def _median_ratio(a: List[float], b: List[float]) -> float:
    return statistics.median([x / y for x, y in zip(a, b) if y > 0] or [float("nan")])


# -- report ---------------------------------------------------------------------------------------

COLUMNS = [
    Column("part", "part", "", left=True, width=7),
    Column("pattern", "pattern", "", left=True, width=9),
    Column("bs", "request", "B", format_size, width=7),
    Column("qd", "qd", "", width=3),
    Column("hauler_gbps", "hauler", "GB/s", _fx, width=6),
    Column("peer", "peer", "", left=True, width=14),
    Column("peer_gbps", "peer", "GB/s", _fx, width=6),
    Column("vs_peer", "h/peer", "x", _fx, width=6),
    Column("correct_text", "correct", "", left=True, width=7),
]


def _header(opts: Options, hinfo: Dict[str, Any], mach: Dict[str, Any], backend: str, direct: str,
            fio: Optional[str], directory: str, fs: str) -> List[Tuple[str, str]]:
    return [
        ("hauler", f"{hinfo['version']} ({hinfo['core']}); build: {hinfo['build_summary']}"),
        ("backend", backend),
        ("files", f"{directory} ({fs}); {direct}"),
        ("fio", fio or "NOT INSTALLED"),
        ("machine", f"{mach['cpu']}, {mach['cores_usable']} usable cores of {mach['cores_os']}, {mach['memory']}; "
                    f"{mach['host']}, {mach['os']}; {mach['date']}"),
        ("sweep", f"file {format_size(opts.file_size)}; at most {format_size(opts.budget)} per measurement; "
                  f"sizes {','.join(format_size(s) for s in opts.sizes)}; qd {','.join(map(str, opts.qds))}; "
                  f"{opts.repeat} rounds alternating hauler and fio (same bs, depth, direct=1; fio io_uring with --fixedbufs)"),
        ("file", f"whole {format_size(opts.file_size)} file, cold (O_DIRECT, or fsync + fadvise DONTNEED "
                 f"before each buffered reader); writers fsync; {opts.repeat} rounds"),
        ("GB/s", "decimal, median round; x = median of within-round ratios hauler/peer"),
    ]


def _task_size() -> int:
    from hauler import config
    return int(config.get("HAULER_IO_TASK_SIZE"))


def _fs_type(path: str) -> str:
    try:
        best, kind = "", "unknown"
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1]
                if path.startswith(mnt) and len(mnt) > len(best):
                    best, kind = mnt, f"{parts[2]} on {parts[0]} at {mnt}"
        return kind
    except OSError:
        return "unknown"


def run(opts: Options, out: Optional[core.Output] = None) -> Report:
    import numpy as np

    from hauler import io

    hinfo = core.hauler_info()
    mach = core.machine_info()
    base = opts.directory or os.environ.get("TMPDIR") or "/var/tmp"
    os.makedirs(base, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="hauler-bench-io-", dir=base)
    warnings: List[str] = []
    free = shutil.disk_usage(directory).free
    file_size = opts.file_size
    if file_size * 3 > free // 4:
        file_size = max(1 << 20, (free // 12) >> 20 << 20)
        warnings.append(f"file size scaled down to {format_size(file_size)} (free space {free >> 20} MiB)")
    file_size = max(file_size // (1 << 20), 1) << 20
    fio = _fio_version() if opts.fio else None
    if opts.fio and not fio:
        warnings.append("fio is not installed: NO physical-limit column (apt-get install fio)")
    probe = os.path.join(directory, "probe")
    with io.File(probe, "w") as f:
        direct = f.direct
        direct_text = "O_DIRECT" if direct else f"BUFFERED: {f.direct_reason}"
        # a bounced write and a request of many tasks: io_uring registration is tried now, so the
        # banner says whether it worked
        f.write(np.zeros(8 * _task_size(), np.uint8))
        f.write(np.ones(100, np.uint8), offset=7)
    os.unlink(probe)
    backend = io.backend_description()
    if io.backend_is_fallback():
        warnings.append(f"FALLBACK I/O BACKEND: {backend}. These are NOT io_uring numbers.")
    elif io.backend() != "io_uring":
        warnings.append(f"I/O backend {backend}: these are NOT io_uring numbers.")
    elif io.registration_failed():
        warnings.append(f"io_uring REGISTRATION FAILED, plain ops ran: {io.registration()}")
    if not direct:
        warnings.append(f"the file system refuses O_DIRECT here ({direct_text}): hauler ran BUFFERED; "
                        f"cold-cache figures are page-cache figures")
    fio_engine = "io_uring" if io.backend() == "io_uring" else "psync"
    config = {"directory": directory, "file_size": file_size, "sizes": list(opts.sizes), "qds": list(opts.qds),
              "patterns": list(opts.patterns), "budget": opts.budget, "repeat": opts.repeat,
              "parts": list(opts.parts), "quick": opts.quick, "backend": io.backend(), "direct": direct,
              "fio_engine": fio_engine if fio else None}
    rep = Report(benchmark=NAME, config=config,
                 header=_header(Options(**{**opts.__dict__, "file_size": file_size}), hinfo, mach, backend,
                                direct_text, fio, directory, _fs_type(os.path.realpath(directory))),
                 columns=COLUMNS, warnings=warnings, info={"hauler": hinfo, "machine": mach})
    out = out or core.Output("table")
    out.begin(rep)
    try:
        ctx = {"np": np, "io": io, "dir": directory, "size": file_size, "fio": bool(fio),
               "direct": direct, "engine": fio_engine}
        if "sweep" in opts.parts:
            _sweep(opts, ctx, rep, out)
        if "file" in opts.parts:
            _whole_file(opts, ctx, rep, out)
        if "offload" in opts.parts:
            _offload(opts, ctx, rep, out)
        if "optimizer" in opts.parts:
            _optimizer(opts, ctx, rep, out)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    bad = [r for r in rep.rows if r.get("correct") is False]
    if bad:
        rep.warnings.append(f"{len(bad)} row(s) INCORRECT: " + "; ".join(
            f"{r['part']}/{r['pattern']}/{r.get('peer')}" for r in bad))
    rep.targets = evaluate_targets(rep)
    out.end(rep)
    return rep


# -- part 1: the sweep ----------------------------------------------------------------------------

def _write_pattern(ctx: Dict[str, Any], path: str) -> None:
    np, io = ctx["np"], ctx["io"]
    chunk = 64 << 20
    buf = aligned(np, chunk)
    with io.File(path, "w") as f:
        for off in range(0, ctx["size"], chunk):
            n = min(chunk, ctx["size"] - off)
            buf[:n] = pattern_bytes(np, off, n)
            f.write(buf[:n], offset=off)
        f.sync()


def _sweep(opts: Options, ctx: Dict[str, Any], rep: Report, out: core.Output) -> None:
    np, io = ctx["np"], ctx["io"]
    size = ctx["size"]
    rpath = os.path.join(ctx["dir"], "sweep-read")
    wpath = os.path.join(ctx["dir"], "sweep-write")
    _write_pattern(ctx, rpath)
    with open(wpath, "wb") as f:  # allocated, so writes overwrite (as fio's do after its layout)
        f.truncate(size)
    _write_pattern(ctx, wpath)
    rng = np.random.default_rng(opts.seed)
    def amount_of(bs: int, qd: int) -> int:
        # enough for the queue to fill, at most the budget (for small requests: 4096 of them)
        a = min(size, max(bs * qd, min(opts.budget, bs * 4096)))
        return max(bs, a // bs * bs)

    sizes = [bs for bs in opts.sizes if bs <= size and bs % 4096 == 0]
    skipped = [bs for bs in opts.sizes if bs not in sizes]
    if skipped:
        rep.warnings.append(f"sweep sizes {','.join(format_size(b) for b in skipped)} skipped "
                            f"(larger than the file or not a multiple of 4 KiB)")
    if not sizes:
        return
    buf = aligned(np, max(amount_of(bs, qd) for bs in sizes for qd in opts.qds))
    for pattern in opts.patterns:
        for bs in sizes:
            for qd in opts.qds:
                amount = amount_of(bs, qd)
                count = amount // bs
                rand = pattern.startswith("rand")
                write = pattern.endswith("write")
                path = wpath if write else rpath
                if rand:
                    offs = (rng.choice(size // bs, size=count, replace=False) * bs).tolist()
                else:
                    offs = [0]
                view = buf[:amount]
                if write:
                    view[:] = np.concatenate([pattern_bytes(np, o, bs) for o in offs]) if rand \
                        else pattern_bytes(np, 0, amount)

                with _settings(HAULER_IO_TASK_SIZE=bs, HAULER_IO_QUEUE_DEPTH=qd):
                    def hauler_once():
                        with io.File(path, "r+" if write else "r") as f:
                            if rand:
                                (f.write_many if write else f.read_many)(view, offs, bs)
                            elif write:
                                f.write(view, offset=0)
                            else:
                                f.read_into(view, offset=0)
                            if write:
                                f.sync(data_only=True)
                    # correctness, untimed: reads see the pattern; writes leave it on disk
                    hauler_once()
                    ok = _check(np, path, view, offs, bs, rand, write)
                    th, tf = [], []
                    for r in range(opts.repeat):
                        order = ("h", "f") if r % 2 == 0 else ("f", "h")
                        for who in order:
                            if who == "h":
                                t0 = time.perf_counter()
                                hauler_once()
                                th.append(amount / (time.perf_counter() - t0))
                            elif ctx["fio"]:
                                try:
                                    tf.append(run_fio(path, pattern, bs, qd, size, amount, ctx["direct"],
                                                      ctx["engine"]))
                                except RuntimeError as e:
                                    rep.warnings.append(str(e))
                                    ctx["fio"] = False
                if write and ctx["fio"]:
                    _write_pattern(ctx, wpath)  # fio wrote its own bytes
                row = {"part": "sweep", "pattern": pattern, "bs": bs, "qd": qd, "amount": amount,
                       "hauler_gbps": statistics.median(th) / 1e9, "peer": "fio" if tf else None,
                       "peer_gbps": statistics.median(tf) / 1e9 if tf else None,
                       "vs_peer": _median_ratio(th, tf) if tf else None,
                       "correct": ok, "correct_text": "yes" if ok else "NO",
                       "hauler_rounds_gbps": [x / 1e9 for x in th], "fio_rounds_gbps": [x / 1e9 for x in tf]}
                rep.rows.append(row)
                out.row(rep, row)
    for p in (rpath, wpath):
        os.unlink(p)


def _check(np: Any, path: str, view: Any, offs: List[int], bs: int, rand: bool, write: bool) -> bool:
    """Reads check against the pattern; writes against the bytes on disk (os.pread)."""
    if not rand:
        offs = [0]
        pieces = [(0, view.nbytes)]
    else:
        pieces = [(o, bs) for o in offs[:64]]
    fd = os.open(path, os.O_RDONLY)
    try:
        for i, (o, n) in enumerate(pieces):
            mem = view[i * bs:i * bs + n] if rand else view
            want = pattern_bytes(np, o, n)
            if not np.array_equal(mem, want):
                return False
            if write and os.pread(fd, n, o) != want.tobytes():
                return False
    finally:
        os.close(fd)
    return True


# -- part 2: whole files --------------------------------------------------------------------------

def _whole_file(opts: Options, ctx: Dict[str, Any], rep: Report, out: core.Output) -> None:
    np, io = ctx["np"], ctx["io"]
    size = ctx["size"]
    d = ctx["dir"]
    src = aligned(np, size)
    src[:] = pattern_bytes(np, 0, size)
    dst = aligned(np, size)
    try:
        import torch
    except ImportError:
        torch = None
        rep.warnings.append("torch is not installed: no torch.save/torch.load rows")
    hpath = os.path.join(d, "file-hauler")
    # one file per writer; the readers read the file their writer made
    paths = {"hauler": hpath, "fio": os.path.join(d, "file-fio"), "numpy": os.path.join(d, "file-numpy"),
             "python": os.path.join(d, "file-python"), "torch": os.path.join(d, "file-torch.pt")}
    tsrc = torch.from_numpy(src) if torch is not None else None

    def fsync_path(p: str) -> None:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def w_hauler():
        with io.File(hpath, "w") as f:
            f.write(src)
            f.sync()

    def w_numpy():
        src.tofile(paths["numpy"])
        fsync_path(paths["numpy"])

    def w_python():
        with open(paths["python"], "wb") as f:
            f.write(memoryview(src))
            f.flush()
            os.fsync(f.fileno())

    def w_torch():
        torch.save(tsrc, paths["torch"])
        fsync_path(paths["torch"])

    def r_hauler():
        with io.File(hpath, "r") as f:
            f.read_into(dst)
        return dst

    def r_numpy():
        return np.fromfile(paths["numpy"], dtype=np.uint8)

    def r_python():
        with open(paths["python"], "rb") as f:
            return np.frombuffer(f.read(), dtype=np.uint8)

    def r_torch():
        return torch.load(paths["torch"], weights_only=True).numpy()

    writers = {"hauler": w_hauler, "numpy.tofile": w_numpy, "python write": w_python}
    readers = {"hauler": r_hauler, "numpy.fromfile": r_numpy, "python read": r_python}
    if torch is not None:
        writers["torch.save"] = w_torch
        readers["torch.load"] = r_torch
    rpath = {"hauler": hpath, "numpy.fromfile": paths["numpy"], "python read": paths["python"],
             "torch.load": paths["torch"]}

    for kind, fns in (("write", writers), ("read", readers)):
        times: Dict[str, List[float]] = {n: [] for n in fns}
        fio_t: List[float] = []
        correct: Dict[str, bool] = {}
        names = list(fns)
        for r in range(opts.repeat):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                if kind == "read":
                    drop_cache(rpath[name])
                t0 = time.perf_counter()
                res = fns[name]()
                times[name].append(size / (time.perf_counter() - t0))
                if r == 0:
                    if kind == "read":
                        correct[name] = bool(np.array_equal(res, src))
                    else:
                        correct[name] = _written_right(name, paths, hpath, src, torch)
                del res
            if ctx["fio"]:
                try:
                    fio_t.append(run_fio(paths["fio"], kind, 1 << 20, 32, size, size, ctx["direct"], ctx["engine"]))
                except RuntimeError as e:
                    rep.warnings.append(str(e))
                    ctx["fio"] = False
        h = times["hauler"]
        peers = [(n, t) for n, t in times.items() if n != "hauler"] + ([("fio 1M qd32", fio_t)] if fio_t else [])
        for name, t in peers:
            row = {"part": "file", "pattern": kind, "bs": size, "qd": None, "hauler_gbps": statistics.median(h) / 1e9,
                   "peer": name, "peer_gbps": statistics.median(t) / 1e9, "vs_peer": _median_ratio(h, t),
                   "correct": correct.get(name, True) and correct["hauler"],
                   "hauler_rounds_gbps": [x / 1e9 for x in h], "peer_rounds_gbps": [x / 1e9 for x in t]}
            row["correct_text"] = "yes" if row["correct"] else "NO"
            rep.rows.append(row)
            out.row(rep, row)
        rep.info[f"file_{kind}_hauler_gbps"] = statistics.median(h) / 1e9
    for p in paths.values():
        if os.path.exists(p):
            os.unlink(p)


def _written_right(name: str, paths: Dict[str, str], hpath: str, src: Any, torch: Any) -> bool:
    """The file a writer made holds src: its bytes, or for torch.save what torch.load gives back."""
    if name == "torch.save":
        got = torch.load(paths["torch"], weights_only=True)
        return got.dtype == torch.uint8 and got.numpy().tobytes() == src.tobytes()
    path = {"hauler": hpath, "numpy.tofile": paths["numpy"], "python write": paths["python"]}[name]
    with open(path, "rb") as f:
        return f.read() == src.tobytes()


# -- part 3: offload in a training loop ------------------------------------------------------------



def _child(program: str, args: List[str], env: Optional[Dict[str, str]] = None, timeout: int = 900) -> Dict[str, Any]:
    """Runs one of bench/programs/ and returns the JSON object on its last line."""
    p = subprocess.run([sys.executable, core.program_path(program), *args], capture_output=True, text=True,
                       timeout=timeout, env=env)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip()[-400:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def _offload(opts: Options, ctx: Dict[str, Any], rep: Report, out: core.Output) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        rep.warnings.append("torch is not installed: no offload rows")
        return
    width, depth, batch, pairs = (512, 4, 1024, 3) if opts.quick else (1024, 12, 2048, 4 * opts.repeat)
    model = f"MLP {depth} x Linear({width},{width})+GELU, batch {batch}"
    directory = os.path.join(ctx["dir"], "acts")
    shape = [directory, str(width), str(depth), str(batch)]
    # Peak RSS: one process per mode, with MALLOC_MMAP_THRESHOLD_=1 MiB so that freed activations
    # go back to the OS and the peak is live memory, not heap kept for reuse (that setting also
    # page-faults every activation on every step, so it is not used for timing).
    rss_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    try:
        rss = {m: _child("offload_step.py", [f"rss-{m}", *shape, "1", "0"], rss_env)["peak_rss_kib"]
               for m in ("plain", "offload")}
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        rep.warnings.append(f"offload benchmark (peak RSS) failed: {e}")
        return
    cores = len(os.sched_getaffinity(0))
    # torch's default threads (all cores compute, the I/O threads compete with them), then one
    # core left to the I/O threads (as on a GPU machine, where the CPU does not compute)
    # the limit is measured in every run (--quick too): a hidden fraction means little without it
    fio = (shutil.which("fio") or "") if ctx["fio"] else ""
    for threads in ([0, cores - 1] if cores > 1 and not opts.quick else [0]):
        try:
            r = _child("offload_step.py", ["time", *shape, str(pairs), str(threads), fio])
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            rep.warnings.append(f"offload benchmark (timing, {threads or 'default'} threads) failed: {e}")
            return
        _offload_row(r, model, rss, rep, out)


def _offload_row(r: Dict[str, Any], model: str, rss: Dict[str, int], rep: Report, out: core.Output) -> None:
    med = statistics.median
    plain_s, off_s = med([t for t, _ in r["plain"]]), med([t for t, _ in r["offload"]])
    exposed = med([max(0.0, b[0] - a[0]) for a, b in zip(r["plain"], r["offload"])])
    io_time = med([w + rd for w, rd in r["io_alone"]])
    hidden = None if not io_time else max(0.0, 1.0 - exposed / io_time)
    stats, steps = r["stats"], r["steps_counted"]
    per_step_w, per_step_r = stats["bytes_written"] / steps, stats["bytes_read"] / steps
    cpu_plain, cpu_off = med([c for _, c in r["plain"]]), med([c for _, c in r["offload"]])
    row = {"part": "offload", "pattern": f"train/{r['threads']}t", "bs": None, "qd": None,
           "hauler_gbps": None, "peer": "no offload", "peer_gbps": None,
           "vs_peer": med([a[0] / b[0] for a, b in zip(r["plain"], r["offload"])]),
           "correct": bool(r["check"]["correct"]), "correct_text": "yes" if r["check"]["correct"] else "NO",
           "check": r["check"], "torch_threads": r["threads"],
           "rounds": {"plain": [t for t, _ in r["plain"]], "offload": [t for t, _ in r["offload"]]},
           "model": model, "s_per_step_offload": off_s, "s_per_step_plain": plain_s,
           "peak_rss_mib_offload": rss["offload"] / 1024, "peak_rss_mib_plain": rss["plain"] / 1024,
           "bytes_written_per_step": per_step_w, "bytes_read_per_step": per_step_r,
           "io_time_s_per_step": io_time, "hidden_fraction": hidden, "exposed_s_per_step": exposed,
           "wait_s_per_step": stats["wait_s"] / steps,
           "cpu_s_per_step_plain": cpu_plain, "cpu_s_per_step_offload": cpu_off, "offload_stats": stats,
           "offload_path": stats.get("path"), "failed_writes": stats.get("failed_writes", 0)}
    if row["failed_writes"]:   # a step that trained from memory measured no offload at all
        row.update(correct=False, correct_text="NO (failed writes)")
    beside = r.get("fio_beside")
    if beside and io_time:
        row["fio_beside_exposed_s_per_step"] = med([max(0.0, b - a) for a, b in beside])
        row["fio_beside_hidden_fraction"] = max(0.0, 1.0 - row["fio_beside_exposed_s_per_step"] / io_time)
        if hidden is not None and row["fio_beside_hidden_fraction"] > 0:
            row["hidden_vs_limit"] = hidden / row["fio_beside_hidden_fraction"]
    rep.rows.append(row)
    out.row(rep, row)
    rep.footer.append(
        f"offload ({r['threads']} torch threads): {model}, {steps} alternating step pairs in one process: "
        f"{plain_s:.3f} s/step plain, {off_s:.3f} s/step offload (h/peer = steps/s ratio); "
        f"{per_step_w / 1e6:.0f} MB written + {per_step_r / 1e6:.0f} MB read per step; CPU {cpu_plain:.3f} s/step "
        f"plain, {cpu_off:.3f} offload; the same I/O alone (no compute) takes {io_time:.3f} s, the step "
        f"{exposed:.3f} s longer ({row['wait_s_per_step']:.3f} s of it waiting for reads): "
        f"{hidden * 100:.0f}% hidden behind compute; peak RSS (MALLOC_MMAP_THRESHOLD_=1 MiB runs) "
        f"{row['peak_rss_mib_plain']:.0f} MiB plain, {row['peak_rss_mib_offload']:.0f} MiB offload"
        + ("" if "fio_beside_hidden_fraction" not in row else
           f"; the limit here: fio moving the same bytes in its own process (8 MiB O_DIRECT, paced at "
           f"{r['fio_rate']}B/s) beside a plain step makes it {row['fio_beside_exposed_s_per_step']:.3f} s longer "
           f"({row['fio_beside_hidden_fraction'] * 100:.0f}% hidden, {len(beside)} pairs)"
           + (f": hauler.offload reaches {row['hidden_vs_limit']:.2f} of that limit" if "hidden_vs_limit" in row
              else "")))


# -- targets --------------------------------------------------------------------------------------

def evaluate_targets(rep: Report) -> List[Dict[str, Any]]:
    rows = rep.rows
    out = []

    def add(key: str, desc: str, figs: List[Tuple[str, Optional[float]]], need: float, na: str) -> None:
        figs = [(n, v) for n, v in figs if v is not None]
        t: Dict[str, Any] = {"key": key, "target": desc, "threshold": need}
        if not figs:
            t.update(status="N/A", measured=na, worst=None)
        else:
            worst = min(figs, key=lambda f: f[1])
            t.update(status="PASS" if worst[1] >= need else "MISS", worst=worst[1],
                     measured=", ".join(f"{n} {v:.2f}x" for n, v in figs))
        out.append(t)

    fio_rows = [r for r in rows if r["part"] == "sweep" and r["bs"] == 1 << 20 and r["qd"] == 32
                and r["pattern"] in ("read", "write")]
    add("fio_1M_qd32", ">= 0.9x fio at 1 MiB requests, queue depth 32 (reads and writes)",
        [(r["pattern"], r["vs_peer"]) for r in fio_rows], 0.9, "no 1M/qd32 sweep rows with fio in this run")
    size = rep.config.get("file_size", 0)
    big = size >= 1 << 30
    file_rows = [r for r in rows if r["part"] == "file" and r["pattern"] == "read"
                 and r["peer"] in ("numpy.fromfile", "torch.load")]
    add("cold_1G", ">= 3x numpy.fromfile and torch.load on cold 1 GiB files"
        + ("" if big else f" (this run: {format_size(size)} files)"),
        [(r["peer"], r["vs_peer"]) for r in file_rows], 3.0, "no file rows in this run")
    # decided by the first row that leaves a core free for the I/O (the premise); every row
    # is shown, the one with all cores computing included
    off = [r for r in rows if r["part"] == "offload" and r.get("hidden_fraction") is not None]
    free = [r for r in off if r["torch_threads"] < len(os.sched_getaffinity(0))]
    t = {"key": "offload_hidden", "target": ">= 80% of offload I/O time hidden behind compute where a core is free",
         "threshold": 0.8}
    if not free:
        t.update(status="N/A", worst=None, measured="no offload row with a core left free" + "".join(
            f"; {r['hidden_fraction'] * 100:.0f}% hidden with {r['torch_threads']} torch threads" for r in off))
    else:
        v = free[0]["hidden_fraction"]
        t.update(status="PASS" if v >= 0.8 else "MISS", worst=v, measured=", ".join(
            f"{r['hidden_fraction'] * 100:.0f}% hidden with {r['torch_threads']} torch threads"
            + (f" (fio beside a plain step: {r['fio_beside_hidden_fraction'] * 100:.0f}%)"
               if r.get("fio_beside_hidden_fraction") is not None else "") for r in off))
    out.append(t)
    lim = [r for r in off if r.get("hidden_vs_limit") is not None]
    add("offload_vs_limit", ">= 0.9 of the I/O time fio hides beside a plain step (the limit, same run)",
        [(f"{r['torch_threads']} torch threads", r["hidden_vs_limit"]) for r in lim[:1]], 0.9,
        "no offload row with fio beside a plain step (fio missing, or it hid nothing)")
    out += _optimizer_targets(rows)
    return out


# -- part 4: optimizer state offload ---------------------------------------------------------------

def _optimizer(opts: Options, ctx: Dict[str, Any], rep: Report, out: core.Output) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        rep.warnings.append("torch is not installed: no optimizer rows")
        return
    numel, chunk, pairs = (8 << 20, 4 << 20, 3) if opts.quick else (64 << 20, 16 << 20, 2 * opts.repeat)
    directory = os.path.join(ctx["dir"], "optim")
    os.makedirs(directory, exist_ok=True)

    def child(mode: str) -> Dict[str, Any]:
        return _child("optim_step.py", [mode, directory, str(numel), str(pairs), "0", str(chunk)], timeout=1800)
    try:
        rss = {m: child(f"rss-{m}")["peak_rss_kib"] * 1024 for m in ("plain", "offload")}
        r = child("time")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        rep.warnings.append(f"optimizer benchmark failed: {e}")
        return
    med = statistics.median
    steps = r["steps_counted"]
    rb, wb = r["stats"]["bytes_read"] / steps, r["stats"]["bytes_written"] / steps
    # the limit: the step's reads and writes at fio's speed (1 MiB requests, depth 32), else hauler.io's
    peer_io = "fio 1M qd32"
    path = os.path.join(ctx["dir"], "optim-fio")
    size = max(1 << 20, int(max(rb, wb)) >> 20 << 20)
    try:
        if not ctx["fio"]:
            raise RuntimeError("fio not run")
        bw = {k: run_fio(path, k, 1 << 20, 32, size, size, ctx["direct"], ctx["engine"]) for k in ("write", "read")}
    except (RuntimeError, subprocess.TimeoutExpired):
        peer_io = "hauler.io alone"
        bw = _hauler_io_speed(ctx, path, size, chunk)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    io_s = rb / bw["read"] + wb / bw["write"]
    plain_s, off_s = med([t for t, _ in r["plain"]]), med([t for t, _ in r["offload"]])
    bound = max(plain_s, io_s)
    state = r["state_bytes"]
    reduced = (rss["plain"] - rss["offload"]) / state
    row = {"part": "optim", "pattern": f"adam/{r['threads']}t", "bs": chunk, "qd": None,
           "hauler_gbps": (rb + wb) / off_s / 1e9, "peer": "Adam in memory", "peer_gbps": None,
           "vs_peer": plain_s / off_s, "correct": bool(r["correct"]), "correct_text": "yes" if r["correct"] else "NO",
           "numel": numel, "state_bytes": state, "chunk_bytes": chunk, "s_per_step_offload": off_s,
           "s_per_step_plain": plain_s, "io_s_per_step": io_s, "io_peer": peer_io,
           "io_gbps": {k: v / 1e9 for k, v in bw.items()}, "bound_s": bound, "bound_ratio": off_s / bound,
           "bytes_read_per_step": rb, "bytes_written_per_step": wb, "peak_rss_plain": rss["plain"],
           "peak_rss_offload": rss["offload"], "rss_reduction_of_state": reduced, "offload_stats": r["stats"],
           "rounds": {"plain": [t for t, _ in r["plain"]], "offload": [t for t, _ in r["offload"]]}}
    rep.rows.append(row)
    out.row(rep, row)
    rep.footer.append(
        f"optimizer: Adam over {numel / 2**20:.0f} Mi fp32 parameters ({format_size(state)} of state), "
        f"{format_size(chunk)} chunks, {steps} alternating step pairs, {r['threads']} torch threads: "
        f"{plain_s:.3f} s/step in memory, {off_s:.3f} s/step offloaded (h/peer = steps/s ratio); "
        f"{rb / 1e6:.0f} MB read + {wb / 1e6:.0f} MB written per step (the state, and the parameters "
        f"before the step as the undo copy), {io_s:.3f} s at {peer_io} speed; offload step / "
        f"max(compute, I/O) = {off_s / bound:.2f}; peak RSS {rss['plain'] / 2**20:.0f} MiB in memory, "
        f"{rss['offload'] / 2**20:.0f} MiB offloaded: {reduced * 100:.0f}% of the state")


def _hauler_io_speed(ctx: Dict[str, Any], path: str, size: int, chunk: int) -> Dict[str, float]:
    """Bytes/s of hauler.io writing then reading a cold file of `size` in `chunk` requests."""
    np, io = ctx["np"], ctx["io"]
    buf = aligned(np, min(chunk, size))
    out = {}
    with io.File(path, "w+") as f:
        for kind in ("write", "read"):
            t0 = time.perf_counter()
            for off in range(0, size, buf.nbytes):
                n = min(buf.nbytes, size - off)
                (f.write if kind == "write" else f.read_into)(buf[:n], offset=off)
            out[kind] = size / (time.perf_counter() - t0)
            if kind == "write":
                f.sync()
                drop_cache(path)
    return out


def _optimizer_targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    opt = [r for r in rows if r["part"] == "optim"]
    step = {"key": "optimizer_step", "target": "offloaded Adam step within 1.2x of max(compute, I/O at fio speed)",
            "threshold": 1.2}
    rss = {"key": "optimizer_rss", "target": "peak RSS reduced by >= 80% of the optimizer state's size",
           "threshold": 0.8}
    if not opt:
        for t in (step, rss):
            t.update(status="N/A", measured="no optimizer row in this run", worst=None)
        return [step, rss]
    r = opt[0]
    step.update(status="PASS" if r["bound_ratio"] <= 1.2 else "MISS", worst=r["bound_ratio"],
                measured=f"{r['bound_ratio']:.2f}x ({r['s_per_step_offload']:.3f} s against compute "
                         f"{r['s_per_step_plain']:.3f} s, I/O {r['io_s_per_step']:.3f} s at {r['io_peer']} speed)")
    rss.update(status="PASS" if r["rss_reduction_of_state"] >= 0.8 else "MISS", worst=r["rss_reduction_of_state"],
               measured=f"{r['rss_reduction_of_state'] * 100:.0f}% of {format_size(r['state_bytes'])}")
    return [step, rss]
