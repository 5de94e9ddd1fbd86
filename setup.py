"""hauler's one build entry point.

Builds
  * ``hauler._core``       pybind11 extension: csrc/{common,datatype,io,gather,kv,bindings}/**/*.cpp,
                           C++17, no CUDA headers or libraries;
  * ``libhauler_cuda.so``  every csrc/**/*.cu compiled by nvcc (cudart linked statically, so it
                           needs only the driver's libcuda.so at run time), placed next to
                           ``_core`` in the built package -- also for ``pip install -e .``;
  * ``interpose/<flavour>/libhauler_interpose.so``  the LD_PRELOAD MPI shim, one per MPI
                           flavour found (build_interpose below), next to ``_core`` too;
  * ``_build_info.json``   the build options (read by ``hauler info``), next to ``_core`` too.

Build-time settings (see runtime/config.py, the one table): HAULER_NO_CUDA, HAULER_FORCE_CUDA,
HAULER_CUDA_ARCH, HAULER_NVCC, HAULER_BUILD_JOBS.
"""
import datetime
import glob
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
os.chdir(ROOT)  # setuptools wants source paths relative to the project root

# Capability folders whose .cpp files make up the host core (scripts/core_tests.sh uses the
# same list minus bindings).
CORE_DIRS = ("common", "datatype", "io", "gather", "kv", "bindings")
# Host .cpp files compiled into libhauler_cuda.so beside the .cu files (none: the .cu files
# are self-contained).
CUDA_HOST_SOURCES = []
CUDA_LIB = "libhauler_cuda.so"
BUILD_INFO = "_build_info.json"
# -falign-loops=64: measured on AMD EPYC (Zen 4), the same machine code of a tight copy loop in
# csrc/datatype/pack.cpp ran up to 2x slower at some addresses than at others (32-byte alignment
# did not help), and where a loop lands depends on everything linked before it, so an edit
# anywhere moved unrelated pack cases between the two speeds. Loops starting on 64-byte
# boundaries keep them where they are.
ALIGN_LOOPS = "-falign-loops=64"
CXX_FLAGS = ["-O3", ALIGN_LOOPS, "-Wall", "-Wextra"]          # + -std=c++17 -fvisibility=hidden (pybind11)
LINK_FLAGS = ["-ldl", "-pthread"]
NVCC_FLAGS = ["-std=c++17", "-O3", "-Xcompiler", "-fPIC,-fvisibility=hidden",
              "-Werror", "all-warnings", "-Icsrc"]
NVCC_LINK_FLAGS = ["-shared", "-cudart", "static", "-Xlinker", "--exclude-libs,ALL"]


