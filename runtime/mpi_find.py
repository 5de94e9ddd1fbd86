"""Find the MPI installation hauler works with, without initializing MPI.

Order (fixed): ``$HAULER_MPICC`` > ``$MPICC`` > ``mpicc`` on PATH. A variable
that is set but names no executable is an error (it is never skipped silently).
The vendor is read from the compiler wrapper itself (``--showme:version`` for
Open MPI, ``-v`` for MPICH and its derivatives); ``mpi4py.MPI`` is never
imported here (that would call MPI_Init).

Vendor quirks (launcher flags and environment) are declared once, in
``VENDOR_QUIRKS``; use :func:`mpiexec_argv` and :func:`mpiexec_env` to launch
``mpiexec -n N`` jobs.

Standard library only: setup.py loads this file by path.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

__all__ = ["MpiCompiler", "MpiNotFound", "find_mpicc", "install_hint", "find_mpiexec",
           "mpiexec_argv", "mpiexec_env", "VENDOR_QUIRKS", "APT_PACKAGES"]

OPEN_MPI = "Open MPI"
MPICH = "MPICH"

# Debian packages per vendor (the install hint names the default, Open MPI).
APT_PACKAGES: Dict[str, Tuple[str, ...]] = {
    OPEN_MPI: ("openmpi-bin", "libopenmpi-dev"),
    MPICH: ("mpich", "libmpich-dev"),
}

# Launcher quirks, in one place.
#   args:      always passed to mpiexec
#   root_args: passed when running as root (Open MPI refuses root otherwise)
#   env:       added to the job's environment
VENDOR_QUIRKS: Dict[str, Dict[str, object]] = {
    OPEN_MPI: {
        # 2-core machines run 3-4 ranks; no network: keep to shared memory + loopback.
        "args": ["--oversubscribe", "--bind-to", "none"],
        "root_args": ["--allow-run-as-root"],
        "env": {
            "OMPI_MCA_btl": "self,vader,tcp",
            "OMPI_MCA_btl_tcp_if_include": "lo",
            "OMPI_MCA_oob_tcp_if_include": "lo",
            # containers often forbid process_vm_readv (CMA)
            "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
            "OMPI_MCA_rmaps_base_oversubscribe": "1",
        },
    },
    MPICH: {
        "args": [],
        "root_args": [],
        "env": {"HYDRA_IFACE": "lo"},
    },
}


class MpiNotFound(FileNotFoundError):
    """A named MPI compiler or launcher that does not exist; the message says which."""


@dataclass(frozen=True)
class MpiCompiler:
    path: str                 # absolute path of the wrapper as found
    vendor: str               # "Open MPI", "MPICH", "MVAPICH", "Intel MPI" or "unknown"
    version_line: str         # the wrapper's own vendor/version line
    origin: str               # "HAULER_MPICC", "MPICC" or "PATH"
    show: str = ""            # the underlying compile line (mpicc -show)
    args: Tuple[str, ...] = field(default=())   # extra words given in the variable

    def as_dict(self) -> Dict[str, object]:
        return {"path": self.path, "vendor": self.vendor, "version_line": self.version_line,
                "origin": self.origin, "show": self.show}


def _run(argv: List[str], timeout: float = 20.0) -> Tuple[int, str]:
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return -1, str(e)
    return p.returncode, p.stdout.decode("utf-8", "replace")


def _resolve(word: str) -> Optional[str]:
    if os.sep in word:
        return os.path.abspath(word) if os.path.isfile(word) and os.access(word, os.X_OK) else None
    found = shutil.which(word)
    return os.path.abspath(found) if found else None


def _vendor(path: str, args: Tuple[str, ...]) -> Tuple[str, str]:
    rc, out = _run([path, *args, "--showme:version"])
    if rc == 0 and "Open MPI" in out:
        return OPEN_MPI, out.strip().splitlines()[0]
    rc, out = _run([path, *args, "-v"])
    for line in out.splitlines():
        if "MVAPICH" in line:
            return "MVAPICH", line.strip()
        if "Intel(R) MPI" in line:
            return "Intel MPI", line.strip()
        if "MPICH" in line:
            return MPICH, line.strip()
    return "unknown", ""


def find_mpicc() -> Optional[MpiCompiler]:
    """The MPI C compiler per HAULER_MPICC > MPICC > PATH, with its vendor; None if
    there is none. Raises MpiNotFound if a variable names a compiler that does not exist."""
    for origin in ("HAULER_MPICC", "MPICC"):
        value = os.environ.get(origin, "").strip()
        if not value:
            continue
        words = shlex.split(value)
        path = _resolve(words[0])
        if path is None:
            raise MpiNotFound(f"{origin}={value!r}: no executable named {words[0]!r}; "
                              f"unset it or point it at an MPI C compiler wrapper")
        break
    else:
        origin, words = "PATH", ["mpicc"]
        path = _resolve("mpicc")
        if path is None:
            return None
    args = tuple(words[1:])
    vendor, line = _vendor(path, args)
    rc, show = _run([path, *args, "-show"])
    return MpiCompiler(path=path, vendor=vendor, version_line=line, origin=origin,
                       show=show.strip() if rc == 0 else "", args=args)


def install_hint(vendor: str = OPEN_MPI) -> str:
    """The exact command that installs MPI (Open MPI by default) on Debian/Ubuntu."""
    pkgs = " ".join(APT_PACKAGES.get(vendor, APT_PACKAGES[OPEN_MPI]))
    prefix = "" if hasattr(os, "geteuid") and os.geteuid() == 0 else "sudo "
    return f"{prefix}apt-get install -y {pkgs}"


def _launcher_vendor(path: str) -> str:
    rc, out = _run([path, "--version"])
    if "OpenRTE" in out or "Open MPI" in out or "open-mpi" in out:
        return OPEN_MPI
    if "HYDRA" in out or "MPICH" in out:
        return MPICH
    return "unknown"


def find_mpiexec(cc: Optional[MpiCompiler] = None) -> str:
    """The mpiexec that belongs to ``cc`` (default: find_mpicc()); MpiNotFound otherwise."""
    cc = cc or find_mpicc()
    if cc is None:
        raise MpiNotFound(f"no MPI found (HAULER_MPICC, MPICC, mpicc on PATH); "
                          f"install it with: {install_hint()}")
    base = os.path.basename(cc.path)
    suffix = base[len("mpicc"):] if base.startswith("mpicc") else ""
    names = [f"mpiexec{suffix}", f"mpirun{suffix}"]
    names += {OPEN_MPI: ["mpiexec.openmpi"], MPICH: ["mpiexec.mpich", "mpiexec.hydra"]}.get(
        cc.vendor, [])
    names += ["mpiexec", "mpirun"]
    dirs = [os.path.dirname(cc.path)] + os.environ.get("PATH", "").split(os.pathsep)
    for d in dirs:
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                lv = _launcher_vendor(p)
                if lv == cc.vendor or cc.vendor == "unknown" or lv == "unknown":
                    return p
    raise MpiNotFound(f"no mpiexec matching {cc.path} ({cc.vendor}); "
                      f"install it with: {install_hint(cc.vendor)}")


def mpiexec_argv(n: int, cc: Optional[MpiCompiler] = None) -> List[str]:
    """``[mpiexec, -n, N, <vendor quirks>]``; append the program and its arguments."""
    cc = cc or find_mpicc()
    exe = find_mpiexec(cc)
    q = VENDOR_QUIRKS.get(cc.vendor if cc else "", {})
    argv = [exe, "-n", str(int(n))] + list(q.get("args", []))  # type: ignore[arg-type]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv += list(q.get("root_args", []))  # type: ignore[arg-type]
    return argv


def mpiexec_env(cc: Optional[MpiCompiler] = None, base: Optional[Dict[str, str]] = None
                ) -> Dict[str, str]:
    """``base`` (default os.environ) plus the vendor's launcher environment."""
    cc = cc or find_mpicc()
    env = dict(os.environ if base is None else base)
    q = VENDOR_QUIRKS.get(cc.vendor if cc else "", {})
    for k, v in q.get("env", {}).items():  # type: ignore[union-attr]
        env.setdefault(k, v)
    return env
