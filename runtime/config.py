"""hauler's settings: the ONE table of ``HAULER_*`` variables.

Every tunable has one row here (name, type, default, accepted range, doc line), is
overridable by its environment variable and (run-time settings) by :func:`set`. The
C++ readers are fed by the same rows: :func:`cpp_table` writes
csrc/common/settings_table.h (setup.py refreshes it; tests/test_config.py checks the
checked-in copy), and csrc/common/settings.cpp parses with exactly the rules of
:func:`parse`, so a value is accepted or refused identically, with the same message,
by Python, the core and the MPI shim. The settings table in docs/settings.md is checked against
this table by tests/test_config.py, defaults and accepted values included.

This module uses only the standard library and imports nothing from hauler, so
setup.py can load it by path before the package is built.

    from hauler import config
    config.get("HAULER_THREADS")         # override, else the env var parsed and validated, else the default
    config.set("HAULER_THREADS", 4)      # run-time override for this process (Python and the core)
    config.set("HAULER_THREADS", None)   # back to the environment / default
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

__all__ = ["ConfigError", "Setting", "SETTINGS", "get", "set", "reset", "items",
           "setting", "source", "parse", "error_text", "cpp_table"]

BUILD = "build"
RUN = "run"
INT64_MAX = 2**63 - 1


class ConfigError(ValueError):
    """A ``HAULER_*`` value that does not parse; the message names the variable, the value and
    the accepted values (the C++ core and the shim word it identically)."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any          # the parsed default (None: unset)
    type: str             # int | bytes | bool | choice | str | path | arch
    when: str             # "build" or "run"
    doc: str              # one line
    lo: int = 0           # int/bytes: accepted range [lo, hi]
    hi: int = INT64_MAX
    choices: Tuple[str, ...] = ()   # choice: the accepted words (case-insensitive)

    @property
    def doc_default(self) -> str:
        """The default as docs/settings.md writes it."""
        return _to_text(self, self.default) if self.default is not None else "unset"

    @property
    def doc_values(self) -> str:
        """The accepted values as the Values column of docs/settings.md writes them."""
        if self.type in ("int", "bytes"):
            return f"{self.lo} to {_bound(self.hi)}"
        if self.type == "bool":
            return "0 or 1"
        if self.type == "choice":
            return ", ".join(self.choices)
        if self.type == "arch":
            return "compute capabilities"
        return "a path" if self.type == "path" else "text"

    @property
    def accepted(self) -> str:
        """What an error message says is expected (identical in Python and C++)."""
        if self.type == "int":
            return f"an integer from {self.lo} to {_bound(self.hi)}"
        if self.type == "bytes":
            return f"a number of bytes from {self.lo} to {_bound(self.hi)}"
        if self.type == "bool":
            return "1 or 0 (also true/false, yes/no, on/off)"
        if self.type == "choice":
            return "one of " + ", ".join(self.choices)
        if self.type == "arch":
            return ("compute capabilities like 80 or 80,90 (sm_80, 8.0, 90a, "
                    "native, all and all-major are accepted too)")
        return ("a path" if self.type == "path" else "text") + " without control characters"


def _bound(n: int) -> str:
    return "2^63-1" if n == INT64_MAX else str(n)


_LEVELS = ("debug", "info", "warning", "error", "critical")