def _load(name, path):
    """Load a stdlib-only module of the package by path (the package is not built yet)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


config = _load("_hauler_build_config", "runtime/config.py")
# The C++ readers' table, generated from config.py's. Checked in too: scripts/core_tests.sh and CI's
# nvcc runs compile csrc/ without setup.py, and tests/test_config.py fails on a stale copy.
config.write_cpp_table(os.path.join(ROOT, "csrc", "common", "settings_table.h"))
mpi_find = _load("_hauler_build_mpi_find", "runtime/mpi_find.py")


def _version():
    text = open(os.path.join(ROOT, "runtime", "_version.py")).read()
    return re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)


def _packages():
    """hauler <- runtime/, hauler.bench <- bench/, plus every subpackage under them."""
    pkgs, dirs = [], {"hauler": "runtime", "hauler.bench": "bench"}
    for pkg, top in dirs.items():
        pkgs.append(pkg)
        for d, subdirs, files in os.walk(top):
            subdirs[:] = sorted(s for s in subdirs if not s.startswith((".", "__")))
            if d != top and "__init__.py" in files:
                pkgs.append(pkg + "." + os.path.relpath(d, top).replace(os.sep, "."))
    return sorted(set(pkgs)), dirs


def _glob(pattern):
    return sorted(glob.glob(pattern, recursive=True))


def core_sources():
    return [s for d in CORE_DIRS for s in _glob(f"csrc/{d}/**/*.cpp")]


def cuda_sources():
    return _glob("csrc/**/*.cu")


def headers():
    # interpose/ included: the shim's objects must rebuild when its internal header changes.
    return [h for top in ("csrc", "interpose") for ext in ("h", "hpp", "cuh", "inl")
            for h in _glob(f"{top}/**/*.{ext}")]


def find_liburing():
    """(True, how) when liburing's header and library are present (csrc/io's io_uring backend is
    then built with -DHAULER_HAVE_LIBURING and linked with -luring), else (False, why)."""
    import ctypes.util
    inc = [d for d in ("/usr/include", "/usr/local/include") if os.path.exists(os.path.join(d, "liburing.h"))]
    lib = ctypes.util.find_library("uring")
    if inc and lib:
        return True, f"liburing.h in {inc[0]}, {lib}"
    return False, "liburing not found (liburing.h: %s, library: %s): io_uring backend not built" % (
        "yes" if inc else "no", lib or "no")


HAVE_LIBURING, LIBURING_WHY = find_liburing()
if HAVE_LIBURING:
    CXX_FLAGS = CXX_FLAGS + ["-DHAULER_HAVE_LIBURING"]
    LINK_FLAGS = LINK_FLAGS + ["-luring"]
else:
    print("hauler: " + LIBURING_WHY + "; the thread-pool I/O backend will run")


def find_nvcc():
    """(path, None) or (None, reason): HAULER_NVCC > $CUDA_HOME/bin/nvcc > PATH > /usr/local/cuda."""
    explicit = config.get("HAULER_NVCC")
    if explicit:
        path = shutil.which(explicit) if os.sep not in explicit else explicit
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path), None
        return None, f"HAULER_NVCC={explicit!r} is not an executable file"
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c), None
    return None, "nvcc not found (HAULER_NVCC, $CUDA_HOME/bin, PATH, /usr/local/cuda/bin)"


def gencode_flags(archs):
    """-gencode per architecture; the last one also embeds PTX so newer GPUs can JIT it."""
    if len(archs) == 1 and archs[0] in ("native", "all", "all-major"):
        return [f"-arch={archs[0]}"]
    flags = []
    for i, a in enumerate(archs):
        if a in ("native", "all", "all-major"):
            raise config.ConfigError(f"HAULER_CUDA_ARCH={','.join(archs)!r}: {a!r} cannot be "
                                     f"combined with other architectures")
        code = f"[sm_{a},compute_{a}]" if i == len(archs) - 1 else f"sm_{a}"
        flags += ["-gencode", f"arch=compute_{a},code={code}"]
    return flags


def _first_line(argv):
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=60, check=False).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return lines[0].strip() if lines else None


def _banner(lines):
    bar = "!" * 78
    sys.stderr.write("\n" + bar + "\n" + "".join(f"!! {ln}\n" for ln in lines) + bar + "\n\n")
    sys.stderr.flush()


# ==== The LD_PRELOAD MPI interposer (interpose/) ========================================
# One libhauler_interpose.so per MPI flavour found: HAULER_MPICC > MPICC > mpicc on PATH, except
# that when both Debian flavours are installed (mpicc.openmpi and mpicc.mpich) and no variable
# names a compiler, both are built. The host core (csrc/ minus bindings) is compiled once
# with -fvisibility=hidden and linked into each library; only MPI_* symbols are exported.
INTERPOSE_LIB = "libhauler_interpose.so"
INTERPOSE_DIR = "interpose"          # under the package: hauler/interpose/<flavour>/<lib>
INTERPOSE_CORE_DIRS = tuple(d for d in CORE_DIRS if d != "bindings")  # the whole host core
INTERPOSE_FLAGS = ["-std=c++17", "-O3", ALIGN_LOOPS, "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-Icsrc"]
INTERPOSE_LINK = ["-shared", "-lstdc++", "-ldl", "-pthread", "-Wl,-z,defs",
                  "-Wl,--version-script=" + os.path.join(ROOT, "interpose", "exports.map")]
DEBIAN_MPICC = {"openmpi": ("mpicc.openmpi", mpi_find.OPEN_MPI), "mpich": ("mpicc.mpich", mpi_find.MPICH)}


def _flavour_name(vendor):
    return {mpi_find.OPEN_MPI: "openmpi", mpi_find.MPICH: "mpich"}.get(
        vendor, re.sub(r"[^a-z0-9]+", "", (vendor or "unknown").lower()) or "unknown")


def interpose_flavours():
    """[(flavour, MpiCompiler)] to build the shim for; [] when no MPI is installed."""
    named = any(os.environ.get(v, "").strip() for v in ("HAULER_MPICC", "MPICC"))
    if not named and all(shutil.which(cc) for cc, _ in DEBIAN_MPICC.values()):
        out = []
        for flav, (cc, vendor) in DEBIAN_MPICC.items():
            path = os.path.abspath(shutil.which(cc))
            rc_show = _first_line([path, "-show"]) or ""
            out.append((flav, mpi_find.MpiCompiler(path=path, vendor=vendor,
                                                   version_line=_first_line([path, "--version"]) or "",
                                                   origin="PATH", show=rc_show)))
        return out
    cc = mpi_find.find_mpicc()
    return [] if cc is None else [(_flavour_name(cc.vendor), cc)]


def interpose_core_sources():
    return [s for d in INTERPOSE_CORE_DIRS for s in _glob(f"csrc/{d}/**/*.cpp")]


def _has_large_count(cc, build_temp):
    """Whether the flavour's library exports the MPI-4 large-count calls the shim uses (MPICH 4 does,
    Open MPI 4.1 does not): a program that calls one must compile and link with its mpicc."""
    d = os.path.join(build_temp, "interpose", "probe")
    os.makedirs(d, exist_ok=True)
    src = os.path.join(d, "large_count.c")
    with open(src, "w") as f:
        f.write("#include <mpi.h>\nint main(void) { MPI_Count a, b, c, d; int e;\n"
                "  return PMPI_Type_get_envelope_c(MPI_INT, &a, &b, &c, &d, &e) + PMPI_Send_c(0, 0, MPI_INT, 0, 0,"
                " MPI_COMM_WORLD); }\n")
    p = subprocess.run([cc.path, *cc.args, src, "-o", os.path.join(d, "large_count")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return p.returncode == 0


def build_interpose(build_temp, out_root):
    """Build one shim per flavour under out_root/<flavour>/; returns the "interpose" build info."""
    info = {"built": False, "reason": "", "libraries": {}, "log": None}
    if os.path.isdir(out_root):
        shutil.rmtree(out_root)  # never ship a shim from an older build
    try:
        flavours = interpose_flavours()
    except mpi_find.MpiNotFound as e:
        flavours, info["reason"] = [], str(e)
    if not flavours:
        info["reason"] = info["reason"] or "no MPI C compiler (HAULER_MPICC, MPICC, mpicc on PATH)"
        _banner(["hauler: the MPI interposer (libhauler_interpose.so) was NOT built:", info["reason"],
                 "Install an MPI to get it: " + mpi_find.install_hint(),
                 "(or the MPICH packages: " + " ".join(mpi_find.APT_PACKAGES[mpi_find.MPICH]) + ")",
                 "Everything else is installed."])
        return info
    cxx = shutil.which("c++") or shutil.which("g++") or "c++"
    obj_dir = os.path.join(build_temp, "interpose")
    newest_dep = max([os.path.getmtime(p) for p in headers() + [__file__]] or [0])

    def compile_one(compiler, src, obj, extra=()):
        if os.path.exists(obj) and os.path.getmtime(obj) >= max(os.path.getmtime(src), newest_dep):
            return 0, ""
        os.makedirs(os.path.dirname(obj), exist_ok=True)
        cmd = [compiler, *extra] + INTERPOSE_FLAGS + ["-c", src, "-o", obj]
        print("hauler: " + " ".join(cmd), flush=True)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if p.returncode != 0 and os.path.exists(obj):
            os.remove(obj)
        return p.returncode, f"$ {' '.join(cmd)}\n" + p.stdout.decode("utf-8", "replace")

    jobs = []
    core_objs = []
    for src in interpose_core_sources():
        obj = os.path.join(obj_dir, "core", os.path.splitext(src)[0] + ".o")
        core_objs.append(obj)
        jobs.append((cxx, src, obj, ()))
    shim_srcs = _glob("interpose/*.cpp")
    shim_objs = {}
    large_count = {}
    for flav, cc in flavours:
        shim_objs[flav] = []
        large_count[flav] = _has_large_count(cc, build_temp)
        # the objects of each answer apart: a library upgrade must not reuse the other kind
        flags = list(cc.args) + ([] if large_count[flav] else ["-DHAULER_MPI_LARGE_COUNT=0"])
        sub = flav if large_count[flav] else flav + "-nolc"
        for src in shim_srcs:
            obj = os.path.join(obj_dir, sub, os.path.splitext(src)[0] + ".o")
            shim_objs[flav].append(obj)
            jobs.append((cc.path, src, obj, flags))
    n = config.get("HAULER_BUILD_JOBS") or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
        results = list(pool.map(lambda j: compile_one(*j), jobs))
    logs = [log for rc, log in results if rc != 0]
    if logs:
        info["reason"], info["log"] = "compiling the interposer failed", "\n".join(logs)[-8000:]
        _banner(["hauler: the MPI interposer was NOT built: compile errors"] + info["log"].splitlines()[-30:])
        return info
    for flav, cc in flavours:
        out = os.path.join(out_root, flav, INTERPOSE_LIB)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cmd = [cc.path, *cc.args, "-o", out] + shim_objs[flav] + core_objs + INTERPOSE_LINK
        print("hauler: " + " ".join(cmd), flush=True)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if p.returncode != 0:
            log = f"$ {' '.join(cmd)}\n" + p.stdout.decode("utf-8", "replace")[-8000:]
            _banner([f"hauler: linking the {flav} interposer failed"] + log.splitlines()[-30:])
            info["log"] = (info["log"] or "") + log
            continue
        try:
            mpiexec = mpi_find.find_mpiexec(cc)
        except mpi_find.MpiNotFound:
            mpiexec = None
        info["libraries"][flav] = {"library": f"{INTERPOSE_DIR}/{flav}/{INTERPOSE_LIB}",
                                   "mpicc": cc.path, "vendor": cc.vendor,
                                   "version_line": cc.version_line, "mpiexec": mpiexec,
                                   "large_count": large_count[flav]}
    info["built"] = bool(info["libraries"])
    info["reason"] = "built" if info["built"] else "linking failed"
    return info


class BuildExt(build_ext):
    """build_ext that also builds libhauler_cuda.so and writes _build_info.json next to _core."""

    def initialize_options(self):
        super().initialize_options()
        self._extra_pairs = []  # (file in build_lib, its in-place (editable) copy)

    # ---- where things go --------------------------------------------------------------
    def _core_dirs(self):
        """(directory of _core in build_lib, directory of _core in the source tree)."""
        build_py = self.get_finalized_command("build_py")
        return (os.path.join(self.build_lib, "hauler"),
                os.path.abspath(build_py.get_package_dir("hauler")))

    def get_output_mapping(self):
        mapping = dict(super().get_output_mapping())
        if self.inplace:
            mapping.update(dict(self._extra_pairs))
        return dict(sorted(mapping.items()))

    def get_outputs(self):
        outs = list(super().get_outputs())
        if not self.inplace:
            outs += [reg for reg, _ in self._extra_pairs if reg not in outs]
        return sorted(outs)

    # ---- the build --------------------------------------------------------------------
    def run(self):
        super().run()  # _core into build_lib, then copied to runtime/ when editable
        inplace = bool(self.inplace)
        reg_dir, src_dir = self._core_dirs()
        os.makedirs(reg_dir, exist_ok=True)

        cuda = self._build_cuda(os.path.join(reg_dir, CUDA_LIB))
        interpose = build_interpose(self.build_temp, os.path.join(reg_dir, INTERPOSE_DIR))
        info = self._build_info(cuda)
        info["interpose"] = interpose
        info_path = os.path.join(reg_dir, BUILD_INFO)
        with open(info_path, "w") as f:
            json.dump(info, f, indent=2, sort_keys=True)
            f.write("\n")

        pairs = [(info_path, os.path.join(src_dir, BUILD_INFO))]
        if cuda["built"]:
            pairs.append((os.path.join(reg_dir, CUDA_LIB), os.path.join(src_dir, CUDA_LIB)))
        for lib in interpose["libraries"].values():
            pairs.append((os.path.join(reg_dir, lib["library"]), os.path.join(src_dir, lib["library"])))
        self._extra_pairs = pairs
        if inplace:
            for reg, inp in pairs:
                os.makedirs(os.path.dirname(inp), exist_ok=True)
                self.copy_file(reg, inp, level=self.verbose)
            stale = os.path.join(src_dir, CUDA_LIB)
            if not cuda["built"] and os.path.exists(stale):
                os.remove(stale)  # never leave a library from an older build next to _core
            for flav in os.listdir(os.path.join(src_dir, INTERPOSE_DIR)) \
                    if os.path.isdir(os.path.join(src_dir, INTERPOSE_DIR)) else []:
                lib = os.path.join(src_dir, INTERPOSE_DIR, flav, INTERPOSE_LIB)
                if flav not in interpose["libraries"] and os.path.exists(lib):
                    os.remove(lib)  # nor a shim of an MPI flavour that is gone

    def _build_info(self, cuda):
        ext = self.extensions[0]
        cc = list(getattr(self.compiler, "compiler_so", None) or ["c++"])
        cxx = list(getattr(self.compiler, "compiler_cxx", None) or cc)
        try:
            mpicc = mpi_find.find_mpicc()
            mpi = {"found": mpicc is not None, "error": None,
                   **(mpicc.as_dict() if mpicc else {"path": None, "vendor": None,
                                                     "version_line": None, "origin": None,
                                                     "show": None})}
        except Exception as e:  # a bad HAULER_MPICC must not stop the build
            mpi = {"found": False, "error": str(e), "path": None, "vendor": None,
                   "version_line": None, "origin": None, "show": None}
        return {
            "schema": 1,
            "version": _version(),
            "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "editable": bool(self.inplace),
            "core": {
                "extension": ext.name,
                "compiler": " ".join(cc),
                "compiler_version": _first_line([cxx[0], "--version"]),
                "flags": list(ext.extra_compile_args),
                "link_flags": list(ext.extra_link_args),
                "include_dirs": list(ext.include_dirs),
                "sources": list(ext.sources),
            },
            "cuda": cuda,
            "liburing": {"found": HAVE_LIBURING, "detail": LIBURING_WHY},
            "mpi": mpi,
            "settings": {s.name: os.environ.get(s.name) for s in config.SETTINGS
                         if s.when == config.BUILD},
        }

    def _build_cuda(self, out_path):
        """Build libhauler_cuda.so at out_path; returns the "cuda" part of the build info."""
        sources = cuda_sources() + list(CUDA_HOST_SOURCES)
        info = {"built": False, "reason": "", "library": None, "nvcc": None,
                "nvcc_version": None, "arch": [], "flags": [], "link_flags": [],
                "sources": sources, "log": None}
        if os.path.exists(out_path):
            os.remove(out_path)
        force = config.get("HAULER_FORCE_CUDA")

        def give_up(reason, log=None):
            info["reason"], info["log"] = reason, log
            if force:
                _banner(["HAULER_FORCE_CUDA=1 and the GPU kernels were not built:", reason]
                        + ([] if not log else log.splitlines()[-40:]))
                raise SystemExit(f"hauler: GPU kernels not built: {reason}")
            _banner(["hauler: the GPU kernels (libhauler_cuda.so) were NOT built:", reason,
                     "Everything else is installed; hauler.cuda_available() will be False.",
                     "Set HAULER_FORCE_CUDA=1 to make this an error."]
                    + ([] if not log else log.splitlines()[-40:]))
            return info

        if config.get("HAULER_NO_CUDA"):
            if force:
                raise SystemExit("hauler: HAULER_NO_CUDA=1 and HAULER_FORCE_CUDA=1 contradict")
            info["reason"] = "skipped: HAULER_NO_CUDA=1"
            print("hauler: HAULER_NO_CUDA=1: not building the GPU kernels")
            return info
        nvcc, why = find_nvcc()
        if nvcc is None:
            return give_up(why)
        info["nvcc"] = nvcc
        info["nvcc_version"] = self._nvcc_release(nvcc)
        if not sources:
            info["reason"] = "skipped: no .cu sources under csrc/"
            return info
        archs = list(config.get("HAULER_CUDA_ARCH"))
        arch_flags = gencode_flags(archs)
        info["arch"] = archs
        flags = NVCC_FLAGS + arch_flags
        info["flags"], info["link_flags"] = flags, NVCC_LINK_FLAGS + arch_flags

        obj_dir = os.path.join(self.build_temp, "cuda")
        stamp = hashlib.sha256(repr((nvcc, flags)).encode()).hexdigest()[:16]
        newest_dep = max([os.path.getmtime(p) for p in headers() + [__file__]] or [0])

        def compile_one(src):
            obj = os.path.join(obj_dir, stamp, os.path.splitext(src)[0] + ".o")
            if os.path.exists(obj) and os.path.getmtime(obj) >= max(os.path.getmtime(src),
                                                                     newest_dep):
                return obj, 0, ""
            os.makedirs(os.path.dirname(obj), exist_ok=True)
            cmd = [nvcc] + flags + ["-c", src, "-o", obj]
            print("hauler: " + " ".join(cmd), flush=True)
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out = p.stdout.decode("utf-8", "replace")
            if p.returncode != 0 and os.path.exists(obj):
                os.remove(obj)
            return obj, p.returncode, f"$ {' '.join(cmd)}\n{out}"

        jobs = config.get("HAULER_BUILD_JOBS") or os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(sources)))) as pool:
            results = list(pool.map(compile_one, sources))
        failed = [(o, log) for o, rc, log in results if rc != 0]
        if failed:
            return give_up(f"nvcc failed on {len(failed)} of {len(sources)} source(s)",
                           "\n".join(log for _, log in failed)[-8000:])
        cmd = [nvcc] + NVCC_LINK_FLAGS + arch_flags + ["-o", out_path] + [o for o, _, _ in results]
        print("hauler: " + " ".join(cmd), flush=True)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if p.returncode != 0:
            return give_up("linking libhauler_cuda.so failed",
                           f"$ {' '.join(cmd)}\n" + p.stdout.decode("utf-8", "replace")[-8000:])
        info.update(built=True, reason="built", library=CUDA_LIB)
        return info

    @staticmethod
    def _nvcc_release(nvcc):
        try:
            out = subprocess.run([nvcc, "--version"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, timeout=60).stdout.decode()
        except (OSError, subprocess.SubprocessError):
            return None
        m = re.search(r"release [0-9.]+, V([0-9.]+)", out)
        return m.group(1) if m else None


# A malformed build setting stops the build with the variable and value named.
try:
    for _s in config.SETTINGS:
        if _s.when == config.BUILD:
            config.get(_s.name)
    gencode_flags(config.get("HAULER_CUDA_ARCH"))
except config.ConfigError as _e:
    sys.exit(f"hauler: {_e}")

jobs = config.get("HAULER_BUILD_JOBS") or os.cpu_count() or 1
ParallelCompile(None, default=jobs).install()

packages, package_dir = _packages()

ext_modules = [
    Pybind11Extension(
        "hauler._core",
        core_sources(),
        include_dirs=["csrc"],
        cxx_std=17,                      # -std=c++17; Pybind11Extension adds -fvisibility=hidden
        extra_compile_args=CXX_FLAGS,
        extra_link_args=LINK_FLAGS,
        depends=headers(),
    ),
]

setup(
    name="hauler",
    version=_version(),
    description="Moves data for GPU programs: MPI datatypes, gathers, NVMe I/O, KV-cache blocks",
    long_description=open(os.path.join(ROOT, "README.md")).read()
    if os.path.exists(os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=packages,
    package_dir=package_dir,
    package_data={"hauler.bench": ["programs/*.c", "programs/*.py"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExt},
    install_requires=["numpy"],
    extras_require={
        # torch_geometric: pure Python; 2.8.1 installs beside torch 2.13.0 without touching it
        "test": ["pytest", "hypothesis", "numpy", "mpi4py>=3.1", "torch_geometric>=2.5,<2.9"],
        "torch": ["torch>=2.1,<2.14"],
        "plot": ["matplotlib>=3.5"],  # hauler-bench all's plots
    },
    entry_points={
        "console_scripts": [
            "hauler = hauler.cli:main",
            "hauler-bench = hauler.bench.cli:main",
        ],
    },
    zip_safe=False,
)
