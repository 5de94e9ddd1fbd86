"""Finding and launching with the LD_PRELOAD MPI interposer (libhauler_interpose.so).

setup.py builds one library per MPI flavour it finds (``interpose/<flavour>/`` next to the
``_core`` extension) and records them in ``_build_info.json``. ``choose`` picks the one built for
the MPI library the program loads (its ELF DT_NEEDED, or mpi4py's for a Python program; the
launcher's flavour only when that cannot be told); ``launch_argv`` injects it the way the launcher
needs, with every HAULER_* setting of the caller's environment (remote ranks see only what the
launcher passes) and the user's own LD_PRELOAD after the shim:

    Open MPI (4, 5), prterun:  mpiexec -x LD_PRELOAD=<lib> -x HAULER_X=... ...
    MPICH/Hydra:               mpiexec -genv LD_PRELOAD <lib> -genv HAULER_X ... ...
    Slurm:                     srun --export=ALL,LD_PRELOAD=<lib>,HAULER_X=... ...

Standard library only; never imports mpi4py.MPI.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from typing import Dict, List, Optional, Tuple

from . import _build, errors, mpi_find

LIB = "libhauler_interpose.so"
FLAVOURS = {mpi_find.OPEN_MPI: "openmpi", mpi_find.MPICH: "mpich"}


class InterposeNotBuilt(FileNotFoundError):
    """No interposer library for the MPI asked for; the message says why and what to install."""


def libraries() -> Dict[str, str]:
    """{flavour: absolute library path} for every interposer the build made and that exists."""
    d = _build.core_dir()
    out: Dict[str, str] = {}
    try:
        info = (_build.read(d)["info"] or {}).get("interpose") or {}
        for flav, lib in (info.get("libraries") or {}).items():
            p = os.path.join(d, lib["library"])
            if os.path.isfile(p):
                out[flav] = p
    except (AttributeError, KeyError, TypeError):  # a build info of another shape: what is on disk counts
        pass
    base = os.path.join(d, "interpose")
    if os.path.isdir(base):  # also what is on disk (a build info from elsewhere)
        for flav in sorted(os.listdir(base)):
            p = os.path.join(base, flav, LIB)
            if os.path.isfile(p):
                out.setdefault(flav, p)
    return out


# How each launcher hauler knows sets an environment variable in every rank, local or remote.
LAUNCHERS = {
    "openmpi": "Open MPI's mpiexec/mpirun (4.x) and PRRTE's prterun, Open MPI 5's mpirun: -x NAME=VALUE",
    "mpich": "MPICH's Hydra mpiexec, mpiexec.hydra, mpirun: -genv NAME VALUE",
    "srun": "Slurm's srun: --export=ALL,NAME=VALUE,...",
}


class UnknownLauncher(errors.InvalidArgument):
    """A launcher hauler does not know how to pass LD_PRELOAD through; the message lists the known ones."""


def launcher_kind(launcher: str) -> str:
    """"openmpi", "mpich", "srun" or "unknown": how ``launcher`` (a name or path) passes environment
    variables to its ranks. By name first (srun, prterun, *.openmpi, *.mpich, *.hydra), then by
    what ``launcher --version`` says."""
    path = shutil.which(launcher) or launcher
    base = os.path.basename(path)
    if base == "srun":
        return "srun"
    if base in ("prterun", "prun"):
        return "openmpi"
    for suffix, kind in ((".openmpi", "openmpi"), (".mpich", "mpich"), (".hydra", "mpich")):
        if base.endswith(suffix):
            return kind
    return FLAVOURS.get(mpi_find._launcher_vendor(path), "unknown")


def flavour_of_launcher(launcher: str) -> str:
    """"openmpi", "mpich" or "unknown" (srun, and launchers hauler does not know) for an mpiexec/mpirun."""
    kind = launcher_kind(launcher)
    return kind if kind in ("openmpi", "mpich") else "unknown"


def elf_needed(path: str) -> List[str]:
    """The DT_NEEDED entries of a 64-bit little-endian ELF file; [] for anything else (a script,
    a static program, another format). Only reads the file: nothing is loaded or run."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    if data[:6] != b"\x7fELF\x02\x01" or len(data) < 64:
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = []
    for i in range(shnum):
        at = shoff + i * shentsize
        if at + 64 > len(data):
            return []
        sh_type, = struct.unpack_from("<I", data, at + 4)
        sh_offset, sh_size = struct.unpack_from("<QQ", data, at + 0x18)
        sh_link, = struct.unpack_from("<I", data, at + 0x28)
        sections.append((sh_type, sh_offset, sh_size, sh_link))
    out = []
    for sh_type, off, size, link in sections:
        if sh_type != 6 or link >= len(sections):  # SHT_DYNAMIC; its sh_link is the string table
            continue
        stroff = sections[link][1]
        for at in range(off, min(off + size, len(data) - 15), 16):
            tag, val = struct.unpack_from("<qQ", data, at)
            if tag == 0:  # DT_NULL
                break
            if tag == 1:  # DT_NEEDED
                end = data.find(b"\0", stroff + val)
                out.append(data[stroff + val:end].decode("utf-8", "replace"))
    return out


# sonames of each flavour's C library: Open MPI's libmpi.so.40 (4.x and 5.x), MPICH's libmpich.so.12
# and the MPICH ABI's libmpi.so.12 (Intel MPI, MVAPICH, Cray)
_SONAMES = (("libmpi.so.40", "openmpi"), ("libmpich.so", "mpich"), ("libmpi.so.12", "mpich"))


def _flavour_of_needed(needed: List[str]) -> Optional[str]:
    for name in needed:
        for prefix, flav in _SONAMES:
            if name.startswith(prefix):
                return flav
    return None


