"""Where the build put its outputs and what it recorded: the one reader of _build_info.json.

setup.py writes _build_info.json (build options, the CUDA library, the interposers built) next to
the _core extension; `hauler info`, the interposer launcher and the benchmarks' headers read it here.
"""
from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Dict

BUILD_INFO = "_build_info.json"


def core_dir() -> str:
    """Directory of the _core extension (where the build put libhauler_cuda.so, the interposers
    and _build_info.json); the package directory if _core is not there."""
    try:
        spec = importlib.util.find_spec("hauler._core")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        return os.path.dirname(os.path.abspath(spec.origin))
    return os.path.dirname(os.path.abspath(__file__))


def read(d: str = "") -> Dict[str, Any]:
    """{"path", "info", "error"}: the parsed build info of core_dir() (or of d), or None and why not."""
    path = os.path.join(d or core_dir(), BUILD_INFO)
    try:
        with open(path) as f:
            return {"path": path, "info": json.load(f), "error": None}
    except FileNotFoundError:
        return {"path": path, "info": None,
                "error": f"{path} not found (hauler was not built by its setup.py)"}
    except (OSError, ValueError) as e:
        return {"path": path, "info": None, "error": f"{path}: {e}"}
