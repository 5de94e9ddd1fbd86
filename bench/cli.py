"""The ``hauler-bench`` command: a thin layer over the benchmark modules.

    hauler-bench pack [--size 8M] [--threads N] [--repeat R] [--json | --csv] [--quick] ...

Each subcommand is a module of ``hauler.bench`` with ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``main(args) -> int``; add a benchmark by adding
its module to ``COMMANDS``. Modules load only when their subcommand runs, so
``hauler-bench --help`` imports neither numpy nor mpi4py.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from typing import List, Optional

# subcommand -> (module, one-line help)
COMMANDS = {
    "pack": ("hauler.bench.pack",
             "datatype pack/unpack GB/s: vector and subarray types vs MPI_Pack (mpi4py) and memcpy"),
    "gather": ("hauler.bench.gather",
               "row gather GB/s: hauler vs numpy.take, torch.index_select, torch indexing and memcpy; DataLoader epoch"),
    "calibrate": ("hauler.bench.calibrate",
                  "measure when the MPI interposer's packing pays; write its model file (HAULER_INTERPOSE_MODEL)"),
    "mpi": ("hauler.bench.mpi",
            "MPI ping-pong (vector types) and 3D halo exchange: the library alone vs with hauler's interposer"),
    "io": ("hauler.bench.io",
           "file I/O GB/s: hauler.io (io_uring, O_DIRECT) vs fio, numpy, torch and Python; activation offload"),
    "kv": ("hauler.bench.kv",
           "KV-cache block gather/scatter/copy and swap to host/SSD: hauler.kv vs per-block loops, torch, memcpy, fio"),
    "all": ("hauler.bench.all",
            "every benchmark (pack, mpi, gather, io, kv): JSON, CSV, a PASS/MISS summary of the targets and "
            "plots in one folder (--out DIR)"),
}


def _version() -> str:
    try:
        from hauler._version import __version__
    except ImportError:
        return "unknown"
    return __version__


def build_parser(argv: List[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hauler-bench",
        description="hauler microbenchmarks: a '#' header (config, versions, machine), one row per "
                    "case with units and a correctness column, ratios against peers measured in "
                    "the same run; --json or --csv for machines.")
    parser.add_argument("--version", action="version", version=f"hauler-bench {_version()}")
    _add_output(parser)
    sub = parser.add_subparsers(dest="command", metavar="BENCHMARK")
    # only the chosen subcommand's module is imported (its options need it)
    chosen = _benchmark_named(argv)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            _add_output(p)
            p.set_defaults(func=mod.main)
    return parser


def _benchmark_named(argv: List[str]) -> Optional[str]:
    """The first word that is not an option nor the value of --output."""
    it = iter(argv)
    for a in it:
        if a == "--output":
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


def _add_output(p: argparse.ArgumentParser) -> None:
    # before or after the benchmark's name, as fio takes --output anywhere
    p.add_argument("--output", metavar="FILE", default=argparse.SUPPRESS,
                   help="write the report (table, --json or --csv) to FILE instead of stdout; "
                        "progress and errors stay on stderr")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        output = getattr(args, "output", None)
        if output is None:
            return int(args.func(args))
        with open(output, "w") as f, contextlib.redirect_stdout(f):
            return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into head
        return 0


if __name__ == "__main__":
    sys.exit(main())