def _mpi4py_extension(python: str) -> Optional[str]:
    """The path of mpi4py's MPI extension module for interpreter ``python`` (found without
    importing mpi4py.MPI, which would initialize MPI), or None."""
    code = ("import importlib.util as u, sys\n"
            "s = u.find_spec('mpi4py.MPI')\n"
            "sys.stdout.write(s.origin if s and s.origin else '')\n")
    try:
        p = subprocess.run([python, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    origin = p.stdout.decode("utf-8", "replace").strip()
    return origin or None


def program_flavour(program: List[str]) -> Tuple[Optional[str], str]:
    """(flavour, why) of the MPI library ``program`` loads: from the DT_NEEDED entries of its
    executable or, when it is a Python interpreter, of mpi4py's MPI extension module. (None, why)
    when it cannot be told (a static program, a script, no mpi4py)."""
    exe = shutil.which(program[0]) or program[0]
    needed = elf_needed(exe)
    flav = _flavour_of_needed(needed)
    if flav:
        return flav, f"{program[0]} needs {next(n for n in needed if _flavour_of_needed([n]))}"
    if os.path.basename(exe).startswith("python"):
        ext = _mpi4py_extension(exe)
        if ext:
            needed = elf_needed(ext)
            flav = _flavour_of_needed(needed)
            if flav:
                return flav, f"mpi4py ({ext}) needs {next(n for n in needed if _flavour_of_needed([n]))}"
            return None, f"mpi4py ({ext}) names no MPI library hauler knows"
        return None, f"{program[0]} has no mpi4py"
    return None, f"{program[0]} names no MPI library hauler knows (static or a script?)"


def library_path(flavour: Optional[str] = None) -> str:
    """The interposer for ``flavour`` (default: the flavour of the MPI found by find_mpicc)."""
    libs = libraries()
    if not libs:
        raise InterposeNotBuilt("no libhauler_interpose.so was built (no MPI at build time?); install "
                                f"MPI ({mpi_find.install_hint()}) and reinstall hauler")
    if flavour is None:
        try:
            cc = mpi_find.find_mpicc()
        except mpi_find.MpiNotFound:
            cc = None
        flavour = FLAVOURS.get(cc.vendor, None) if cc else None
        if flavour is None or flavour not in libs:
            flavour = next(iter(libs))
    if flavour not in libs:
        raise InterposeNotBuilt(f"no interposer built for MPI flavour {flavour!r}; built: "
                                f"{', '.join(sorted(libs))}")
    return libs[flavour]


def default_model_path() -> str:
    """Where `hauler-bench calibrate` writes the shim's model, and where the shim looks for one when
    HAULER_INTERPOSE_MODEL is unset: $XDG_CONFIG_HOME/hauler/interpose-model.txt, else
    ~/.config/hauler/interpose-model.txt (interpose/settings.cpp's default_model_path says the same)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "hauler", "interpose-model.txt")


def model_in_effect(env: Optional[Dict[str, str]] = None) -> Optional[str]:
    """The model file the shim will read under `env` (default os.environ), or None: built-in."""
    env = os.environ if env is None else env
    named = env.get("HAULER_INTERPOSE_MODEL", "").strip()  # spaced as the shim parses it
    if named:
        return None if named == "builtin" else named
    path = default_model_path()
    return path if os.path.isfile(path) else None


def default_launcher() -> str:
    return mpi_find.find_mpiexec()


def choose(launcher: str, program: List[str]) -> Tuple[str, str, str]:
    """(flavour, library, why): the shim for the MPI ``program`` loads, else for the launcher's."""
    flav, why = program_flavour(program)
    if flav is None:
        launcher_flav = flavour_of_launcher(launcher)
        flav = launcher_flav if launcher_flav != "unknown" else None
        why += f"; going by the launcher ({launcher_flav})"
    lib = library_path(flav)
    return flav or os.path.basename(os.path.dirname(lib)), lib, why


def launch_argv(launcher: str, launcher_args: List[str], program: List[str],
                env: Optional[Dict[str, str]] = None, lib: Optional[str] = None) -> List[str]:
    """The command line that runs ``program`` under ``launcher`` with the shim preloaded (``lib``,
    default the one ``choose`` picks)."""
    kind = launcher_kind(launcher)
    if kind == "unknown":
        raise UnknownLauncher(
            f"hauler does not know how launcher {launcher!r} passes environment variables to its ranks; "
            "known: " + "; ".join(LAUNCHERS.values()) + ". With another launcher, put the shim in the "
            "ranks' LD_PRELOAD yourself: LD_PRELOAD=$(hauler interpose --path --mpi openmpi|mpich)")
    if lib is None:
        lib = choose(launcher, program)[1]
    env = os.environ if env is None else env
    pre = env.get("LD_PRELOAD", "").strip()  # the user's own preloads stay, after the shim
    # LD_PRELOAD, then every HAULER_* setting: a remote rank sees only what the launcher passes
    pairs = [("LD_PRELOAD", f"{lib}:{pre}" if pre else lib)]
    pairs += sorted((k, v) for k, v in env.items() if k.startswith("HAULER_"))
    inject: List[str] = []
    if kind == "srun":
        bad = [k for k, v in pairs if "," in v]
        if bad:
            raise errors.InvalidArgument(f"srun --export cannot carry a ',' in a value: {', '.join(bad)}")
        inject = ["--export=" + ",".join(["ALL"] + [f"{k}={v}" for k, v in pairs])]
    for k, v in pairs if kind != "srun" else []:
        inject += ["-genv", k, v] if kind == "mpich" else ["-x", f"{k}={v}"]
    return [launcher] + inject + list(launcher_args) + list(program)
