"""Finding and launching with the LD_PRELOAD MPI interposer (libhauler_interpose.so).

setup.py builds one library per MPI flavour it finds (``interpose/<flavour>/`` next to the
``_core`` extension) and records them in ``_build_info.json``. ``launch_argv`` picks the one
that matches the launcher's flavour and injects it the way that launcher needs:

    Open MPI:     mpiexec -x LD_PRELOAD=<lib> ...
    MPICH/Hydra:  mpiexec -genv LD_PRELOAD <lib> ...

Standard library only; never imports mpi4py.MPI.
"""
from __future__ import annotations

import os
import shutil
from typing import Dict, List, Optional

from . import _build, mpi_find

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


def flavour_of_launcher(launcher: str) -> str:
    """"openmpi", "mpich" or "unknown" for an mpiexec/mpirun path or name."""
    path = shutil.which(launcher) or launcher
    base = os.path.basename(path)
    for flav in ("openmpi", "mpich"):
        if base.endswith("." + flav):
            return flav
    return FLAVOURS.get(mpi_find._launcher_vendor(path), "unknown")


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


def launch_argv(launcher: str, launcher_args: List[str], program: List[str],
                env: Optional[Dict[str, str]] = None) -> List[str]:
    """The command line that runs ``program`` under ``launcher`` with the shim preloaded."""
    flav = flavour_of_launcher(launcher)
    lib = library_path(flav if flav != "unknown" else None)
    pre = (env if env is not None else os.environ).get("LD_PRELOAD", "").strip()
    value = f"{lib}:{pre}" if pre else lib
    if flav == "mpich":
        inject = ["-genv", "LD_PRELOAD", value]
    else:  # Open MPI (and the unknown case, which is most often Open MPI's mpirun)
        inject = ["-x", f"LD_PRELOAD={value}"]
    return [launcher] + inject + list(launcher_args) + list(program)