SETTINGS: Tuple[Setting, ...] = (
    Setting("HAULER_THREADS", 0, "int", RUN,
            "Threads for host pack/unpack; 0 = the number of cores.", hi=1024),
    Setting("HAULER_PACK_PARALLEL_MIN", 1048576, "bytes", RUN,
            "Messages smaller than this many bytes are packed by one thread."),
    Setting("HAULER_PACK_STREAM_MIN", 16777216, "bytes", RUN,
            "Packs of at least this many bytes write with non-temporal (cache-bypassing) stores."),
    Setting("HAULER_GATHER_THREADS", 0, "int", RUN,
            "Threads for host row gather/scatter; 0 = HAULER_THREADS (1 inside DataLoader workers).",
            hi=1024),
    Setting("HAULER_GATHER_PARALLEL_MIN", 262144, "bytes", RUN,
            "Gathers/scatters moving fewer bytes than this run on one thread."),
    Setting("HAULER_GATHER_STREAM_MIN", 16777216, "bytes", RUN,
            "Gathers writing at least this many bytes use non-temporal stores (rows of 16n bytes)."),
    Setting("HAULER_GATHER_PREFETCH", 4096, "bytes", RUN,
            "Bytes of rows the host gather prefetches ahead (2 to 64 rows); 0 = no software prefetch."),
    Setting("HAULER_GATHER_GPU_BLOCKS", 0, "int", RUN,
            "Cap on thread blocks of the GPU gather kernel; 0 = 2 per multiprocessor.", hi=2**31 - 1),
    Setting("HAULER_CUDA_LIB", None, "path", RUN,
            "Path of libhauler_cuda.so; unset = next to the hauler._core extension."),
    Setting("HAULER_MPICC", None, "path", RUN,
            "MPI C compiler to use; unset = $MPICC, then mpicc on PATH."),
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
    Setting("HAULER_INTERPOSE_LOG", "warning", "choice", RUN,
            "Interposer log level on stderr: debug, info, warning, error or critical.",
            choices=_LEVELS),
    Setting("HAULER_INTERPOSE_REPORT", None, "str", RUN,
            "Per-rank interposer report at MPI_Finalize: 1 = stderr; a path with %r (rank); a directory "
            "(hauler-interpose.<rank>.txt); any other name gets .<rank> appended."),
    Setting("HAULER_INTERPOSE_MODEL", None, "path", RUN,
            "Interposer model file (pack vs pass-through); unset = the one hauler-bench calibrate wrote "
            "($XDG_CONFIG_HOME or ~/.config, hauler/interpose-model.txt) if any, else built-in; builtin = built-in."),
    Setting("HAULER_INTERPOSE_TRIALS", 4, "int", RUN,
            "Interposer: point-to-point messages timed on each path (library, packed) per type, count, "
            "direction and peer locality before the faster is kept (re-checked at 64..4096); 0 = the model decides alone.",
            hi=64),
    Setting("HAULER_INTERPOSE_PIPELINE", 0, "bytes", RUN,
            "Interposer: packed point-to-point messages of at least this many bytes go in chunks, packing, "
            "transfer and unpacking overlapped (every rank must agree; probes and persistent receives of such "
            "messages are refused); 0 = off.",
            hi=2**30),
    Setting("HAULER_INTERPOSE_PIPELINE_CHUNK", 262144, "bytes", RUN,
            "Interposer: bytes per chunk of a pipelined message.",
            lo=4096, hi=2**30),
    Setting("HAULER_IO_BACKEND", "auto", "choice", RUN,
            "File I/O backend: auto (io_uring, else the thread pool, with a banner), io_uring or threads.",
            choices=("auto", "io_uring", "threads")),
    Setting("HAULER_IO_DIRECT", True, "bool", RUN,
            "1 = open files with O_DIRECT where the file system allows it; 0 = always buffered I/O."),
    Setting("HAULER_IO_QUEUE_DEPTH", 32, "int", RUN,
            "Tasks of one file request in flight at once (io_uring queue depth / pool tasks).",
            lo=1, hi=4096),
    Setting("HAULER_IO_TASK_SIZE", 1048576, "bytes", RUN,
            "Requests are split into tasks of this many bytes (rounded up to 4 KiB).",
            lo=1, hi=2**30),
    Setting("HAULER_IO_BOUNCE_POOL", 33554432, "bytes", RUN,
            "Bytes of the aligned bounce-buffer arena for unaligned I/O (made at first use; bounds those in flight).",
            hi=2**50),
    Setting("HAULER_IO_REGISTER", True, "bool", RUN,
            "1 = io_uring registers the bounce arena and files (fixed ops; a failure is reported); 0 = plain ops."),
    Setting("HAULER_IO_THREADS", 16, "int", RUN,
            "Worker threads of the thread-pool I/O backend.", lo=1, hi=1024),
    Setting("HAULER_IO_REQUESTS", 4, "int", RUN,
            "File requests (futures) executed at once; later ones queue.", lo=1, hi=256),
    Setting("HAULER_NO_CUDA", False, "bool", BUILD,
            "1 = do not build the GPU kernels (libhauler_cuda.so)."),
    Setting("HAULER_FORCE_CUDA", False, "bool", BUILD,
            "1 = fail the build if the GPU kernels cannot be built (nvcc missing or failing)."),
    Setting("HAULER_CUDA_ARCH", ("80",), "arch", BUILD,
            "GPU architectures to compile for, comma-separated (e.g. 80,90)."),
    Setting("HAULER_NVCC", None, "path", BUILD,
            "nvcc to use; unset = $CUDA_HOME/bin/nvcc, nvcc on PATH, /usr/local/cuda/bin/nvcc."),
    Setting("HAULER_BUILD_JOBS", 0, "int", BUILD,
            "Parallel compile jobs for the build; 0 = the number of cores.", hi=1024),
)

