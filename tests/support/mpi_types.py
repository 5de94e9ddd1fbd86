"""Random MPI derived datatypes, built twice: once through mpi4py (the MPI library's own
constructors) and once through hauler's constructors, from the same description.

A `Spec` is a small tree naming the constructor and its arguments in MPI C order; its repr is
the hauler call that builds it, so a failing hypothesis example reads as code. `type_specs()`
draws random specs (every constructor, nesting up to 4 deep, counts > 1, zero-length blocks,
negative displacements, strides and lower bounds, resized, dup, subarray in both orders, darray
with every distribution). Sizes are bounded so that one example stays small.

An independent reference of the standard's definitions, in plain Python: `typemap(spec,
extent_of)` gives the byte offsets of every basic entry in type-map order (each child's extent
from `extent_of`: the library's, or the standard's), and `ref_bounds(spec)` the standard's size,
lb, extent and true bounds (explicit lb/ub markers sticky). They say which types overlap
(unpacking into those is erroneous in MPI, so unpack comparisons skip them), what the standard
packs where the library departs from it, and which of those departures are known
(`library_deviations`)."""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
from hypothesis import strategies as st

# hauler name -> (mpi4py attribute, [(offset, length)] of its basic parts, extent)
NAMED: Dict[str, Tuple[str, List[Tuple[int, int]], int]] = {
    "byte": ("BYTE", [(0, 1)], 1),
    "char": ("CHAR", [(0, 1)], 1),
    "c_bool": ("C_BOOL", [(0, 1)], 1),
    "short": ("SHORT", [(0, 2)], 2),
    "int16": ("INT16_T", [(0, 2)], 2),
    "int": ("INT", [(0, 4)], 4),
    "float": ("FLOAT", [(0, 4)], 4),
    "long": ("LONG", [(0, 8)], 8),
    "uint64": ("UINT64_T", [(0, 8)], 8),
    "double": ("DOUBLE", [(0, 8)], 8),
    "long_double": ("LONG_DOUBLE", [(0, 16)], 16),
    "c_float_complex": ("C_FLOAT_COMPLEX", [(0, 8)], 8),
    "c_double_complex": ("C_DOUBLE_COMPLEX", [(0, 16)], 16),
    "2int": ("TWOINT", [(0, 4), (4, 4)], 8),
    "float_int": ("FLOAT_INT", [(0, 4), (4, 4)], 8),
    "short_int": ("SHORT_INT", [(0, 2), (4, 4)], 8),
    "double_int": ("DOUBLE_INT", [(0, 8), (8, 4)], 16),
    "long_int": ("LONG_INT", [(0, 8), (8, 4)], 16),
    "long_double_int": ("LONG_DOUBLE_INT", [(0, 16), (16, 4)], 32),
}
COMMON_NAMED = ["byte", "char", "short", "int", "float", "double", "long"]

# Bounds on one drawn type (per element): keeps buffers and type maps small.
MAX_SPAN = 1 << 15       # |extent| and true extent, bytes
MAX_ENTRIES = 1500       # basic entries in the type map


@dataclass(frozen=True)
class Spec:
    kind: str
    args: Tuple[Any, ...] = ()
    children: Tuple["Spec", ...] = ()

    # -- readable form: the hauler call ------------------------------------------------------
    def __repr__(self) -> str:
        if self.kind == "named":
            return "TWO_INT" if self.args[0] == "2int" else self.args[0].upper()
        c = self.children
        a = self.args
        if self.kind == "struct":
            return f"struct({list(a[0])}, {list(a[1])}, {list(c)!r})"
        if self.kind == "resized":
            return f"resized({c[0]!r}, {a[0]}, {a[1]})"
        if self.kind == "dup":
            return f"dup({c[0]!r})"
        if self.kind == "subarray":
            return f"subarray({list(a[0])}, {list(a[1])}, {list(a[2])}, {c[0]!r}, order={a[3]!r})"
        if self.kind == "darray":
            size, rank, g, d, da, p, order = a
            return (f"darray({size}, {rank}, {list(g)}, {list(d)}, {list(da)}, {list(p)}, {c[0]!r}, "
                    f"order={order!r})")
        parts = [repr(list(x)) if isinstance(x, tuple) else repr(x) for x in a]
        return f"{self.kind}({', '.join(parts + [repr(c[0])])})"

    def _repr_pretty_(self, p, cycle) -> None:  # hypothesis prints failing examples with this
        p.text(repr(self))

    def walk(self) -> Iterator["Spec"]:
        yield self
        for ch in self.children:
            yield from ch.walk()

    def kinds(self) -> set:
        return {s.kind for s in self.walk()}


