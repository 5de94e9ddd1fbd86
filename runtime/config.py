"""hauler's settings: the ONE table of ``HAULER_*`` variables.

Every tunable has one default here, is overridable by its environment variable
and (run-time settings) by :func:`set` at run time. The README's settings table
is checked against this table by tests/test_config.py.

This module uses only the standard library and imports nothing from hauler, so
setup.py can load it by path before the package is built.

    from hauler import config
    config.get("HAULER_THREADS")         # env var parsed and validated, else the default
    config.set("HAULER_THREADS", 4)      # run-time override, also exported to os.environ
                                         # so the C++ core's getenv sees the same value
    config.set("HAULER_THREADS", None)   # back to the environment / default
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

__all__ = ["ConfigError", "Setting", "SETTINGS", "get", "set", "reset", "items",
           "settings", "setting", "source", "parse"]

BUILD = "build"
RUN = "run"


class ConfigError(ValueError):
    """A ``HAULER_*`` value that does not parse; the message names the variable and value."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any          # the parsed default (None: unset)
    type: str             # int | bytes | bool | str | path | arch | level
    when: str             # "build" or "run"
    doc: str              # one line

    @property
    def doc_default(self) -> str:
        """The default as the README writes it."""
        return _to_text(self, self.default) if self.default is not None else "unset"


_LEVELS = ("debug", "info", "warning", "error", "critical")

