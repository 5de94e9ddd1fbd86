"""Every public import form of hauler works, each in a fresh interpreter (a module already
imported by an earlier test would hide a broken lazy import)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import hauler

# Modules `import hauler` must not load: mpi4py.MPI calls MPI_Init; torch costs seconds.
HEAVY = ("mpi4py.MPI", "torch")


def _run(code: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, f"{code!r} failed:\n{r.stderr}"
    return r.stdout


def test_all_lists_every_lazy_submodule_and_nothing_missing():
    assert set(hauler._LAZY_SUBMODULES) <= set(hauler.__all__)
    assert len(set(hauler.__all__)) == len(hauler.__all__)


@pytest.mark.parametrize("name", hauler.__all__)
def test_attribute_after_import_hauler(name):
    out = _run(f"import hauler, types; v = hauler.{name}; "
               f"print(type(v).__name__, isinstance(v, types.ModuleType) and v.__name__)")
    if name in hauler._LAZY_SUBMODULES:
        assert out.split() == ["module", f"hauler.{name}"]


@pytest.mark.parametrize("name", hauler.__all__)
def test_from_hauler_import_name(name):
    out = _run(f"from hauler import {name}; import hauler; print({name} is hauler.{name})")
    assert out.strip() == "True"


def test_star_import_binds_every_name_in_all():
    out = _run("from hauler import *; import hauler; "
               "print(all(globals()[n] is getattr(hauler, n) for n in hauler.__all__))")
    assert out.strip() == "True"


def test_unknown_attribute_is_an_attribute_error():
    out = _run("import hauler\ntry:\n    hauler.no_such_thing\nexcept AttributeError as e:\n    print(e)")
    assert "no_such_thing" in out
    assert not hasattr(hauler, "no_such_thing")


def test_import_hauler_loads_no_heavy_module_and_no_submodule():
    lazy = [f"hauler.{m}" for m in hauler._LAZY_SUBMODULES]
    out = _run(f"import sys, hauler; print([m for m in {list(HEAVY) + lazy!r} if m in sys.modules])")
    assert out.strip() == "[]"


def test_dir_lists_the_lazy_submodules():
    assert set(hauler._LAZY_SUBMODULES) <= set(dir(hauler))


def _import_graph(package_dir: str):
    """{module: modules of the package it imports}, function-local imports included (a lazy
    import is still a dependency); the package's __init__ is left out (every module may ask it
    for the core)."""
    import ast
    mods = {f[:-3] for f in os.listdir(package_dir) if f.endswith(".py")} - {"__init__"}
    graph = {}
    for m in mods:
        with open(os.path.join(package_dir, m + ".py")) as f:
            tree = ast.parse(f.read())
        deps = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 1 and node.module:
                deps.add(node.module.split(".")[0])
            elif node.level == 1:
                deps.update(a.name for a in node.names)
            elif node.module and node.module.startswith("hauler."):
                deps.add(node.module.split(".")[1])
        graph[m] = deps & mods
    return graph


def _cycles(graph):
    found = []
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            mod, path = stack.pop()
            for dep in graph[mod]:
                if dep == start:
                    found.append(" -> ".join(path + [start]))
                elif dep not in path and dep > start:  # each cycle once, from its smallest module
                    stack.append((dep, path + [dep]))
    return found


def test_no_module_of_hauler_imports_one_that_imports_it_back():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert _cycles(_import_graph(os.path.dirname(hauler.__file__))) == []


def test_every_hauler_exception_is_importable_from_hauler():
    # every exception class any hauler module defines, found by walking the package
    import importlib
    import pkgutil
    found = {}
    for m in pkgutil.walk_packages(hauler.__path__, "hauler."):
        if m.name.startswith("hauler.bench"):
            continue
        try:
            mod = importlib.import_module(m.name)
        except ImportError:  # optional dependency absent (torch_geometric, ...)
            continue
        for v in vars(mod).values():
            if isinstance(v, type) and issubclass(v, Exception) and v.__module__.startswith("hauler"):
                found[v.__name__] = v
    assert {"CapacityExceeded", "CorruptEntry", "SwapSpaceFull", "HaulerIOError"} <= set(found)
    for name, cls in found.items():
        assert getattr(hauler, name) is cls, name
        assert name in hauler.__all__, name
    from hauler.io import CapacityExceeded, CorruptEntry
    assert CapacityExceeded is found["CapacityExceeded"] and CorruptEntry is found["CorruptEntry"]
