"""The ``hauler`` command.

    hauler info [--json]    version, build options, CUDA status, MPI found, cores, settings
    hauler run [--launcher MPIEXEC] [launcher options] -- program args...
                            run an MPI job with the interposer preloaded (LD_PRELOAD)
    hauler interpose --path [--mpi openmpi|mpich]
                            print the interposer library path (for batch scripts, srun)
    hauler shm [--clean] [--dir DIR]
                            list this user's shared feature tables in /dev/shm (pid, bytes,
                            alive or stale); --clean removes those whose process is gone

Imports stay lazy: the command works (and says what is wrong) even when the
compiled core ``hauler._core`` cannot be imported, and it never imports
``mpi4py.MPI`` (that would initialize MPI).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
from typing import Any, Dict, List, Optional

from . import _build, config, errors, interpose, mpi_find
from ._version import __version__



def _core_status() -> Dict[str, Any]:
    try:
        mod = importlib.import_module("hauler._core")
    except ImportError as e:
        return {"importable": False, "path": None,
                "error": f"hauler._core cannot be imported ({e}); rebuild with "
                         f"'pip install -e .' or 'bash scripts/setup.sh'"}
    return {"importable": True, "path": getattr(mod, "__file__", None), "error": None}


def _cuda_status(core_ok: bool) -> Dict[str, Any]:
    out: Dict[str, Any] = {"available": False, "status": None, "library": None,
                           "library_exists": False, "error": None}
    if not core_ok:
        out["error"] = "unknown: hauler._core cannot be imported"
        return out
    try:
        hauler = importlib.import_module("hauler")
        out["available"] = bool(hauler.cuda_available())
        out["status"] = str(hauler.cuda_status())
        out["library"] = str(importlib.import_module("hauler._core").cuda_library())  # the loader's search
        out["library_exists"] = os.path.isfile(out["library"])
    except Exception as e:  # a diagnostic command reports, it does not crash
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def _mpi_status() -> Dict[str, Any]:
    try:
        cc = mpi_find.find_mpicc()
    except mpi_find.MpiNotFound as e:
        return {"found": False, "error": str(e), "install_hint": mpi_find.install_hint()}
    if cc is None:
        return {"found": False, "error": "no MPI C compiler (HAULER_MPICC, MPICC, mpicc on PATH)",
                "install_hint": mpi_find.install_hint()}
    return {"found": True, "error": None, **cc.as_dict()}


def _settings() -> List[Dict[str, Any]]:
    rows = []
    for s in config.SETTINGS:
        row: Dict[str, Any] = {"name": s.name, "when": s.when, "default": s.doc_default,
                               "doc": s.doc, "source": None, "value": None, "error": None}
        try:
            v = config.get(s.name)
            row["value"] = list(v) if isinstance(v, tuple) else v
            row["source"] = config.source(s.name)
        except config.ConfigError as e:
            row["error"] = str(e)
        rows.append(row)
    return rows


def collect_info() -> Dict[str, Any]:
    d = _build.core_dir()
    core = _core_status()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "version": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "package_dir": os.path.dirname(os.path.abspath(__file__)),
        "core": core,
        "build": _build.read(d),
        "cuda": _cuda_status(core["importable"]),
        "mpi": _mpi_status(),
        "cores": {"os": os.cpu_count(), "usable": usable},
        "settings": _settings(),
    }


def _print_info(info: Dict[str, Any]) -> None:
    w = sys.stdout.write
    w(f"hauler {info['version']}\n")
    w(f"  python      {info['python']}\n")
    w(f"  package     {info['package_dir']}\n")
    core = info["core"]
    w(f"  core        {'hauler._core ' + str(core['path']) if core['importable'] else 'NOT IMPORTABLE: ' + core['error']}\n")

    b = info["build"]["info"]
    if b is None:
        w(f"  build       {info['build']['error']}\n")
    else:
        c = b.get("core", {})
        w(f"  build       {b.get('built_at')}  {'editable' if b.get('editable') else 'installed'}\n")
        w(f"  compiler    {c.get('compiler_version')}: {' '.join(c.get('flags', []))}\n")
        cu = b.get("cuda", {})
        if cu.get("built"):
            w(f"  cuda build  built for sm {','.join(cu.get('arch', []))} "
              f"with nvcc {cu.get('nvcc_version')} ({cu.get('nvcc')})\n")
        else:
            w(f"  cuda build  not built: {cu.get('reason')}\n")
        m = b.get("mpi", {})
        w(f"  mpi (build) {m.get('vendor') or 'none'} {m.get('path') or m.get('error') or ''}\n")
        ip = b.get("interpose") or {}
        if ip.get("built"):
            libs = ip.get("libraries", {})
            w(f"  interposer  built for {', '.join(sorted(libs))} (hauler interpose --list)\n")
        else:
            w(f"  interposer  not built: {ip.get('reason') or 'unknown (older build)'}\n")

    cu = info["cuda"]
    if cu["error"]:
        w(f"  cuda        status unknown: {cu['error']}\n")
    else:
        w(f"  cuda        {'available' if cu['available'] else 'not available'}: {cu['status']}\n")
    w(f"  cuda lib    {cu['library'] or 'unknown'} ({'present' if cu['library_exists'] else 'absent'})\n")

    m = info["mpi"]
    if m["found"]:
        w(f"  mpi         {m['vendor']}: {m['path']} (from {m['origin']})\n")
        if m.get("version_line"):
            w(f"              {m['version_line']}\n")
    else:
        w(f"  mpi         NOT FOUND: {m['error']}\n              install: {m['install_hint']}\n")
    w(f"  cores       {info['cores']['usable']} usable of {info['cores']['os']}\n")
    w("settings\n")
    for s in info["settings"]:
        if s["error"]:
            w(f"  {s['name']:<26} INVALID: {s['error']}\n")
        else:
            v = s["value"]
            v = ",".join(v) if isinstance(v, list) else ("unset" if v is None else v)
            if isinstance(v, bool):
                v = int(v)
            w(f"  {s['name']:<26} {str(v):<12} [{s['when']}, {s['source']}]\n")


def cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        _print_info(info)
    return 0


def cmd_interpose(args: argparse.Namespace) -> int:
    try:
        if args.list:
            for flav, path in sorted(interpose.libraries().items()):
                print(f"{flav} {path}")
            return 0
        print(interpose.library_path(args.mpi))
    except interpose.InterposeNotBuilt as e:
        sys.stderr.write(f"hauler interpose: {e}\n")
        return 1
    return 0


def cmd_shm(args: argparse.Namespace) -> int:
    from . import _gather_shm
    d = args.dir or _gather_shm.shm_dir()
    found = _gather_shm.tables(d)
    gone = {t["path"] for t in _gather_shm.remove_stale(d)} if args.clean else set()
    for t in found:
        state = "removed" if t["path"] in gone else ("alive" if t["alive"] else "stale")
        print(f"{t['path']}  pid {t['pid']}  {t['bytes']} bytes  {state}")
    stale = sum(1 for t in found if not t["alive"])
    print(f"{len(found)} shared table(s) of this user in {d}, {stale} of dead processes"
          + (f", {len(gone)} removed" if args.clean else (" (--clean removes them)" if stale else "")))
    return 0


RUN_USAGE = "usage: hauler run [--launcher MPIEXEC] [--dry-run] [launcher options] -- program args..."
RUN_HELP = f"""{RUN_USAGE}