SETTINGS: Tuple[Setting, ...] = (
    Setting("HAULER_THREADS", 0, "int", RUN,
            "Threads for host pack/unpack; 0 = the number of cores."),
    Setting("HAULER_PACK_PARALLEL_MIN", 1048576, "bytes", RUN,
            "Messages smaller than this many bytes are packed by one thread."),
    Setting("HAULER_PACK_STREAM_MIN", 16777216, "bytes", RUN,
            "Packs of at least this many bytes write with non-temporal (cache-bypassing) stores."),
    Setting("HAULER_GATHER_THREADS", 0, "int", RUN,
            "Threads for host row gather/scatter; 0 = HAULER_THREADS (1 inside DataLoader workers)."),
    Setting("HAULER_GATHER_PARALLEL_MIN", 262144, "bytes", RUN,
            "Gathers/scatters moving fewer bytes than this run on one thread."),
    Setting("HAULER_GATHER_STREAM_MIN", 16777216, "bytes", RUN,
            "Gathers writing at least this many bytes use non-temporal stores (rows of 16n bytes)."),
    Setting("HAULER_GATHER_PREFETCH", 4096, "bytes", RUN,
            "Bytes of rows the host gather prefetches ahead (2 to 64 rows); 0 = no software prefetch."),
    Setting("HAULER_GATHER_GPU_BLOCKS", 0, "int", RUN,
            "Cap on thread blocks of the GPU gather kernel; 0 = 2 per multiprocessor."),
    Setting("HAULER_CUDA_LIB", None, "path", RUN,
            "Path of libhauler_cuda.so; unset = next to the hauler._core extension."),
    Setting("HAULER_MPICC", None, "path", RUN,
            "MPI C compiler to use; unset = $MPICC, then mpicc on PATH."),
    Setting("HAULER_LOG_LEVEL", "warning", "level", RUN,
            "Log level: debug, info, warning, error or critical."),
    Setting("HAULER_INTERPOSE", True, "bool", RUN,
            "MPI interposer master switch: 0 = every intercepted call goes straight to the library."),
    Setting("HAULER_INTERPOSE_PACK", True, "bool", RUN,
            "Interposer: MPI_Pack/MPI_Unpack run on hauler's engine."),
    Setting("HAULER_INTERPOSE_P2P", True, "bool", RUN,
            "Interposer: non-contiguous point-to-point messages are packed by hauler and sent as bytes."),
    Setting("HAULER_INTERPOSE_COLL", True, "bool", RUN,
            "Interposer: Alltoallv/w and neighbour forms pack non-contiguous per-peer pieces."),
    Setting("HAULER_INTERPOSE_GPU", True, "bool", RUN,
            "Interposer: non-contiguous messages on device buffers are packed by the GPU kernels (0 = the library gets them)."),
    Setting("HAULER_INTERPOSE_LOG", "warning", "level", RUN,
            "Interposer log level on stderr: debug, info, warning, error or critical."),
    Setting("HAULER_INTERPOSE_REPORT", None, "str", RUN,
            "Per-rank interposer report at MPI_Finalize: 1 = stderr, else a file path (%r = rank)."),
    Setting("HAULER_INTERPOSE_MODEL", None, "path", RUN,
            "Interposer model file (pack vs pass-through); unset = the one hauler-bench calibrate wrote "
            "($XDG_CONFIG_HOME or ~/.config, hauler/interpose-model.txt) if any, else built-in; builtin = built-in."),
    Setting("HAULER_IO_BACKEND", "auto", "str", RUN,
            "File I/O backend: auto (io_uring, else the thread pool, with a banner), io_uring or threads."),
    Setting("HAULER_IO_DIRECT", True, "bool", RUN,
            "1 = open files with O_DIRECT where the file system allows it; 0 = always buffered I/O."),
    Setting("HAULER_IO_QUEUE_DEPTH", 32, "int", RUN,
            "Tasks of one file request in flight at once (io_uring queue depth / pool tasks)."),
    Setting("HAULER_IO_TASK_SIZE", 1048576, "bytes", RUN,
            "Requests are split into tasks of this many bytes (rounded up to 4 KiB)."),
    Setting("HAULER_IO_BOUNCE_POOL", 33554432, "bytes", RUN,
            "Bytes of the aligned bounce-buffer arena for unaligned I/O (made at first use; bounds those in flight)."),
    Setting("HAULER_IO_REGISTER", True, "bool", RUN,
            "1 = io_uring registers the bounce arena and files (fixed ops; a failure is reported); 0 = plain ops."),
    Setting("HAULER_IO_THREADS", 16, "int", RUN,
            "Worker threads of the thread-pool I/O backend."),
    Setting("HAULER_IO_REQUESTS", 4, "int", RUN,
            "File requests (futures) executed at once; later ones queue."),
    Setting("HAULER_NO_CUDA", False, "bool", BUILD,
            "1 = do not build the GPU kernels (libhauler_cuda.so)."),
    Setting("HAULER_FORCE_CUDA", False, "bool", BUILD,
            "1 = fail the build if the GPU kernels cannot be built (nvcc missing or failing)."),
    Setting("HAULER_CUDA_ARCH", ("80",), "arch", BUILD,
            "GPU architectures to compile for, comma-separated (e.g. 80,90)."),
    Setting("HAULER_NVCC", None, "path", BUILD,
            "nvcc to use; unset = $CUDA_HOME/bin/nvcc, nvcc on PATH, /usr/local/cuda/bin/nvcc."),
    Setting("HAULER_BUILD_JOBS", 0, "int", BUILD,
            "Parallel compile jobs for the build; 0 = the number of cores."),
)

_TABLE: Dict[str, Setting] = {s.name: s for s in SETTINGS}
_overrides: Dict[str, Any] = {}
_saved_env: Dict[str, Optional[str]] = {}

_UINT = re.compile(r"^[0-9]+$")
_ARCH = re.compile(r"^(?:sm_|compute_)?([0-9]{2,3}[af]?)$")
_ARCH_DOTTED = re.compile(r"^([0-9]{1,2})\.([0-9])$")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_INT_MAX = 2**63 - 1


def setting(name: str) -> Setting:
    """The table row for ``name``; KeyError naming the known settings otherwise."""
    try:
        return _TABLE[name]
    except KeyError:
        raise KeyError(f"unknown hauler setting {name!r}; known: {', '.join(_TABLE)}") from None


def settings() -> Tuple[Setting, ...]:
    return SETTINGS