_TABLE: Dict[str, Setting] = {s.name: s for s in SETTINGS}
_overrides: Dict[str, Any] = {}

_UINT = re.compile(r"[0-9]+")
_ARCH = re.compile(r"(?:sm_|compute_)?([0-9]{2,3}[af]?)")
_ARCH_DOTTED = re.compile(r"([0-9]{1,2})\.([0-9])")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# The C library's isspace: what both sides strip from the ends of a value.
_SPACE = " \t\n\r\f\v"


def setting(name: str) -> Setting:
    """The table row for ``name``; KeyError naming the known settings otherwise."""
    try:
        return _TABLE[name]
    except KeyError:
        raise KeyError(f"unknown hauler setting {name!r}; known: {', '.join(_TABLE)}") from None


def _quote(text: str) -> str:
    """The value as error messages show it: in single quotes, every byte outside printable ASCII
    (and ' and \\) as \\xNN, so Python and C++ write the same text for any value."""
    out = []
    for b in os.fsencode(text):
        out.append(chr(b) if 0x20 <= b < 0x7f and b not in (0x27, 0x5c) else f"\\x{b:02x}")
    return "'" + "".join(out) + "'"


def error_text(name: str, text: str) -> str:
    """The message for an invalid value of ``name``; csrc/common/settings.cpp writes the same."""
    return f"{name}={_quote(text)}: expected {setting(name).accepted}"


def _lower(text: str) -> str:
    # ASCII only, as C's tolower: a non-ASCII value matches no accepted word either way
    return text.lower() if text.isascii() else text


def parse(name: str, text: str) -> Any:
    """Parse and validate ``text`` as the value of setting ``name``: the rules of
    csrc/common/settings.cpp's parse(), exactly. Surrounding whitespace is ignored."""
    s = setting(name)
    raw = text
    text = text.strip(_SPACE)
    if s.type in ("int", "bytes"):
        if _UINT.fullmatch(text) and s.lo <= int(text) <= s.hi:
            return int(text)
    elif s.type == "bool":
        if _lower(text) in _TRUE:
            return True
        if _lower(text) in _FALSE:
            return False
    elif s.type == "choice":
        if _lower(text) in s.choices:
            return _lower(text)
    elif s.type == "arch":
        archs = _parse_arch(text)
        if archs:
            return archs
    elif s.type in ("path", "str"):
        if text and not any(ord(c) < 0x20 or ord(c) == 0x7f for c in text):
            return text
    else:
        raise AssertionError(f"setting {s.name} has unknown type {s.type}")
    raise ConfigError(error_text(name, raw))