Run an MPI job with hauler's interposer (libhauler_interpose.so) preloaded into every rank, so an
unchanged MPI program packs its derived datatypes with hauler's engine.

options (before '--'):
  --launcher MPIEXEC   the launcher to run (a name on PATH or a path); default: the mpiexec of the
                       MPI hauler finds (HAULER_MPICC > MPICC > PATH). Known: Open MPI's
                       mpiexec/mpirun/prterun (-x NAME=VALUE), MPICH's Hydra mpiexec
                       (-genv NAME VALUE), Slurm's srun (--export=ALL,NAME=VALUE); LD_PRELOAD
                       (yours kept after the shim) and every HAULER_* setting reach all ranks.
                       Another launcher is refused: use `hauler interpose --path` yourself.
                       The interposer is the one built for the MPI library the program loads
                       (its ELF DT_NEEDED; for Python, mpi4py's), named on stderr.
  --dry-run            print the command line that would run, and run nothing
  -h, --help           print this help and exit
  launcher options     anything else before '--' goes to the launcher unchanged (e.g. -n 4)

after '--': the program and its arguments.

example: hauler run -n 2 -- ./a.out input.dat    (see what it runs: add --dry-run)
"""


def cmd_run(argv: List[str]) -> int:
    """hauler run [--launcher L] [--dry-run] [launcher options] -- program args..."""
    # Only what comes before '--' is hauler's: the program may take -h itself.
    if {"-h", "--help"} & set(argv[:argv.index("--")] if "--" in argv else argv):
        sys.stdout.write(RUN_HELP)
        return 0
    if "--" not in argv:
        sys.stderr.write(RUN_USAGE + " (hauler run --help explains)\n")
        return 2
    cut = argv.index("--")
    opts, program = argv[:cut], argv[cut + 1:]
    if not program:
        sys.stderr.write("hauler run: no program after '--'\n")
        return 2
    launcher, dry = None, False
    rest: List[str] = []
    i = 0
    while i < len(opts):
        if opts[i] == "--launcher" and i + 1 < len(opts):
            launcher, i = opts[i + 1], i + 2
            continue
        if opts[i].startswith("--launcher="):
            launcher = opts[i].split("=", 1)[1]
        elif opts[i] == "--dry-run":
            dry = True
        else:
            rest.append(opts[i])
        i += 1
    try:
        launcher = launcher or interpose.default_launcher()
        if not dry and shutil.which(launcher) is None:
            sys.stderr.write(f"hauler run: launcher {launcher!r} not found or not executable "
                             f"(give one with --launcher, or put mpiexec on PATH)\n")
            return 127
        flav, lib, why = interpose.choose(launcher, program)
        cmd = interpose.launch_argv(launcher, rest, program, lib=lib)
    except (interpose.InterposeNotBuilt, mpi_find.MpiNotFound) as e:
        sys.stderr.write(f"hauler run: {e}\n")
        return 1
    except errors.InvalidArgument as e:  # a launcher hauler does not know, a value srun cannot carry
        sys.stderr.write(f"hauler run: {e}\n")
        return 2
    launcher_flav = interpose.flavour_of_launcher(launcher)
    sys.stderr.write(f"hauler run: MPI {flav} ({why}): shim {lib}; launcher {launcher} ({launcher_flav})\n")
    if launcher_flav not in ("unknown", flav):
        sys.stderr.write(f"hauler run: warning: the program loads {flav} but {launcher} is {launcher_flav}'s "
                         f"launcher; the ranks may not find each other\n")
    if dry:
        print(" ".join(cmd))
        return 0
    sys.stdout.flush()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:  # found above, yet refused (e.g. a bad interpreter line)
        sys.stderr.write(f"hauler run: cannot start {cmd[0]!r}: {e.strerror}\n")
        return 126
    return 127  # not reached


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # launcher options are free-form: not for argparse
        return cmd_run(argv[1:])
    parser = argparse.ArgumentParser(
        prog="hauler", description="hauler: moves data for GPU programs (see README.md and docs/).")
    parser.add_argument("--version", action="version", version=f"hauler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="version, build options, CUDA status, MPI found, "
                                    "core count and settings")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)
    sub.add_parser("run", help="run an MPI job with the interposer preloaded: "
                               "hauler run [--launcher MPIEXEC] [launcher options] -- prog args "
                               "(hauler run --help explains)")
    p = sub.add_parser("interpose", help="the LD_PRELOAD interposer library")
    p.add_argument("--path", action="store_true", help="print the library path (the default)")
    p.add_argument("--list", action="store_true", help="every flavour built, with its path")
    p.add_argument("--mpi", choices=["openmpi", "mpich"], default=None,
                   help="MPI flavour (default: that of the MPI found, HAULER_MPICC > MPICC > PATH)")
    p.set_defaults(func=cmd_interpose)
    p = sub.add_parser("shm", help="this user's shared feature tables in /dev/shm; --clean removes those "
                                   "of dead processes")
    p.add_argument("--clean", action="store_true", help="remove the tables whose process is gone")
    p.add_argument("--dir", default=None, help="where to look (default: /dev/shm)")
    p.set_defaults(func=cmd_shm)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        rc = int(args.func(args))
        sys.stdout.flush()
        return rc
    except BrokenPipeError:  # `hauler info | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
