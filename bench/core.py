"""The benchmark core: timing, machine description, output formatting.

Every ``hauler-bench`` subcommand is a thin layer over this module (the UCX /
nccl-tests / OSU habit): it builds a :class:`Report` -- a ``#`` header echoing
the configuration, versions and machine, one row per case with units, a
correctness column, optional ``# WARNING`` banners and a ``# targets`` block --
and :func:`emit` prints it as an aligned table, or as JSON / CSV when asked.

Nothing here imports ``mpi4py.MPI`` at import time (that would call MPI_Init);
:func:`mpi_info` imports it only when a benchmark that uses MPI calls it.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

__all__ = ["Timing", "time_call", "time_interleaved", "paired_ratio", "paired_ratios", "quartiles", "gbps", "parse_size", "format_size", "Column", "Report",
           "machine_info", "hauler_info", "mpi_info", "Output", "emit", "format_report", "usable_cores"]


# -- timing ---------------------------------------------------------------------------------------

@dataclass
class Timing:
    """Wall times (seconds) of the timed calls, after the warm-up calls."""
    times: List[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    def as_dict(self, nbytes: Optional[int] = None) -> Dict[str, Any]:
        d: Dict[str, Any] = {"median_s": self.median, "best_s": self.best, "times_s": self.times}
        if nbytes is not None:
            d["median_gbps"] = gbps(nbytes, self.median)
            d["best_gbps"] = gbps(nbytes, self.best)
        return d


PROGRAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs")


def program_path(name: str) -> str:
    """A benchmark program shipped with hauler.bench (setup.py's package_data): its path."""
    path = os.path.join(PROGRAMS, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"hauler.bench's program {name!r} is missing from {PROGRAMS} "
                                "(an install without setup.py's package_data?); reinstall hauler")
    return path


def time_call(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeat`` times timed (perf_counter)."""
    return time_interleaved({"fn": fn}, repeat, warmup)["fn"]


def time_interleaved(fns: Dict[str, Callable[[], Any]], repeat: int = 5, warmup: int = 1) -> Dict[str, Timing]:
    """Time several contenders in rounds: each round calls every one once, back to back (in an
    order rotated from round to round), so a slow phase of a noisy machine hits all of them
    alike. ``Timing.times[i]`` of every contender comes from round i; compare contenders with
    :func:`paired_ratio`. Each contender is first called ``warmup`` times untimed."""
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    names = list(fns)
    for name in names:
        for _ in range(max(warmup, 0)):
            fns[name]()
    times: Dict[str, List[float]] = {n: [] for n in names}
    for i in range(repeat):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            fn = fns[name]
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {n: Timing(t) for n, t in times.items()}


def paired_ratios(first: Timing, second: Timing) -> List[float]:
    """second_time / first_time of each round: how many times the first contender's bandwidth
    is the second's, each round compared with itself."""
    return [b / a if a > 0 else float("inf") for a, b in zip(first.times, second.times)]


def paired_ratio(first: Timing, second: Timing) -> float:
    """The median of :func:`paired_ratios`."""
    return statistics.median(paired_ratios(first, second))


def quartiles(values: Sequence[float]) -> Tuple[float, float]:
    """(first, third) quartile; both the value itself for one value."""
    if len(values) < 2:
        return (values[0], values[0])
    q = statistics.quantiles(values, n=4, method="inclusive")
    return (q[0], q[2])


def gbps(nbytes: int, seconds: float) -> float:
    """Decimal GB/s (1 GB = 1e9 bytes)."""
    return nbytes / seconds / 1e9 if seconds > 0 else float("inf")


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'64M', '64MiB', '8m', '4096', '1.5G' -> bytes (binary multiples: K = 1024)."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 64K, 8M, 1G)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 1:
        raise ValueError(f"size must be at least 1 byte: {text!r}")
    return int(value)


def format_size(n: int) -> str:
    """Bytes in the shortest exact binary form: 1, 12, 1K, 64K, 8M, 1536K."""
    for unit, mult in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


# -- machine and versions -------------------------------------------------------------------------

def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Processor", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info() -> Dict[str, Any]:
    mem = _memory_bytes()
    return {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores_usable": usable_cores(),
        "cores_os": os.cpu_count(),
        "memory_bytes": mem,
        "memory": f"{mem / (1 << 30):.1f} GiB" if mem else "unknown",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def hauler_info() -> Dict[str, Any]:
    """hauler's version, core path, build info (when setup.py built it), CUDA status, threads."""
    import hauler
    from hauler import _core
    info: Dict[str, Any] = {"version": hauler.__version__,
                            "core": getattr(_core, "__file__", None),
                            "threads_default": int(_core.threads()),
                            "cuda_available": bool(hauler.cuda_available()),
                            "cuda_status": str(hauler.cuda_status())}
    from hauler import _build
    build = _build.read()["info"]
    info["build"] = build
    core_build = (build or {}).get("core", {}) if isinstance(build, dict) else {}
    if core_build:
        info["build_summary"] = (f"{core_build.get('compiler_version', '?')}: "
                                 f"{' '.join(core_build.get('flags', []))}").strip()
    else:
        info["build_summary"] = "no _build_info.json (not built by setup.py)"
    try:
        import numpy
        info["numpy"] = numpy.__version__
    except ImportError:
        info["numpy"] = None
    return info


def mpi_info() -> Dict[str, Any]:
    """Imports mpi4py.MPI (which initializes MPI): call it only from a benchmark that uses MPI.

    Returns {'available': False, 'error': ...} when mpi4py or its MPI library is missing."""
    try:
        import mpi4py
        from mpi4py import MPI
    except Exception as e:  # ImportError, or a broken MPI library behind mpi4py
        return {"available": False, "error": f"{type(e).__name__}: {e}", "mpi4py": _mpi4py_version()}
    lib = MPI.Get_library_version().replace("\0", "").strip()  # Open MPI's ends in a NUL
    return {"available": True, "error": None, "mpi4py": mpi4py.__version__,
            "library": lib.splitlines()[0].strip() if lib else "unknown",
            "standard": "%d.%d" % MPI.Get_version()}


def _mpi4py_version() -> Optional[str]:
    try:
        import mpi4py
        return mpi4py.__version__
    except Exception:
        return None


# -- reports and output ---------------------------------------------------------------------------

@dataclass
class Column:
    key: str            # key in each row dict
    title: str          # header line 1
    unit: str = ""      # header line 2, e.g. "GB/s", "(x)", "B"
    fmt: Any = "{}"     # format string or callable; None values print as "-"
    left: bool = False  # left-align (names)
    width: int = 0      # minimum width (rows are printed as they come, so widths are fixed)


@dataclass
class Report:
    """One benchmark's result: header lines, rows, banners and targets."""
    benchmark: str
    config: Dict[str, Any]
    header: List[Tuple[str, str]]                 # ("label", "text") pairs for the '#' header
    columns: List[Column]
    rows: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    targets: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)        # extra '#' lines after the header
    footer: List[str] = field(default_factory=list)       # '#' lines before the targets
    info: Dict[str, Any] = field(default_factory=dict)    # machine/versions, for --json

    def as_dict(self) -> Dict[str, Any]:
        return {"benchmark": self.benchmark, "config": self.config, "info": self.info,
                "warnings": self.warnings, "notes": self.notes + self.footer, "rows": self.rows,
                "targets": self.targets}


def _cell(col: Column, row: Dict[str, Any]) -> str:
    v = row.get(col.key)
    if v is None:
        return "-"
    try:
        return col.fmt(v) if callable(col.fmt) else col.fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def _header_lines(rep: Report) -> List[str]:
    lines = [f"# hauler-bench {rep.benchmark}"]
    width = max((len(k) for k, _ in rep.header), default=0)
    lines += [f"# {k:<{width}}  {v}" for k, v in rep.header]
    lines += [f"# {n}" for n in rep.notes]
    for w in rep.warnings:
        lines += ["# " + "!" * 78, f"# WARNING: {w}", "# " + "!" * 78]
    return lines


def _target_lines(rep: Report) -> List[str]:
    if not rep.targets:
        return []
    lines = ["# targets (a report of this run, not a test)"]
    for t in rep.targets:
        lines.append(f"#   {t['status']:<4}  {t['target']}: {t['measured']}")
    return lines


def _widths(cols: Sequence[Column]) -> List[int]:
    return [max(len(c.title), len(c.unit), c.width) for c in cols]


def _line(values: Sequence[str], cols: Sequence[Column], widths: Sequence[int], prefix: str) -> str:
    parts = [v.ljust(w) if c.left else v.rjust(w) for v, w, c in zip(values, widths, cols)]
    return (prefix + "  ".join(parts)).rstrip()


class Output:
    """Prints a report as it is made: the header first, each row when it is measured (a long
    run shows progress), the targets last. JSON is printed whole at the end."""

    def __init__(self, fmt: str = "table", stream: Optional[TextIO] = None):
        if fmt not in ("table", "json", "csv"):
            raise ValueError(f"unknown output format {fmt!r}")
        self.fmt = fmt
        self.stream = stream or sys.stdout
        self._warned = 0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def begin(self, rep: Report) -> None:
        if self.fmt == "json":
            return
        lines = _header_lines(rep)
        self._warned = len(rep.warnings)
        if self.fmt == "table":
            w = _widths(rep.columns)
            lines.append(_line([c.title for c in rep.columns], rep.columns, w, "# "))
            lines.append(_line([c.unit for c in rep.columns], rep.columns, w, "# "))
        else:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="").writerow([c.key for c in rep.columns])
            lines.append(buf.getvalue())
        self._write("\n".join(lines) + "\n")

    def row(self, rep: Report, row: Dict[str, Any]) -> None:
        if self.fmt == "table":
            self._write(_line([_cell(c, row) for c in rep.columns], rep.columns, _widths(rep.columns), "  ")
                        + "\n")
        elif self.fmt == "csv":
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow(
                ["" if row.get(c.key) is None else row.get(c.key) for c in rep.columns])
            self._write(buf.getvalue())

    def end(self, rep: Report) -> None:
        if self.fmt == "json":
            json.dump(rep.as_dict(), self.stream, indent=1, default=str)
            self._write("\n")
            return
        lines = []
        for w in rep.warnings[self._warned:]:
            lines += ["# " + "!" * 78, f"# WARNING: {w}", "# " + "!" * 78]
        lines += [f"# {f}" for f in rep.footer]
        lines += _target_lines(rep)
        if lines:
            self._write("\n".join(lines) + "\n")


def emit(rep: Report, fmt: str = "table", stream: Optional[TextIO] = None) -> None:
    """Print a finished report as 'table' (default), 'json' or 'csv'."""
    out = Output(fmt, stream)
    out.begin(rep)
    for r in rep.rows:
        out.row(rep, r)
    out.end(rep)


def format_report(rep: Report, fmt: str = "table") -> str:
    buf = io.StringIO()
    emit(rep, fmt, buf)
    return buf.getvalue()


# -- argparse types shared by the benchmarks -------------------------------------------------------

def list_arg(allowed: Sequence[str]) -> Callable[[str], Tuple[str, ...]]:
    def parse(text: str) -> Tuple[str, ...]:
        items = tuple(t.strip() for t in text.split(",") if t.strip())
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)} (comma-separated), got {text!r}")
        return items
    return parse

def add_format_args(p: argparse.ArgumentParser) -> None:
    """--json / --csv, one of them at most; output_of(args) turns them into an Output."""
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    fmt.add_argument("--csv", action="store_true", help="print CSV rows (with the '#' header) instead of the table")


def output_of(args: argparse.Namespace) -> Output:
    return Output("json" if args.json else "csv" if args.csv else "table")


MPI_FLAVOURS = ("openmpi", "mpich")


def mpi_flavours(text: str) -> str:
    """argparse type of --mpi: "all" or a comma-separated list of MPI_FLAVOURS."""
    names = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in names if f not in MPI_FLAVOURS]
    if text.strip() != "all" and (bad or not names):
        raise argparse.ArgumentTypeError(f"choose all or any of {', '.join(MPI_FLAVOURS)} (comma-separated), "
                                         f"got {text!r}")
    return text.strip()


def flavours_arg(text: str) -> Optional[List[str]]:
    """--mpi: "all" (None: every installed flavour) or a comma-separated list."""
    return None if text == "all" else [f.strip() for f in text.split(",") if f.strip()]


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None

def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return v


def readable_file(text: str) -> str:
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"no readable file {text!r}")
    return text


def non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}")
    return v


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v