def named(name: str) -> Spec:
    return Spec("named", (name,))


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------
def build_hauler(spec: Spec):
    from hauler.datatype import Datatype

    k, a = spec.kind, spec.args
    if k == "named":
        return Datatype.named(a[0])
    if k == "struct":
        return Datatype.struct(list(a[0]), list(a[1]), [build_hauler(c) for c in spec.children])
    old = build_hauler(spec.children[0])
    if k == "contiguous":
        return Datatype.contiguous(a[0], old)
    if k == "vector":
        return Datatype.vector(a[0], a[1], a[2], old)
    if k == "hvector":
        return Datatype.hvector(a[0], a[1], a[2], old)
    if k == "indexed":
        return Datatype.indexed(list(a[0]), list(a[1]), old)
    if k == "hindexed":
        return Datatype.hindexed(list(a[0]), list(a[1]), old)
    if k == "indexed_block":
        return Datatype.indexed_block(a[0], list(a[1]), old)
    if k == "hindexed_block":
        return Datatype.hindexed_block(a[0], list(a[1]), old)
    if k == "subarray":
        return Datatype.subarray(list(a[0]), list(a[1]), list(a[2]), old, order=a[3])
    if k == "darray":
        from hauler.datatype import DEFAULT_DARG
        size, rank, g, d, da, p, order = a
        return Datatype.darray(size, rank, list(g), list(d), [DEFAULT_DARG if x is None else x for x in da],
                               list(p), old, order=order)
    if k == "resized":
        return Datatype.resized(old, a[0], a[1])
    if k == "dup":
        return Datatype.dup(old)
    raise AssertionError(k)


def _mpi():
    from mpi4py import MPI
    return MPI


def _build_mpi(spec: Spec, made: list, nodes: Optional[dict]):
    MPI = _mpi()
    k, a = spec.kind, spec.args
    if k == "named":
        t = getattr(MPI, NAMED[a[0]][0])
    elif k == "struct":
        kids = [_build_mpi(c, made, nodes) for c in spec.children]
        t = MPI.Datatype.Create_struct(list(a[0]), list(a[1]), kids)
    else:
        old = _build_mpi(spec.children[0], made, nodes)
        if k == "contiguous":
            t = old.Create_contiguous(a[0])
        elif k == "vector":
            t = old.Create_vector(a[0], a[1], a[2])
        elif k == "hvector":
            t = old.Create_hvector(a[0], a[1], a[2])
        elif k == "indexed":
            t = old.Create_indexed(list(a[0]), list(a[1]))
        elif k == "hindexed":
            t = old.Create_hindexed(list(a[0]), list(a[1]))
        elif k == "indexed_block":
            t = old.Create_indexed_block(a[0], list(a[1]))
        elif k == "hindexed_block":
            t = old.Create_hindexed_block(a[0], list(a[1]))
        elif k == "subarray":
            order = MPI.ORDER_C if a[3] == "C" else MPI.ORDER_FORTRAN
            t = old.Create_subarray(list(a[0]), list(a[1]), list(a[2]), order=order)
        elif k == "darray":
            size, rank, g, d, da, p, order = a
            dist = {"block": MPI.DISTRIBUTE_BLOCK, "cyclic": MPI.DISTRIBUTE_CYCLIC, "none": MPI.DISTRIBUTE_NONE}
            t = old.Create_darray(size, rank, list(g), [dist[x] for x in d],
                                  [MPI.DISTRIBUTE_DFLT_DARG if x is None else x for x in da], list(p),
                                  MPI.ORDER_C if order == "C" else MPI.ORDER_FORTRAN)
        elif k == "resized":
            t = old.Create_resized(a[0], a[1])
        elif k == "dup":
            t = old.Dup()
        else:
            raise AssertionError(k)
        made.append(t)
    if nodes is not None:
        nodes.setdefault(spec, t)
    return t