def _parse_arch(text: str) -> Tuple[str, ...]:
    """("80", "90a", ...) or () when any comma-separated piece is not an architecture."""
    archs = []
    for tok in text.split(","):
        tok = _lower(tok.strip(_SPACE))
        m = _ARCH.fullmatch(tok)
        d = _ARCH_DOTTED.fullmatch(tok)
        if m:
            arch = m.group(1)
        elif d:
            arch = d.group(1) + d.group(2)
        elif tok in ("native", "all", "all-major"):
            arch = tok
        else:
            return ()
        if arch not in archs:
            archs.append(arch)
    return tuple(archs)


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
    if os.environ.get(name, "").strip(_SPACE):
        return "env"
    return "default"


def get(name: str) -> Any:
    """The value of setting ``name``: run-time override, else the environment
    variable (parsed; ConfigError naming the variable, the value and the accepted
    values if invalid), else the default. An empty variable counts as unset."""
    s = setting(name)
    if name in _overrides:
        return _overrides[name]
    text = os.environ.get(name)
    if text is None or not text.strip(_SPACE):
        return s.default
    return parse(name, text)


def _core() -> Any:
    """hauler._core when this module is hauler.config and the core is built, else None (setup.py
    loads this file by path, before there is a core)."""
    if __package__ != "hauler":
        return None
    try:
        from . import _core as core  # type: ignore[attr-defined]
    except ImportError:
        return None
    return core


def set(name: str, value: Any) -> None:  # noqa: A001 - the documented name
    """Override a run-time setting for this process (``None`` removes the override).

    The value is validated like the environment variable and handed to the C++ core,
    which reads it from then on instead of the variable. The environment is left alone:
    child processes (mpirun, DataLoader workers started by spawn) see the variables."""
    s = setting(name)
    if s.when != RUN:
        raise ConfigError(f"{name} is a build-time setting: set it in the environment "
                          f"of the build (pip install), not at run time")
    if value is None:
        reset(name)
        return
    if isinstance(value, bool) and s.type != "bool":
        raise ConfigError(f"{name}={value!r}: expected {s.accepted}")
    if isinstance(value, bool):
        text = "1" if value else "0"
    else:
        text = str(value)
    parsed = parse(name, text)
    core = _core()
    if core is not None:
        core.set_setting(name, _to_text(s, parsed))
    _overrides[name] = parsed


def reset(name: Optional[str] = None) -> None:
    """Remove the run-time override of ``name`` (all overrides if None)."""
    names = [name] if name is not None else list(_overrides)
    core = _core()
    for n in names:
        setting(n)
        if core is not None and setting(n).when == RUN:
            core.set_setting(n, None)
        _overrides.pop(n, None)


def items() -> Iterator[Tuple[str, Any]]:
    """(name, current value) for every setting, in table order."""
    for s in SETTINGS:
        yield s.name, get(s.name)


_CPP_TYPES = {"int": "integer", "bytes": "bytes", "bool": "boolean", "choice": "choice",
              "str": "text", "path": "path"}


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cpp_table() -> str:
    """csrc/common/settings_table.h: one HAULER_SETTING(...) row per run-time setting."""
    lines = ["// Generated from runtime/config.py (cpp_table()): do not edit. setup.py rewrites it when the",
             "// table changes; tests/test_config.py fails when this copy is stale.",
             "// HAULER_SETTING(id, name, type, lo, hi, default or nullptr, choices joined by |, accepted)"]
    for s in SETTINGS:
        if s.when != RUN:
            continue
        ident = s.name[len("HAULER_"):].lower()
        dflt = "nullptr" if s.default is None else _c_string(_to_text(s, s.default))
        hi = "INT64_MAX" if s.hi == INT64_MAX else str(s.hi)
        lines.append(f"HAULER_SETTING({ident}, {_c_string(s.name)}, {_CPP_TYPES[s.type]}, {s.lo}, {hi}, "
                     f"{dflt}, {_c_string('|'.join(s.choices))}, {_c_string(s.accepted)})")
    return "\n".join(lines) + "\n"


def write_cpp_table(path: str) -> bool:
    """Write cpp_table() to ``path`` unless it already holds it (no needless rebuilds); True if written."""
    text = cpp_table()
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    with open(path, "w") as f:
        f.write(text)
    return True
