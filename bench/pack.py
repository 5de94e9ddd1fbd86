"""``hauler-bench pack``: datatype pack/unpack bandwidth against Open MPI and memcpy.

For each case (a vector type of one block size and base type, or a subarray
type) one row: hauler pack and unpack GB/s, MPI_Pack and MPI_Unpack GB/s of
the MPI library behind mpi4py (the same type built with MPI's constructors),
memcpy GB/s of the same number of bytes, the ratios, and a correctness column
checked once per row outside the timed loops. A ``# targets`` block at the end
says where this run stands against issue 2's targets.

    from hauler.bench import pack
    report = pack.run(pack.Options(size=8 << 20, repeat=3))   # a core.Report

GB/s count the packed bytes once (1 GB = 1e9 B). Pack and memcpy both read
and write that many bytes, so the memcpy ratio is the same counting bytes read
and written.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import core
from .core import Column, Report, format_size

NAME = "pack"
HELP = "datatype pack/unpack GB/s: vector and subarray types vs MPI_Pack (mpi4py) and memcpy"

BASES = {"byte": 1, "double": 8}
KINDS = ("vector", "subarray")
BLOCKS = (1, 2, 4, 8, 12, 16, 24, 32, 64, 128, 256, 512, 1 << 10, 2 << 10, 4 << 10, 8 << 10,
          16 << 10, 32 << 10, 64 << 10)
QUICK_BLOCKS = (1, 8, 16, 64, 4 << 10)
QUICK_SUBARRAYS = ("face-k", "tile-2d")
DEFAULT_SIZE = 64 << 20
QUICK_SIZE = 1 << 20
DEFAULT_REPEAT = 21
QUICK_REPEAT = 3

TARGETS = (  # (key, description, rows selected, ratios, threshold)
    ("mpi_1B", ">= 10x Open MPI at 1-byte blocks", lambda r: r["block"] == 1, ("pack_vs_mpi", "unpack_vs_mpi"), 10.0),
    ("mpi_8_16B", ">= 2x Open MPI at 8-16 byte blocks", lambda r: 8 <= r["block"] <= 16,
     ("pack_vs_mpi", "unpack_vs_mpi"), 2.0),
    ("mpi_all", ">= 0.9x Open MPI at every size", lambda r: True, ("pack_vs_mpi", "unpack_vs_mpi"), 0.9),
    ("memcpy_64B", ">= 70% of memcpy for blocks >= 64 B", lambda r: r["block"] >= 64,
     ("pack_vs_memcpy", "unpack_vs_memcpy"), 0.7),
)


# -- cases ----------------------------------------------------------------------------------------

@dataclass
class Case:
    """One datatype: `sizes` of elements of `base` (C order), the block `subsizes` at `starts`.

    A vector of n blocks of b bytes with stride 2b is the 2-D subarray sizes (n, 2b/e),
    subsizes (n, b/e), starts (0, 0); it is built with the vector constructors all the same."""
    name: str
    kind: str                       # "vector" | "subarray"
    base: str                       # "byte" | "double"
    sizes: Tuple[int, ...]          # in elements
    subsizes: Tuple[int, ...]
    starts: Tuple[int, ...]

    @property
    def elem(self) -> int:
        return BASES[self.base]

    @property
    def packed(self) -> int:
        return prod(self.subsizes) * self.elem

    @property
    def extent(self) -> int:
        if self.kind == "vector":  # MPI's vector extent ends at the last block
            n, row = self.sizes
            return ((n - 1) * row + self.subsizes[1]) * self.elem
        return prod(self.sizes) * self.elem

    @property
    def block(self) -> int:
        """Bytes of the contiguous runs (inner dimensions merged where they are whole)."""
        b = self.elem
        for d in reversed(range(len(self.sizes))):
            b *= self.subsizes[d]
            if self.subsizes[d] != self.sizes[d]:
                break
        return b

    @property
    def stride(self) -> Optional[int]:
        """Bytes between consecutive runs (None when the type is one run)."""
        s = self.elem
        for d in reversed(range(len(self.sizes))):
            if self.subsizes[d] != self.sizes[d]:
                return s * self.sizes[d] if d > 0 and prod(self.subsizes[:d]) > 1 else None
            s *= self.sizes[d]
        return None

    def describe(self) -> str:
        if self.kind == "vector":
            n, row = self.sizes
            return f"vector({n}, {self.subsizes[1]}, {row}, {self.base})"
        return (f"subarray(sizes={list(self.sizes)}, subsizes={list(self.subsizes)}, "
                f"starts={list(self.starts)}, {self.base})")

    def hauler_type(self) -> Any:
        from hauler.datatype import Datatype
        base = Datatype.named(self.base)
        if self.kind == "vector":
            n, row = self.sizes
            return Datatype.vector(n, self.subsizes[1], row, base)
        return Datatype.subarray(self.sizes, self.subsizes, self.starts, base, order="C")

    def mpi_type(self, MPI: Any) -> Any:
        base = {"byte": MPI.BYTE, "double": MPI.DOUBLE}[self.base]
        if self.kind == "vector":
            n, row = self.sizes
            return base.Create_vector(n, self.subsizes[1], row).Commit()
        return base.Create_subarray(list(self.sizes), list(self.subsizes), list(self.starts),
                                    order=MPI.ORDER_C).Commit()

    def view(self, buf: Any) -> Any:
        """The numpy view of `buf` (uint8) whose C-order bytes are the packed message."""
        e = self.elem
        whole = buf[:prod(self.sizes) * e] if self.kind == "subarray" else buf[:self.sizes[0] * self.sizes[1] * e]
        if self.kind == "vector" and whole.size < self.sizes[0] * self.sizes[1] * e:
            raise AssertionError("buffer too small for the case")
        arr = whole.reshape(tuple(self.sizes) + (e,))
        return arr[tuple(slice(s, s + n) for s, n in zip(self.starts, self.subsizes)) + (slice(None),)]

    @property
    def span(self) -> int:
        """Bytes of source the case needs (vector: whole rows, so view() can reshape)."""
        return prod(self.sizes) * self.elem


def vector_case(block: int, base: str, size: int) -> Case:
    e = BASES[base]
    n = max(1, size // block)
    return Case("vector", "vector", base, (n, 2 * block // e), (n, block // e), (0, 0))


def subarray_cases(size: int) -> List[Case]:
    """Halo faces of a 3-D box of doubles, a 3-D sub-box, and 2-D tiles (doubles and bytes),
    each about `size` bytes packed. The faces are planes of a box that is 8 deep across the
    face, so the face normal to the fastest dimension takes one double per 64-byte line, as
    the face of a large cube does."""
    q = 512 if size >= 8 * 512 * 4 else 16
    p = max(1, size // (8 * q))
    b0 = max(1, size // (32 * 32 * 8))
    r8 = max(1, size // (16 * 8))
    r1 = max(1, size // 24)
    return [
        Case("face-k", "subarray", "double", (p + 2, q + 2, 8), (p, q, 1), (1, 1, 1)),
        Case("face-j", "subarray", "double", (p + 2, 8, q + 2), (p, 1, q), (1, 1, 1)),
        Case("face-i", "subarray", "double", (8, p + 2, q + 2), (1, p, q), (1, 1, 1)),
        Case("box-3d", "subarray", "double", (b0 + 2, 36, 36), (b0, 32, 32), (1, 2, 2)),
        Case("tile-2d", "subarray", "double", (r8, 64), (r8, 16), (0, 24)),
        Case("tile-2d", "subarray", "byte", (r1, 64), (r1, 24), (0, 20)),
    ]


def make_cases(kinds: Sequence[str], bases: Sequence[str], size: int, quick: bool = False) -> List[Case]:
    cases: List[Case] = []
    if "vector" in kinds:
        for base in ("byte", "double"):
            if base not in bases:
                continue
            e = BASES[base]
            for b in (QUICK_BLOCKS if quick else BLOCKS):
                if b >= e and b % e == 0 and b <= size:
                    cases.append(vector_case(b, base, size))
    if "subarray" in kinds:
        for c in subarray_cases(size):
            if c.base in bases and (not quick or c.name in QUICK_SUBARRAYS):
                cases.append(c)
    return cases


# -- options --------------------------------------------------------------------------------------

@dataclass
class Options:
    size: int = DEFAULT_SIZE
    repeat: int = DEFAULT_REPEAT
    warmup: int = 1
    threads: Optional[int] = None        # None: hauler's default (HAULER_THREADS, else the cores)
    kinds: Tuple[str, ...] = KINDS
    bases: Tuple[str, ...] = tuple(BASES)
    quick: bool = False
    mpi: bool = True                     # False: skip the MPI columns (says so in a WARNING)
    seed: int = 12345








def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=core.size_arg, default=None,
                   help=f"packed bytes per call, e.g. 8M (default {format_size(DEFAULT_SIZE)}; "
                        f"{format_size(QUICK_SIZE)} with --quick)")
    p.add_argument("--repeat", type=core.positive_int, default=None,
                   help=f"timed rounds per case (each times every contender once); the median is reported (default {DEFAULT_REPEAT}; "
                        f"{QUICK_REPEAT} with --quick)")
    p.add_argument("--warmup", type=core.non_negative_int, default=1, help="untimed calls of each contender before the rounds (default 1)")
    p.add_argument("--threads", type=core.positive_int, default=None,
                   help="threads for hauler pack/unpack and the threaded memcpy "
                        "(default: hauler's default, HAULER_THREADS or the core count)")
    p.add_argument("--cases", type=core.list_arg(KINDS), default=KINDS, metavar="vector,subarray",
                   help="which type families to run (default both)")
    p.add_argument("--base", type=core.list_arg(tuple(BASES)), default=tuple(BASES), metavar="byte,double",
                   help="base types (default both)")
    p.add_argument("--quick", action="store_true",
                   help=f"a few small cases (for tests): size {format_size(QUICK_SIZE)}, repeat {QUICK_REPEAT}, "
                        f"blocks {','.join(format_size(b) for b in QUICK_BLOCKS)}, {' and '.join(QUICK_SUBARRAYS)}")
    p.add_argument("--no-mpi", action="store_true", help="skip MPI_Pack/MPI_Unpack (do not import mpi4py)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the random source data")
    core.add_format_args(p)


def options_from_args(args: argparse.Namespace) -> Options:
    return Options(size=args.size or (QUICK_SIZE if args.quick else DEFAULT_SIZE),
                   repeat=args.repeat or (QUICK_REPEAT if args.quick else DEFAULT_REPEAT),
                   warmup=max(0, args.warmup), threads=args.threads, kinds=tuple(args.cases),
                   bases=tuple(args.base), quick=args.quick, mpi=not args.no_mpi, seed=args.seed)


def main(args: argparse.Namespace) -> int:
    rep = run(options_from_args(args), core.output_of(args))
    return 0 if all(r["correct"] for r in rep.rows) else 1


# -- the benchmark --------------------------------------------------------------------------------

def _fx(v: float) -> str:
    return f"{v:.2f}"


COLUMNS = [
    Column("case", "case", "", left=True, width=7),
    Column("base", "base", "", left=True, width=6),
    Column("block", "block", "B", format_size, width=5),
    Column("stride", "stride", "B", format_size, width=6),
    Column("hauler_pack_gbps", "pack", "GB/s", _fx, width=6),
    Column("hauler_unpack_gbps", "unpack", "GB/s", _fx, width=6),
    Column("mpi_pack_gbps", "MPI_Pack", "GB/s", _fx),
    Column("mpi_unpack_gbps", "MPI_Unpk", "GB/s", _fx),
    Column("memcpy1_gbps", "memcpy1", "GB/s", _fx),
    Column("memcpyN_gbps", "memcpyN", "GB/s", _fx),
    Column("pack_vs_mpi", "pk/MPI", "x", _fx),
    Column("unpack_vs_mpi", "up/MPI", "x", _fx),
    Column("pack_vs_memcpy", "pk/mcpy", "x", _fx),
    Column("unpack_vs_memcpy", "up/mcpy", "x", _fx),
    Column("correct_text", "correct", "", left=True, width=7),
    Column("kernel", "kernel", "", left=True),
]


def _header(opts: Options, threads: int, hinfo: Dict[str, Any], minfo: Dict[str, Any],
            mach: Dict[str, Any]) -> List[Tuple[str, str]]:
    mpi_text = (f"{minfo['library']} (MPI {minfo['standard']}, mpi4py {minfo['mpi4py']})"
                if minfo.get("available") else f"NONE ({minfo.get('error')})")
    return [
        ("hauler", f"{hinfo['version']} ({hinfo['core']}); build: {hinfo['build_summary']}; "
                   f"cuda: {'available' if hinfo['cuda_available'] else 'not available'}: {hinfo['cuda_status']}"),
        ("threads", f"{threads} for hauler pack/unpack and memcpyN (hauler's default {hinfo['threads_default']}); "
                    f"MPI_Pack runs on 1"),
        ("MPI", f"{mpi_text}; numpy {hinfo['numpy']}; python {mach['python']}"),
        ("machine", f"{mach['cpu']}, {mach['cores_usable']} usable cores of {mach['cores_os']}, {mach['memory']}; "
                    f"{mach['host']}, {mach['os']}; {mach['date']}"),
        ("size", f"{format_size(opts.size)} packed per call; {opts.warmup} warm-up call(s) each, then "
                 f"{opts.repeat} rounds timing every contender once, back to back; GB/s of the median round"),
        ("GB/s", "packed bytes / s / 1e9, counted once (memcpy moves the same bytes, so the mcpy ratio is "
                 "the same counting bytes read and written)"),
        ("x", f"median over rounds of the within-round ratio; mcpy = the faster of memcpy1 (numpy.copyto, "
              f"1 thread) and memcpyN (hauler contiguous pack, {threads} threads) in each round"),
        ("correct", "hauler pack == numpy strided view" + (" == MPI_Pack" if minfo.get("available") else "") +
                    "; unpack restores the source exactly "
                    "(the type's bytes poisoned first); checked outside the timed calls"),
        ("cases", "vector: stride 2 x block; face-k/j/i: inner plane across dim k/j/i of an (n+2, 514, 8)-"
                  "like box of doubles; box-3d: 32x32 of 36x36 planes; tile-2d: 16 doubles / 24 B of 64-wide rows"),
    ]


def run(opts: Options, out: Optional[core.Output] = None) -> Report:
    """Run the pack benchmark; rows are printed through `out` as they are measured."""
    import numpy as np

    import hauler
    from hauler.datatype import BYTE, Datatype

    hinfo = core.hauler_info()
    threads = opts.threads or hinfo["threads_default"] or core.usable_cores()
    mach = core.machine_info()
    warnings: List[str] = []
    MPI = None
    if opts.mpi:
        minfo = core.mpi_info()
        if minfo["available"]:
            from mpi4py import MPI  # noqa: N812 - the library's name
        else:
            warnings.append(f"mpi4py/MPI unavailable ({minfo['error']}): NO MPI_Pack/MPI_Unpack columns, "
                            f"no MPI targets; correctness is checked against numpy only. "
                            f"Install mpi4py (pip install mpi4py) against Open MPI to compare.")
    else:
        minfo = {"available": False, "error": "skipped (--no-mpi)"}
        warnings.append("--no-mpi: MPI_Pack/MPI_Unpack NOT measured; no MPI targets")

    cases = make_cases(opts.kinds, opts.bases, opts.size, opts.quick)
    config = {"size": opts.size, "repeat": opts.repeat, "warmup": opts.warmup, "threads": threads,
              "cases": list(opts.kinds), "bases": list(opts.bases), "quick": opts.quick, "mpi": opts.mpi,
              "seed": opts.seed, "bandwidth": "packed bytes counted once, decimal GB/s, median round",
              "ratios": "median over rounds of the within-round ratio"}
    rep = Report(benchmark=NAME, config=config, header=_header(opts, threads, hinfo, minfo, mach),
                 columns=COLUMNS, warnings=warnings,
                 info={"hauler": hinfo, "mpi": minfo, "machine": mach})
    out = out or core.Output("table")
    out.begin(rep)
    if not cases:
        rep.warnings.append("no cases selected (check --cases, --base and --size)")
        out.end(rep)
        return rep

    span = max(max(c.span, c.extent) for c in cases)
    packed_max = max(c.packed for c in cases)
    rng = np.random.default_rng(opts.seed)
    src = rng.integers(0, 1 << 63, size=(span + 7) // 8, dtype=np.uint64).view(np.uint8)[:span]
    dst = np.empty(span, dtype=np.uint8)
    zeros = np.zeros(packed_max, dtype=np.uint8)
    out_h = np.empty(packed_max, dtype=np.uint8)
    out_m = np.empty(packed_max, dtype=np.uint8)
    out_c = np.empty(packed_max, dtype=np.uint8)

    for case in cases:
        row = _run_case(case, opts, threads, np, Datatype, BYTE, MPI, src, dst, zeros, out_h, out_m, out_c)
        rep.rows.append(row)
        out.row(rep, row)

    bad = [r for r in rep.rows if not r["correct"]]
    if bad:
        rep.warnings.append(f"{len(bad)} row(s) INCORRECT: " + "; ".join(
            f"{r['case']}/{r['base']}/{format_size(r['block'])}: {r['correct_text']} "
            f"({', '.join(k for k, v in r['checks'].items() if v is False)})" for r in bad))
    rep.targets = evaluate_targets(rep.rows, MPI is not None)
    m1 = [core.gbps(r["packed_bytes"], t) for r in rep.rows for t in r["timings"]["memcpy1"]["times_s"]]
    if m1:
        rep.info["memcpy1_range_gbps"] = [min(m1), max(m1)]
        rep.footer.append(f"noise: memcpy1 ranged {min(m1):.1f}-{max(m1):.1f} GB/s over the rounds of this run "
                          f"(x{max(m1) / min(m1):.1f}); read the within-round ratios, not GB/s across rows")
    out.end(rep)
    return rep


def _run_case(case: Case, opts: Options, threads: int, np: Any, Datatype: Any, BYTE: Any, MPI: Any,
              src: Any, dst: Any, zeros: Any, out_h: Any, out_m: Any, out_c: Any) -> Dict[str, Any]:
    n, ext = case.packed, case.extent
    t = case.hauler_type()
    s, d = src[:ext], dst[:ext]
    oh, om, oc, z = out_h[:n], out_m[:n], out_c[:n], zeros[:n]
    checks: Dict[str, Optional[bool]] = {}

    # -- correctness, outside the timed calls
    checks["size"] = t.pack_size() == n and t.extent == ext
    oh.fill(0xA5)
    t.pack(s, out=oh, threads=threads)
    ref = np.ascontiguousarray(case.view(src)).reshape(-1)
    checks["pack_vs_numpy"] = bool(np.array_equal(oh, ref))
    del ref
    d[:] = s
    t.unpack(z, d, threads=threads)                       # poison exactly the type's bytes
    checks["unpack_writes_type_map"] = not np.any(case.view(dst))
    t.unpack(oh, d, threads=threads)
    checks["unpack_restores"] = bool(np.array_equal(d, s))
    mt = None
    if MPI is not None:
        mt = case.mpi_type(MPI)
        lb, mext = mt.Get_extent()
        checks["mpi_extent"] = lb == 0 and mext == ext and mt.Get_size() == n
        om.fill(0x5A)
        pos = mt.Pack(s, om, 0, MPI.COMM_SELF)
        checks["pack_vs_mpi"] = pos == n and bool(np.array_equal(oh, om))

    # -- timings, interleaved round by round (see core.time_interleaved)
    contig = Datatype.contiguous(n, BYTE)
    cs = src[:n]
    fns: Dict[str, Callable[[], Any]] = {
        "hauler_pack": lambda: t.pack(s, out=oh, threads=threads),
        "hauler_unpack": lambda: t.unpack(oh, d, threads=threads),
        "memcpy1": lambda: np.copyto(oc, cs),
        "memcpyN": lambda: contig.pack(cs, out=oc, threads=threads),
    }
    if mt is not None:
        fns["mpi_pack"] = lambda: mt.Pack(s, om, 0, MPI.COMM_SELF)
        fns["mpi_unpack"] = lambda: mt.Unpack(om, 0, d, MPI.COMM_SELF)
    tim = core.time_interleaved(fns, opts.repeat, opts.warmup)
    # the memcpy reference of each round: the faster of the two memcpys in that round
    best_memcpy = core.Timing([min(a, b) for a, b in zip(tim["memcpy1"].times, tim["memcpyN"].times)])

    # -- the timed calls left everything as the checks did
    checks["after_timing"] = bool(np.array_equal(d, s)) and bool(np.array_equal(oh, case.view(src).reshape(-1))) \
        and bool(np.array_equal(oc, cs)) and (mt is None or bool(np.array_equal(om, oh)))
    if mt is not None:
        mt.Free()

    g = {k: core.gbps(n, v.median) for k, v in tim.items()}
    memcpy = core.gbps(n, best_memcpy.median)
    ratio = core.paired_ratio
    layout = t.layout()
    correct = all(v is not False for v in checks.values())
    row: Dict[str, Any] = {
        "case": case.name, "kind": case.kind, "base": case.base, "block": case.block, "stride": case.stride,
        "type": case.describe(), "packed_bytes": n, "extent": ext,
        "hauler_pack_gbps": g["hauler_pack"], "hauler_unpack_gbps": g["hauler_unpack"],
        "mpi_pack_gbps": g.get("mpi_pack"), "mpi_unpack_gbps": g.get("mpi_unpack"),
        "memcpy1_gbps": g["memcpy1"], "memcpyN_gbps": g["memcpyN"], "memcpy_gbps": memcpy,
        "memcpy_faster": "memcpy1" if g["memcpy1"] >= g["memcpyN"] else "memcpyN",
        "pack_vs_mpi": ratio(tim["hauler_pack"], tim["mpi_pack"]) if "mpi_pack" in tim else None,
        "unpack_vs_mpi": ratio(tim["hauler_unpack"], tim["mpi_unpack"]) if "mpi_unpack" in tim else None,
        "pack_vs_memcpy": ratio(tim["hauler_pack"], best_memcpy),
        "unpack_vs_memcpy": ratio(tim["hauler_unpack"], best_memcpy),
        "correct": correct,
        "correct_text": ("ok" if MPI is not None else "ok-np") if correct else "FAIL",
        "checks": checks,
        "kernel": f"{layout['kernel']}" + (f"/w{layout['word']}" if layout.get("word") else ""),
        "layout": {"form": layout["form"], "dims": layout["dims"], "runs": layout["runs"][:4],
                   "kernel": layout["kernel"], "word": layout["word"]},
        "threads": threads,
        "timings": {k: v.as_dict(n) for k, v in tim.items()},
    }
    for key, a, b in (("pack_vs_mpi", "hauler_pack", "mpi_pack"), ("unpack_vs_mpi", "hauler_unpack", "mpi_unpack"),
                      ("pack_vs_memcpy", "hauler_pack", None), ("unpack_vs_memcpy", "hauler_unpack", None)):
        if b is None or b in tim:  # the spread of the within-round ratios: how far to trust the median
            row[key + "_quartiles"] = list(core.quartiles(core.paired_ratios(tim[a], tim[b] if b else best_memcpy)))
    return row


def evaluate_targets(rows: List[Dict[str, Any]], have_mpi: bool) -> List[Dict[str, Any]]:
    """Issue 2's targets against this run's rows: PASS / MISS / N/A with the worst figure."""
    out = []
    for key, desc, select, ratios, need in TARGETS:
        sel = [r for r in rows if select(r)]
        t: Dict[str, Any] = {"key": key, "target": desc, "threshold": need}
        uses_mpi = ratios[0].endswith("_mpi")
        if uses_mpi and not have_mpi:
            t.update(status="N/A", measured="no MPI in this run", worst=None)
        elif not sel:
            t.update(status="N/A", measured="no such rows in this run", worst=None)
        else:
            figs = [(r[k], k, r) for r in sel for k in ratios if r.get(k) is not None]
            worst_v, worst_k, worst_r = min(figs, key=lambda f: f[0])
            misses = sorted((f for f in figs if f[0] < need), key=lambda f: f[0])
            t["status"] = "MISS" if misses else "PASS"
            t["worst"] = worst_v
            t["misses"] = [{"row": _rowname(r), "direction": _dir(k), "ratio": v} for v, k, r in misses]
            t["measured"] = (f"{len(misses)} of {len(figs)} below; worst " if misses else f"all {len(figs)} met; worst ") \
                + ", ".join(f"{_rowname(r)} {_dir(k)} {v:.2f}x" for v, k, r in (misses or [(worst_v, worst_k, worst_r)])[:3]) \
                + (", ..." if len(misses) > 3 else "")
        out.append(t)
    return out


def _rowname(r: Dict[str, Any]) -> str:
    return f"{r['case']}/{r['base']}/{format_size(r['block'])}"


def _dir(key: str) -> str:
    return "unpack" if key.startswith("unpack") else "pack"