@contextlib.contextmanager
def mpi_type(spec: Spec, nodes: Optional[dict] = None):
    """The committed mpi4py twin of `spec`; every handle made is freed on exit. `nodes`, if
    given, is filled with spec-node -> mpi4py type for every node of the tree."""
    made: list = []
    try:
        t = _build_mpi(spec, made, nodes)
        if spec.kind != "named":
            t.Commit()
        yield t
    finally:
        for t in reversed(made):
            t.Free()


def mpi_bounds(t) -> Tuple[int, int, int, int, int]:
    """(size, lb, extent, true_lb, true_extent) as the library reports them."""
    lb, ext = t.Get_extent()
    tlb, text = t.Get_true_extent()
    return t.Get_size(), lb, ext, tlb, text


def hauler_bounds(h) -> Tuple[int, int, int, int, int]:
    return h.size, h.lb, h.extent, h.true_lb, h.true_extent


# ---------------------------------------------------------------------------------------------
# Reference type map (the standard's definitions)
# ---------------------------------------------------------------------------------------------
def darray_owned(g: int, p: int, c: int, dist: str, darg: Optional[int]) -> List[int]:
    """Indices of one dimension owned by process coordinate c (MPI standard, 4.1.4)."""
    if dist == "none":
        return list(range(g))
    if dist == "block":
        b = -(-g // p) if darg is None else darg
        return list(range(min(c * b, g), min((c + 1) * b, g)))
    b = 1 if darg is None else darg
    return [i for i in range(g) if (i // b) % p == c]


def darray_coords(rank: int, psizes: List[int]) -> List[int]:
    """Process grid coordinates: row-major in both orders (MPI standard)."""
    out = []
    for p in reversed(psizes):
        out.append(rank % p)
        rank //= p
    return list(reversed(out))


def _elements(sizes: List[int], idx_lists: List[List[int]], order: str) -> np.ndarray:
    """Linear element indices of the cartesian product of idx_lists, in type-map order
    (fastest dimension innermost) for an array of `sizes` stored in `order`."""
    n = len(sizes)
    dims = list(range(n)) if order == "C" else list(reversed(range(n)))  # slowest first
    mult = [0] * n
    acc = 1
    for i in (reversed(range(n)) if order == "C" else range(n)):
        mult[i] = acc
        acc *= sizes[i]
    out = [sum(mult[dims[j]] * combo[j] for j in range(n))
           for combo in itertools.product(*[idx_lists[i] for i in dims])]
    return np.array(out, dtype=np.int64)


def _tile(child: Tuple[np.ndarray, np.ndarray], starts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    off, ln = child
    if len(starts) == 0 or len(off) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (starts[:, None] + off[None, :]).ravel(), np.tile(ln, len(starts))


def _child_starts(spec: Spec, e: int) -> np.ndarray:
    """Byte displacements of the copies of the single child of `spec`, in type-map order."""
    k, a = spec.kind, spec.args
    ar = lambda n: np.arange(n, dtype=np.int64)  # noqa: E731
    if k in ("resized", "dup"):
        return ar(1)
    if k == "contiguous":
        return e * ar(a[0])
    if k in ("vector", "hvector"):
        step = a[2] * e if k == "vector" else a[2]
        return (step * ar(a[0])[:, None] + e * ar(a[1])[None, :]).ravel()
    if k in ("indexed", "hindexed", "indexed_block", "hindexed_block"):
        if k.endswith("block"):
            bls, ds = [a[0]] * len(a[1]), list(a[1])
        else:
            bls, ds = list(a[0]), list(a[1])
        unit = e if k in ("indexed", "indexed_block") else 1
        return np.concatenate([d * unit + e * ar(bl) for bl, d in zip(bls, ds)] or [ar(0)])
    if k == "subarray":
        sizes, subs, starts0, order = a
        idx = [list(range(s, s + n)) for s, n in zip(starts0, subs)]
        return e * _elements(list(sizes), idx, order)
    if k == "darray":
        size, rank, g, d, da, p, order = a
        coords = darray_coords(rank, list(p))
        idx = [darray_owned(g[i], p[i], coords[i], d[i], da[i]) for i in range(len(g))]
        return e * _elements(list(g), idx, order)
    raise AssertionError(k)


def _members(spec: Spec, extent_of: Callable[[Spec], int]) -> List[Tuple[Spec, np.ndarray]]:
    """(child, displacements of its copies) for every member, in type-map order."""
    if spec.kind == "struct":
        return [(ch, d + extent_of(ch) * np.arange(bl, dtype=np.int64))
                for bl, d, ch in zip(spec.args[0], spec.args[1], spec.children)]
    ch = spec.children[0]
    return [(ch, _child_starts(spec, extent_of(ch)))]


def typemap(spec: Spec, extent_of: Callable[[Spec], int]) -> Tuple[np.ndarray, np.ndarray]:
    """(offsets, lengths) of the basic entries of one element, in type-map order, with the
    children's extents from `extent_of`."""
    if spec.kind == "named":
        parts = NAMED[spec.args[0]][1]
        return np.array([p[0] for p in parts], np.int64), np.array([p[1] for p in parts], np.int64)
    offs, lens = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for ch, starts in _members(spec, extent_of):
        o, l_ = _tile(typemap(ch, extent_of), starts)
        offs.append(o)
        lens.append(l_)
    return np.concatenate(offs), np.concatenate(lens)


@dataclass(frozen=True)
class RefBounds:
    size: int
    lb: int
    ub: int
    true_lb: int
    true_ub: int
    align: int
    marked: bool  # explicit lb/ub markers (resized, subarray, darray; sticky in parents)

    @property
    def extent(self) -> int:
        return self.ub - self.lb

    def tuple(self) -> Tuple[int, int, int, int, int]:
        """(size, lb, extent, true_lb, true_extent) like mpi_bounds/hauler_bounds."""
        return self.size, self.lb, self.extent, self.true_lb, self.true_ub - self.true_lb


_ALIGN = {"long_double": 16, "c_double_complex": 8, "c_float_complex": 4, "long_double_int": 16,
          "double_int": 8, "long_int": 8, "2int": 4, "float_int": 4, "short_int": 4}


def ref_bounds(spec: Spec, _memo: Optional[dict] = None) -> RefBounds:
    """Bounds by the standard's rules: explicit lb/ub markers (resized, subarray, darray) are
    entries of the type map, copied into every enclosing type, and dominate it; without
    markers lb is the lowest entry and ub the highest, padded ("epsilon") to a multiple of the
    strictest alignment among the entries present (a child's own padding counts as part of it,
    as both Open MPI and MPICH do). A type with no entries has lb = ub = 0 and true bounds 0."""
    memo = {} if _memo is None else _memo
    if spec in memo:
        return memo[spec]
    k, a = spec.kind, spec.args
    if k == "named":
        _attr, parts, ext = NAMED[a[0]]
        r = RefBounds(sum(p[1] for p in parts), 0, ext, 0, max(p[0] + p[1] for p in parts),
                      _ALIGN.get(a[0], ext), False)
        memo[spec] = r
        return r
    ext_of = lambda s: ref_bounds(s, memo).extent  # noqa: E731
    size, align, any_marked = 0, 1, False
    tlb = tub = nlb = nub = mlb = mub = None
    for ch, starts in _members(spec, ext_of):
        c = ref_bounds(ch, memo)
        if len(starts) == 0:
            continue
        lo, hi = int(starts.min()), int(starts.max())
        size += len(starts) * c.size
        if c.size > 0:
            tlb = lo + c.true_lb if tlb is None else min(tlb, lo + c.true_lb)
            tub = hi + c.true_ub if tub is None else max(tub, hi + c.true_ub)
        if c.size == 0 and not c.marked:
            continue  # no entries at all
        align = max(align, c.align)
        if c.marked:
            any_marked = True
            mlb = lo + c.lb if mlb is None else min(mlb, lo + c.lb)
            mub = hi + c.ub if mub is None else max(mub, hi + c.ub)
        else:
            nlb = lo + c.lb if nlb is None else min(nlb, lo + c.lb)
            nub = hi + c.ub if nub is None else max(nub, hi + c.ub)
    tlb, tub = (0, 0) if size == 0 else (tlb, tub)
    if k in ("subarray", "darray"):
        full = int(np.prod(a[0] if k == "subarray" else a[2]))
        r = RefBounds(size, 0, full * ext_of(spec.children[0]), tlb, tub, align, True)
    elif k == "resized":
        r = RefBounds(size, a[0], a[0] + a[1], tlb, tub, ref_bounds(spec.children[0], memo).align, True)
    elif k == "dup":
        r = ref_bounds(spec.children[0], memo)
    elif any_marked:
        r = RefBounds(size, mlb, mub, tlb, tub, align, True)
    elif nlb is None:
        r = RefBounds(size, 0, 0, tlb, tub, align, False)
    else:
        ub = nub
        if (ub - nlb) % align:
            ub += align - (ub - nlb) % align
        r = RefBounds(size, nlb, ub, tlb, tub, align, False)
    memo[spec] = r
    return r


def repeat_map(tm: Tuple[np.ndarray, np.ndarray], count: int, extent: int) -> Tuple[np.ndarray, np.ndarray]:
    return _tile(tm, extent * np.arange(count, dtype=np.int64))


def byte_index(tm: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Every byte offset of the map, in packing order."""
    off, ln = tm
    if len(off) == 0 or ln.sum() == 0:
        return np.zeros(0, np.int64)
    rep = np.repeat(off, ln)
    within = np.arange(len(rep), dtype=np.int64) - np.repeat(np.cumsum(ln) - ln, ln)
    return rep + within


def overlaps(idx: np.ndarray) -> bool:
    return len(np.unique(idx)) != len(idx)


# ---------------------------------------------------------------------------------------------
# Strategy
# ---------------------------------------------------------------------------------------------
KINDS = ["contiguous", "vector", "hvector", "indexed", "hindexed", "indexed_block", "hindexed_block",
         "struct", "subarray", "darray", "resized", "dup"]


def _ok(h) -> bool:
    return abs(h.extent) <= MAX_SPAN and h.true_extent <= MAX_SPAN and abs(h.lb) <= MAX_SPAN


def _entries(spec: Spec) -> int:
    return len(typemap(spec, lambda s: 1)[0])  # entry count does not depend on extents


@st.composite
def type_specs(draw, depth: int = 4, kinds: Tuple[str, ...] = tuple(KINDS), all_named: bool = True) -> Spec:
    """A random type description, nested up to `depth` constructors deep."""
    names = sorted(NAMED) if all_named else COMMON_NAMED
    if depth == 0 or draw(st.integers(0, 5)) == 0:
        return named(draw(st.sampled_from(names)))
    kind = draw(st.sampled_from(kinds))
    sub = type_specs(depth - 1, kinds, all_named)
    if kind == "struct":
        n = draw(st.integers(1, 3))
        kids = [draw(sub) for _ in range(n)]
        bls = [draw(st.integers(0, 3)) for _ in range(n)]
        disps = [draw(st.integers(-96, 160)) for _ in range(n)]
        spec = Spec("struct", (tuple(bls), tuple(disps)), tuple(kids))
    else:
        child = draw(sub)
        spec = _draw_on(draw, kind, child)
    # Keep it small: a spec past the bounds is replaced by its first child. Every drawn spec is
    # valid MPI, so hauler must accept it: an exception here fails the test that drew it.
    h = build_hauler(spec)
    if not _ok(h) or _entries(spec) > MAX_ENTRIES:
        return spec.children[0]
    return spec


def _draw_on(draw, kind: str, child: Spec) -> Spec:
    h = build_hauler(child)
    e = h.extent if h.extent != 0 else max(h.true_extent, 1)
    small = st.integers(0, 4)
    if kind == "contiguous":
        return Spec(kind, (draw(small),), (child,))
    if kind == "vector":
        count, bl = draw(small), draw(st.integers(0, 3))
        stride = draw(st.sampled_from([bl, bl + 1, bl + 2, -bl, -bl - 1, 0, 1, -2, 3 * bl + 1]))
        return Spec(kind, (count, bl, stride), (child,))
    if kind == "hvector":
        count, bl = draw(small), draw(st.integers(0, 3))
        stride = draw(st.integers(-3, 4)) * e * max(bl, 1) + draw(st.sampled_from([0, 0, 0, 1, -3, 8, 16]))
        return Spec(kind, (count, bl, stride), (child,))
    if kind in ("indexed", "hindexed", "indexed_block", "hindexed_block"):
        n = draw(st.integers(0, 4))
        unit = 1 if kind.startswith("indexed") else e
        disps = tuple(draw(st.integers(-6, 10)) * unit + (0 if kind.startswith("indexed") else
                      draw(st.sampled_from([0, 0, 0, 3, -5, 8]))) for _ in range(n))
        if kind.endswith("block"):
            return Spec(kind, (draw(st.integers(0, 3)), disps), (child,))
        bls = tuple(draw(st.integers(0, 3)) for _ in range(n))
        return Spec(kind, (bls, disps), (child,))
    if kind == "subarray":
        nd = draw(st.integers(1, 3))
        sizes = tuple(draw(st.integers(1, 5)) for _ in range(nd))
        subs = tuple(draw(st.integers(1, s)) for s in sizes)
        starts = tuple(draw(st.integers(0, s - n)) for s, n in zip(sizes, subs))
        return Spec(kind, (sizes, subs, starts, draw(st.sampled_from("CF"))), (child,))
    if kind == "darray":
        if h.size == 0:  # Open MPI 4.1 refuses darray of an empty oldtype (MPI_ERR_TYPE)
            child, e = named("int"), 4
        nd = draw(st.integers(1, 3))
        g, d, da, p = [], [], [], []
        for _ in range(nd):
            gi = draw(st.integers(1, 7))
            dist = draw(st.sampled_from(["block", "cyclic", "none"]))
            pi = 1 if dist == "none" else draw(st.integers(1, 3))
            if dist == "none":
                dai = None
            elif dist == "block":
                dai = draw(st.one_of(st.none(), st.integers(-(-gi // pi), gi + 1)))
            else:
                dai = draw(st.one_of(st.none(), st.integers(1, 3)))
            g.append(gi), d.append(dist), da.append(dai), p.append(pi)
        size = int(np.prod(p))
        rank = draw(st.integers(0, size - 1))
        return Spec(kind, (size, rank, tuple(g), tuple(d), tuple(da), tuple(p), draw(st.sampled_from("CF"))),
                    (child,))
    if kind == "resized":
        lb = draw(st.sampled_from([0, 0, -8, -e, h.lb, h.true_lb - 4, 3, -2 * e - 1]))
        ext = draw(st.sampled_from([e, e, 2 * e, e + 8, 0, h.true_extent, 3 * e + 5, -e]))
        return Spec(kind, (lb, ext), (child,))
    if kind == "dup":
        return Spec(kind, (), (child,))
    raise AssertionError(kind)


# ---------------------------------------------------------------------------------------------
# Buffers and the library's MPI_Pack / MPI_Unpack
# ---------------------------------------------------------------------------------------------
def span_of(count: int, extent: int, true_lb: int, true_extent: int, size: int) -> Tuple[int, int]:
    """Bytes [lo, hi) relative to the origin that `count` elements touch."""
    if count == 0 or size == 0:
        return 0, 0
    return true_lb + min(0, (count - 1) * extent), true_lb + true_extent + max(0, (count - 1) * extent)


@dataclass
class Geometry:
    origin: int   # byte offset of the type's origin in the buffer
    length: int   # buffer length


def geometry(count: int, bounds: List[Tuple[int, int, int, int, int]], margin_lo: int = 8,
             margin_hi: int = 8) -> Geometry:
    """A buffer that holds `count` elements for every (size, lb, extent, true_lb, true_extent)
    given, plus the [origin, origin + count*extent) slice mpi4py's Pack takes, plus margins."""
    lo, hi = 0, 1
    for size, _lb, ext, tlb, text in bounds:
        a, b = span_of(count, ext, tlb, text, size)
        lo, hi = min(lo, a), max(hi, b, count * ext)
    origin = margin_lo - lo
    return Geometry(origin, origin + hi + margin_hi)


def mpi_pack(t, src: np.ndarray, origin: int, count: int) -> np.ndarray:
    """MPI_Pack of `count` elements of committed `t` whose origin is src[origin] (mpi4py's Pack
    takes the count from len(inbuf) // extent, so pass exactly count*extent bytes; for extent <= 0
    pack one element of resized(contiguous(count, t), 0, 1) instead, which is the same message)."""
    MPI = _mpi()
    _lb, ext = t.Get_extent()
    out = np.zeros(max(t.Get_size() * count, 1), np.uint8)
    if ext > 0:
        pos = t.Pack(src[origin:origin + count * ext], out, 0, MPI.COMM_SELF)
    else:
        with _wrapped(t, count) as w:
            pos = w.Pack(src[origin:origin + 1], out, 0, MPI.COMM_SELF)
    assert pos == t.Get_size() * count, (pos, t.Get_size(), count)
    return out[:pos]


def mpi_unpack(t, packed: np.ndarray, dst: np.ndarray, origin: int, count: int) -> None:
    MPI = _mpi()
    _lb, ext = t.Get_extent()
    if ext > 0:
        pos = t.Unpack(packed, 0, dst[origin:origin + count * ext], MPI.COMM_SELF)
    else:
        with _wrapped(t, count) as w:
            pos = w.Unpack(packed, 0, dst[origin:origin + 1], MPI.COMM_SELF)
    assert pos == t.Get_size() * count


@contextlib.contextmanager
def _wrapped(t, count: int):
    c = t.Create_contiguous(count)
    w = c.Create_resized(0, 1)
    w.Commit()
    try:
        yield w
    finally:
        w.Free()
        c.Free()


# ---------------------------------------------------------------------------------------------
# Where the MPI library departs from the standard
# ---------------------------------------------------------------------------------------------
# Open MPI 4.1 departs from the standard's definitions in a few ways the differential tests
# met; each is recorded with a concrete case in tests/test_datatype_mpi.py (TestLibraryDeviations):
#   empty-member        a copy of an empty (size-0) type placed inside another type: Open MPI
#                       counts its displacement into lb/ub (the standard: it has no entries), drops
#                       its explicit lb/ub markers, reports an empty type's true bounds as
#                       (INT64_MAX, 1), and packs with a stride other than the extent it reports
#                       (struct {2int, resized(contiguous(0, 2int), 0, 1)}: extent 1, stride 8).
#   stride-minus-one    a vector/hvector whose stride is -1 byte: Open MPI takes -1 as a sentinel
#                       and lays the blocks out contiguously (and reports those bounds).
#   incremental-epsilon alignment padding applied block by block as displacements are added, so an
#                       hindexed with decreasing odd displacements gets a larger extent than the
#                       standard's one epsilon over the whole type map.
DEVIATIONS = ("empty-member", "stride-minus-one", "incremental-epsilon")


def same_bounds(a: Tuple[int, ...], b: Tuple[int, ...]) -> bool:
    """Equal (size, lb, extent, true_lb, true_extent); true bounds of empty types not compared
    (Open MPI reports them as (INT64_MAX, 1))."""
    if a[0] == 0 and b[0] == 0:
        return a[:3] == b[:3]
    return tuple(a) == tuple(b)


def _root_cause(spec: Spec, lib: Tuple[int, ...], ref: RefBounds, lib_extent_of) -> Tuple[Optional[str], bool]:
    """(which known deviation could explain a node whose children all match the standard but
    which itself does not, or None; whether that deviation changes what the library packs even
    where the node's bounds agree with the standard)."""
    empties = [ch for ch, starts in _members(spec, lib_extent_of) if len(starts) > 0 and ref_bounds(ch).size == 0]
    if empties:
        # An empty member with explicit bounds: Open MPI may report the standard's extent and
        # still pack with another stride (struct {2int, resized(contiguous(0, 2int), 0, 1)}).
        return "empty-member", any(ref_bounds(ch).marked for ch in empties)
    if spec.kind in ("vector", "hvector"):
        count, bl, stride = spec.args
        byte_stride = stride * lib_extent_of(spec.children[0]) if spec.kind == "vector" else stride
        if byte_stride == -1 and count >= 2 and bl >= 1 and ref_bounds(spec.children[0]).size > 0:
            return "stride-minus-one", True
    r = ref.tuple()
    if (not ref.marked and lib[0] == r[0] and lib[1] == r[1] and lib[3:] == r[3:] and lib[2] > r[2]
            and lib[2] % ref.align == 0):
        return "incremental-epsilon", False
    return None, False


def library_deviations(spec: Spec, nodes: dict) -> Tuple[set, List[str]]:
    """(known deviations found, unexplained nodes) comparing the library's bounds of every node
    (nodes: spec -> mpi4py type, from mpi_type) with the standard's (ref_bounds). A node that
    differs while its children agree is a root cause and must be a known deviation; nodes above
    a root cause inherit it. stride-minus-one, and empty-member where the empty member carries
    explicit bounds, are flagged wherever their pattern occurs: they change what the library
    packs even where its bounds agree with the standard."""
    found, unexplained = set(), []
    bad: Dict[Spec, bool] = {}
    lib_ext = lambda s: nodes[s].Get_extent()[1]  # noqa: E731

    def visit(s: Spec) -> bool:
        if s in bad:
            return bad[s]
        kids_bad = any([visit(c) for c in s.children])
        lib, ref = mpi_bounds(nodes[s]), ref_bounds(s)
        cause, layout_cause = (None, False) if s.kind == "named" else _root_cause(s, lib, ref, lib_ext)
        if layout_cause:  # may change the packed bytes even where the bounds agree
            found.add(cause)
        differs = not same_bounds(lib, ref.tuple())
        if differs and not kids_bad:
            if cause is None:
                unexplained.append(f"{s!r}: library {lib}, standard {ref.tuple()}")
            else:
                found.add(cause)
        bad[s] = kids_bad or differs or layout_cause
        return bad[s]

    visit(spec)
    return found, unexplained