def _bad(s: Setting, text: str, expected: str) -> ConfigError:
    return ConfigError(f"{s.name}={text!r}: expected {expected} ({s.doc})")


def parse(name: str, text: str) -> Any:
    """Parse and validate ``text`` as the value of setting ``name``."""
    s = setting(name)
    raw = text
    text = text.strip()
    if s.type in ("int", "bytes"):
        what = "a non-negative integer" + (" number of bytes" if s.type == "bytes" else "")
        if not _UINT.match(text):
            raise _bad(s, raw, what)
        value = int(text)
        if value > _INT_MAX:
            raise _bad(s, raw, f"{what} below 2**63")
        return value
    if s.type == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise _bad(s, raw, "1 or 0 (also true/false, yes/no, on/off)")
    if s.type == "level":
        low = text.lower()
        if low not in _LEVELS:
            raise _bad(s, raw, "one of " + ", ".join(_LEVELS))
        return low
    if s.type == "arch":
        archs: List[str] = []
        for tok in text.split(","):
            tok = tok.strip().lower()
            m = _ARCH.match(tok)
            d = _ARCH_DOTTED.match(tok)
            if m:
                arch = m.group(1)
            elif d:
                arch = d.group(1) + d.group(2)
            elif tok in ("native", "all", "all-major"):
                arch = tok
            else:
                raise _bad(s, raw, "compute capabilities like 80 or 80,90 (sm_80, 8.0, 90a, "
                                   "native, all and all-major are accepted too)")
            if arch not in archs:
                archs.append(arch)
        return tuple(archs)
    if s.type in ("path", "str"):
        if not text:
            raise _bad(s, raw, "a non-empty " + s.type)
        return text
    raise AssertionError(f"setting {s.name} has unknown type {s.type}")


def _to_text(s: Setting, value: Any) -> str:
    """The environment-variable spelling of a parsed value."""
    if s.type == "bool":
        return "1" if value else "0"
    if s.type == "arch":
        return ",".join(value)
    return str(value)


def source(name: str) -> str:
    """Where get(name) takes its value from: "override", "env" or "default"."""
    setting(name)
    if name in _overrides:
        return "override"
    if os.environ.get(name, "").strip():
        return "env"
    return "default"


def get(name: str) -> Any:
    """The value of setting ``name``: run-time override, else the environment
    variable (parsed; ConfigError naming the variable and value if invalid),
    else the default. An empty variable counts as unset."""
    s = setting(name)
    if name in _overrides:
        return _overrides[name]
    text = os.environ.get(name)
    if text is None or not text.strip():
        return s.default
    return parse(name, text)


def set(name: str, value: Any) -> None:  # noqa: A001 - the documented name
    """Override a run-time setting for this process (``None`` removes the override).

    The value is validated like the environment variable and also exported to
    ``os.environ``, so the C++ core, which reads the variable itself, agrees."""
    s = setting(name)
    if s.when != RUN:
        raise ConfigError(f"{name} is a build-time setting: set it in the environment "
                          f"of the build (pip install), not at run time")
    if value is None:
        reset(name)
        return
    if isinstance(value, bool) and s.type != "bool":
        raise ConfigError(f"{name}={value!r}: expected a value of type {s.type}")
    if isinstance(value, (tuple, list)):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, bool):
        text = "1" if value else "0"
    else:
        text = str(value)
    parsed = parse(name, text)
    if name not in _saved_env:
        _saved_env[name] = os.environ.get(name)
    _overrides[name] = parsed
    os.environ[name] = _to_text(s, parsed)


def reset(name: Optional[str] = None) -> None:
    """Remove the run-time override of ``name`` (all overrides if None)."""
    names = [name] if name is not None else list(_overrides)
    for n in names:
        setting(n)
        _overrides.pop(n, None)
        if n in _saved_env:
            old = _saved_env.pop(n)
            if old is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = old


def items() -> Iterator[Tuple[str, Any]]:
    """(name, current value) for every setting, in table order."""
    for s in SETTINGS:
        yield s.name, get(s.name)
