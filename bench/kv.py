"""``hauler-bench kv``: paged KV-cache block moves and swap tiers.

Local: for each extent size (one block of one layer and plane, 4 KiB .. 1 MiB), extent count
(256 .. 16,384) and block order (random, sequential) three rows: gather (paged -> one contiguous
buffer), scatter (the reverse) and copy (block to block inside the cache), by hauler.kv with a
plan built beforehand, against the per-extent copy loop engines run (vLLM's swap_blocks: one copy
call per block per layer per K/V; numpy slice assignment and torch ``copy_``), torch indexing of
whole layers (``index_select(out=)`` / ``index_copy_``) and memcpy of the same bytes (the limit).
Then the time to build a plan of 16,384 extents.

Swap: one request's block group through hauler.kv.SwapSpace: out to host memory and back, out
to the SSD (live cache -> host -> SSD) and back from it, against the per-extent loop (slice
copies into a buffer; one pwrite/pread per extent for the SSD), torch (index_select/index_copy_;
torch.save/torch.load of the gathered blocks for the SSD) and the limit (memcpy; fio writing and
reading the same bytes with hauler's request size and queue depth). Then a multi-turn
conversation: bytes copied out of the live cache per turn with and without dirty tracking.

    from hauler.bench import kv
    report = kv.run(kv.Options(quick=True))
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import core, kv_storage
from .core import Column, Report, format_size

NAME = "kv"
HELP = "KV-cache block gather/scatter/copy and swap to host/SSD: hauler.kv vs per-block loops, torch, memcpy, fio"

EXTENTS = (4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20)
COUNTS = (256, 1024, 4096, 16384)
ORDERS = ("random", "sequential")
OPS = ("gather", "scatter", "copy")
QUICK_EXTENTS = (4 << 10, 64 << 10)
QUICK_COUNTS = (256, 1024)
DEFAULT_MAX_BYTES = 256 << 20
QUICK_MAX_BYTES = 16 << 20
DEFAULT_REPEAT = 7
QUICK_REPEAT = 2
LAYERS = 4                  # local section: 8 extents per block (K and V of 4 layers)
TOKENS, HEAD = 16, 128      # tokens per block, head size (fp16): a 4 KiB extent per head
PLAN_EXTENTS = 16384
# the swap section's request: 8 layers, 8 KV heads of 128, 16-token blocks, fp16 (32 KiB extents)
SWAP_LAYERS, SWAP_HEADS = 8, 8
SWAP_BLOCKS = 256           # 4,096 tokens: 128 MiB, 4,096 extents
QUICK_SWAP_BLOCKS = 16
TURNS = 6                   # multi-turn: from half the request to all of it


@dataclass
class Options:
    extents: Tuple[int, ...] = EXTENTS
    counts: Tuple[int, ...] = COUNTS
    orders: Tuple[str, ...] = ORDERS
    ops: Tuple[str, ...] = OPS
    max_bytes: int = DEFAULT_MAX_BYTES
    repeat: int = DEFAULT_REPEAT
    warmup: int = 1
    threads: Optional[int] = None
    swap: bool = True
    swap_blocks: int = SWAP_BLOCKS
    ssd: bool = True
    directory: Optional[str] = None
    fio: bool = True
    transfer: bool = True
    quick: bool = False
    seed: int = 12345
    notes: List[str] = field(default_factory=list)


def _sizes_arg(text: str) -> Tuple[int, ...]:
    try:
        vals = tuple(core.parse_size(t) for t in text.split(",") if t.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not vals or any(v % 4096 for v in vals):
        raise argparse.ArgumentTypeError(f"give extent sizes that are multiples of 4K, got {text!r}")
    return vals


def _counts_arg(text: str) -> Tuple[int, ...]:
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        vals = ()
    if not vals or any(v < 2 * LAYERS or v % (2 * LAYERS) for v in vals):
        raise argparse.ArgumentTypeError(f"give extent counts that are multiples of {2 * LAYERS}, got {text!r}")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--extents", type=_sizes_arg, default=None, metavar="4K,64K,...",
                   help=f"extent sizes (default {','.join(format_size(e) for e in EXTENTS)})")
    p.add_argument("--counts", type=_counts_arg, default=None, metavar="256,1024,...",
                   help=f"extents per move (default {','.join(map(str, COUNTS))})")
    p.add_argument("--orders", type=core.list_arg(ORDERS), default=ORDERS, metavar="random,sequential",
                   help="block id orders to measure (comma-separated; default all)")
    p.add_argument("--ops", type=core.list_arg(OPS), default=OPS, metavar="gather,scatter,copy",
                   help="block moves to measure (comma-separated; default all)")
    p.add_argument("--max-bytes", type=core.size_arg, default=None,
                   help=f"skip local cases moving more (default {format_size(DEFAULT_MAX_BYTES)}; "
                        f"{format_size(QUICK_MAX_BYTES)} with --quick)")
    p.add_argument("--repeat", type=core.positive_int, default=None,
                   help=f"timed rounds (default {DEFAULT_REPEAT}; {QUICK_REPEAT} with --quick)")
    p.add_argument("--warmup", type=core.non_negative_int, default=1,
                   help="untimed calls of each contender before the rounds (default 1)")
    p.add_argument("--threads", type=core.positive_int, default=None,
                   help="threads of hauler's local moves (default: hauler.kv's own rule: one thread for moves "
                        "below 64 MiB, else HAULER_THREADS or the core count)")
    p.add_argument("--no-swap", action="store_true", help="skip the swap section")
    p.add_argument("--swap-blocks", type=core.positive_int, default=None,
                   help=f"blocks of the swapped request (default {SWAP_BLOCKS}; {QUICK_SWAP_BLOCKS} with --quick)")
    p.add_argument("--no-ssd", action="store_true", help="swap to host memory only")
    p.add_argument("--dir", dest="directory", default=None,
                   help="directory for the swap files (default: a new one under $TMPDIR or /var/tmp; put it on the SSD)")
    p.add_argument("--no-fio", action="store_true", help="do not run fio")
    p.add_argument("--no-transfer", action="store_true", help="skip the 2-process section (bench/kv_transfer.py)")
    p.add_argument("--quick", action="store_true", help="two extent sizes, two counts, a small request (for tests)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the random cache and block ids")
    kv_storage.add_arguments(p)
    core.add_format_args(p)


def options_from_args(a: argparse.Namespace) -> Options:
    q = a.quick
    return Options(extents=a.extents or (QUICK_EXTENTS if q else EXTENTS),
                   counts=a.counts or (QUICK_COUNTS if q else COUNTS), orders=tuple(a.orders), ops=tuple(a.ops),
                   max_bytes=a.max_bytes or (QUICK_MAX_BYTES if q else DEFAULT_MAX_BYTES),
                   repeat=a.repeat or (QUICK_REPEAT if q else DEFAULT_REPEAT), warmup=a.warmup, threads=a.threads,
                   swap=not a.no_swap,
                   swap_blocks=a.swap_blocks or (QUICK_SWAP_BLOCKS if q else SWAP_BLOCKS), ssd=not a.no_ssd,
                   directory=a.directory, fio=not a.no_fio, transfer=not a.no_transfer, quick=q, seed=a.seed)


def main(args: argparse.Namespace) -> int:
    if args.storage_attention:
        return kv_storage.main(args)
    rep = run(options_from_args(args), core.output_of(args))
    return 0 if all(r.get("correct") is not False for r in rep.rows) else 1


def _fx(v: float) -> str:
    return f"{v:.2f}"


def _f1(v: float) -> str:
    return f"{v:.1f}"


COLUMNS = [
    Column("section", "part", "", left=True, width=5),
    Column("op", "op", "", left=True, width=8),
    Column("extent", "extent", "B", format_size, width=6),
    Column("extents", "extents", "", width=7),
    Column("order", "order", "", left=True, width=10),
    Column("hauler_gbps", "hauler", "GB/s", _fx, width=6),
    Column("loop_gbps", "loop", "GB/s", _fx, width=5),
    Column("tloop_gbps", "t.loop", "GB/s", _fx),
    Column("torch_gbps", "torch", "GB/s", _fx, width=5),
    Column("limit_gbps", "limit", "GB/s", _fx, width=5),
    Column("vs_loop", "x loop", "x", _f1),
    Column("vs_torch", "x torch", "x", _fx),
    Column("vs_limit", "/limit", "x", _fx),
    Column("correct_text", "correct", "", left=True, width=7),
]

TARGETS = (  # key, description, row filter, figure, threshold, unit
    ("loop_4k", ">= 5x the per-block loop at 4 KiB extents",
     lambda r: r["section"] == "local" and r["extent"] == 4096, "vs_loop", 5.0, "x"),
    ("memcpy_64k", ">= 0.8x memcpy at extents >= 64 KiB",
     lambda r: r["section"] == "local" and r["extent"] >= 64 << 10, "vs_limit", 0.8, "x"),
    ("fio_ssd", "swap to SSD >= 0.9x fio of the same bytes",
     lambda r: r["section"] == "swap" and r["op"] == "out-ssd", "vs_limit", 0.9, "x"),
)


def run(opts: Options, out: Optional[core.Output] = None) -> Report:
    import numpy as np
    import torch

    from hauler import io

    hinfo = core.hauler_info()
    mach = core.machine_info()
    warnings: List[str] = []
    header = [
        ("hauler", f"{hinfo['version']} ({hinfo['core']}); build: {hinfo['build_summary']}; "
                   f"cuda: {'available' if hinfo['cuda_available'] else 'not available'}: {hinfo['cuda_status']}"),
        ("threads", (f"hauler {opts.threads}" if opts.threads else
                     f"hauler 1 below 64 MiB, else {hinfo['threads_default']}")
         + f" (local moves); torch {torch.get_num_threads()} (intra-op); numpy 1"),
        ("versions", f"numpy {hinfo['numpy']}, torch {torch.__version__}, python {mach['python']}"),
        ("machine", f"{mach['cpu']}, {mach['cores_usable']} usable cores of {mach['cores_os']}, {mach['memory']}; "
                    f"{mach['host']}, {mach['os']}; {mach['date']}"),
        ("local", f"vLLM flash layout, {LAYERS} layers x K/V, {TOKENS}-token blocks, head size {HEAD}, fp16 "
                  f"(extent = one block of one layer and plane = heads x 4 KiB; {2 * LAYERS} extents per block); "
                  f"cases moving more than {format_size(opts.max_bytes)} skipped"),
        ("peers", "loop: one numpy slice assignment per extent (vLLM swap_blocks' pattern); t.loop: one torch "
                  "copy_ per extent; torch: index_select(out=)/index_copy_ per layer (cache[:, ids]); "
                  "limit: memcpy of the same bytes (faster of numpy.copyto and torch copy_)"),
        ("rounds", f"{opts.warmup} warm-up call(s) each, then {opts.repeat} rounds timing every contender once, "
                   "back to back; GB/s of the median round = moved bytes / s / 1e9; x = median of the "
                   "within-round ratios; x loop against the faster loop"),
        ("correct", "hauler's result (poisoned first) == numpy fancy indexing of the same cache, byte for byte"),
    ]
    rep = Report(NAME, config={k: getattr(opts, k) for k in opts.__dataclass_fields__ if k != "notes"},
                 header=header, columns=COLUMNS, warnings=warnings,
                 info={"hauler": hinfo, "machine": mach, "torch": torch.__version__})
    directory = None
    if opts.swap and opts.ssd:
        base = opts.directory or os.environ.get("TMPDIR") or "/var/tmp"
        os.makedirs(base, exist_ok=True)
        directory = tempfile.mkdtemp(prefix="hauler-bench-kv-", dir=base)
        probe = os.path.join(directory, "probe")
        with io.File(probe, "w") as f:
            direct = f.direct
            why = f.direct_reason
        os.unlink(probe)
        from .io import _fio_version, _fs_type
        fio = _fio_version() if opts.fio else None
        rep.header.append(("swap files", f"{directory} ({_fs_type(os.path.realpath(directory))}); "
                                         f"{'O_DIRECT' if direct else 'BUFFERED: ' + why}; I/O backend "
                                         f"{io.backend_description()}; fio: {fio or 'not run'}"))
        if io.backend() != "io_uring":
            warnings.append(f"I/O backend {io.backend_description()}: these are NOT io_uring numbers")
        if not direct:
            warnings.append(f"the swap directory refuses O_DIRECT ({why}): SSD rows are page-cache figures")
        if opts.fio and not fio:
            warnings.append("fio is not installed: NO SSD limit column (apt-get install fio)")
        rep.info["fio"] = fio
    out = out or core.Output("table")
    out.begin(rep)
    try:
        _local(opts, rep, out)
        rep.footer += _plan_time(opts, rep)
        if opts.swap:
            _swap(opts, rep, out, directory)
        if opts.transfer and importlib.util.find_spec("hauler.bench.kv_transfer") is not None:
            from . import kv_transfer   # the 2-process section (kvxfer's): adds its rows and footer
            kv_transfer.section(opts, rep, out)
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    bad = [r for r in rep.rows if r.get("correct") is False]
    if bad:
        rep.warnings.append(f"{len(bad)} row(s) INCORRECT: " + "; ".join(
            f"{r['section']}/{r['op']}/{format_size(r['extent'])}/{r['extents']}/{r['order']}" for r in bad))
    rep.targets = evaluate_targets(rep)
    out.end(rep)
    return rep


# -- helpers --------------------------------------------------------------------------------------

def _cache(np: Any, layers: int, nblocks: int, heads: int, rng: Any) -> List[Any]:
    """Per layer (2, nblocks, TOKENS, heads, HEAD) fp16, random bytes."""
    shape = (2, nblocks, TOKENS, heads, HEAD)
    n = int(np.prod(shape)) * 2
    return [rng.integers(0, 256, n, dtype=np.uint8).view(np.float16).reshape(shape) for _ in range(layers)]


def _gather_ref(np: Any, layers: List[Any], ids: Any) -> Any:
    """numpy fancy indexing: [layers, 2, blocks, tokens, heads, head] in one contiguous array."""
    return np.stack([c[:, ids] for c in layers])


def _per_extent(layers: List[Any], packed: Any, ids: Any, to_cache: bool, torch_copy: bool = False) -> None:
    """The per-block loop engines run: one copy call per block per layer per K/V, between the
    cache and the packed [layers, 2, blocks, ...] buffer (numpy slice assignment or torch copy_)."""
    ids = ids.tolist()
    for c, o in zip(layers, packed):
        for p in range(2):
            cp, op_ = c[p], o[p]
            if to_cache and torch_copy:
                for i, b in enumerate(ids):
                    cp[b].copy_(op_[i])
            elif to_cache:
                for i, b in enumerate(ids):
                    cp[b] = op_[i]
            elif torch_copy:
                for i, b in enumerate(ids):
                    op_[i].copy_(cp[b])
            else:
                for i, b in enumerate(ids):
                    op_[i] = cp[b]


def _limit(np: Any, torch: Any, dst: Any, src: Any) -> Dict[str, Callable[[], Any]]:
    td, ts = torch.from_numpy(dst.view(np.uint8)), torch.from_numpy(src.view(np.uint8))
    return {"memcpy1": lambda: np.copyto(dst, src), "memcpyT": lambda: td.copy_(ts)}


def _best(a: core.Timing, b: core.Timing) -> core.Timing:
    return core.Timing([min(x, y) for x, y in zip(a.times, b.times)])


def _row(section: str, op: str, extent: int, extents: int, order: str, nbytes: int, tim: Dict[str, core.Timing],
         loop: Optional[core.Timing], tloop: Optional[core.Timing], torch_t: Optional[core.Timing],
         limit: Optional[core.Timing], correct: bool, **extra: Any) -> Dict[str, Any]:
    h = tim["hauler"]
    best_loop = None if loop is None else (loop if tloop is None else _best(loop, tloop))
    row: Dict[str, Any] = {
        "section": section, "op": op, "extent": extent, "extents": extents, "order": order, "bytes": nbytes,
        "hauler_gbps": core.gbps(nbytes, h.median),
        "loop_gbps": None if loop is None else core.gbps(nbytes, loop.median),
        "tloop_gbps": None if tloop is None else core.gbps(nbytes, tloop.median),
        "torch_gbps": None if torch_t is None else core.gbps(nbytes, torch_t.median),
        "limit_gbps": None if limit is None else core.gbps(nbytes, limit.median),
        "vs_loop": None if best_loop is None else core.paired_ratio(h, best_loop),
        "vs_torch": None if torch_t is None else core.paired_ratio(h, torch_t),
        "vs_limit": None if limit is None else core.paired_ratio(h, limit),
        "correct": bool(correct), "correct_text": "ok" if correct else "WRONG",
        "timings": {k: v.as_dict(nbytes) for k, v in tim.items()},
    }
    row.update(extra)
    return row


# -- local: gather / scatter / copy ---------------------------------------------------------------

def _local(opts: Options, rep: Report, out: core.Output) -> None:
    import numpy as np
    import torch

    from hauler import kv

    rng = np.random.default_rng(opts.seed)
    skipped = []
    for extent in opts.extents:
        heads = extent // (TOKENS * HEAD * 2)
        for count in opts.counts:
            if extent * count > opts.max_bytes:
                skipped.append(f"{format_size(extent)}x{count}")
                continue
            nb = count // (2 * LAYERS)
            layers = _cache(np, LAYERS, 2 * nb, heads, rng)
            layout = kv.KVLayout.vllm_flash(layers)
            tl = [torch.from_numpy(c.view(np.int16)) for c in layers]
            shape = (LAYERS, 2, nb, TOKENS, heads, HEAD)
            buf = np.empty(shape, np.float16)       # every contender's output (gather) / input (scatter)
            other = np.empty(shape, np.float16)     # the reference, and memcpy's source
            tb = torch.from_numpy(buf.view(np.int16))
            for order in opts.orders:
                if order == "random":
                    perm = rng.permutation(2 * nb)
                    src, dst = perm[:nb].astype(np.int64), perm[nb:].astype(np.int64)
                else:
                    src, dst = np.arange(nb, dtype=np.int64), np.arange(nb, 2 * nb, dtype=np.int64)
                ts, td = torch.from_numpy(src), torch.from_numpy(dst)
                for op in opts.ops:
                    tim, correct, plan = _local_case(np, torch, kv, op, layout, layers, tl, buf, tb, other,
                                                     src, dst, ts, td, opts)
                    row = _row("local", op, extent, count, order, extent * count, tim, tim["loop"], tim["tloop"],
                               tim["torch"], _best(tim["memcpy1"], tim["memcpyT"]), correct,
                               plan_segments=int(plan.num_segments))
                    rep.rows.append(row)
                    out.row(rep, row)
            del layers, tl, buf, other, tb
    if skipped:
        rep.notes.append(f"local cases over --max-bytes {format_size(opts.max_bytes)} skipped: {', '.join(skipped)}")


def _local_case(np: Any, torch: Any, kv: Any, op: str, layout: Any, layers: List[Any], tl: List[Any],
                buf: Any, tb: Any, other: Any, src: Any, dst: Any, ts: Any, td: Any,
                opts: Options) -> Tuple[Dict[str, core.Timing], bool, Any]:
    """One op timed: (timings, hauler's result equals numpy's, the plan)."""
    nb = src.size
    bv = buf.view(np.int16)
    if op == "gather":
        contig = kv.contiguous_layout_like(layout, nb, buf)
        plan = kv.plan(layout, src, contig, np.arange(nb))

        fns = {"hauler": lambda: kv.gather_blocks(layout, src, buf, plan=plan, threads=opts.threads),
               "loop": lambda: _per_extent(layers, buf, src, False),
               "tloop": lambda: _per_extent(tl, tb, src, False, True),
               "torch": lambda: [torch.index_select(c, 1, ts, out=o) for c, o in zip(tl, tb)]}
        fns.update(_limit(np, torch, buf, other))
        tim = core.time_interleaved(fns, opts.repeat, opts.warmup)
        other[...] = _gather_ref(np, layers, src)
        bv[...] = -1
        kv.gather_blocks(layout, src, buf, plan=plan)
        correct = bool(np.array_equal(buf.view(np.int16), other.view(np.int16)))
    elif op == "scatter":
        contig = kv.contiguous_layout_like(layout, nb, buf)
        plan = kv.plan(contig, np.arange(nb), layout, dst)
        buf[...] = _gather_ref(np, layers, src)      # scatter the src blocks' bytes onto dst

        fns = {"hauler": lambda: kv.scatter_blocks(layout, dst, buf, plan=plan, threads=opts.threads),
               "loop": lambda: _per_extent(layers, buf, dst, True),
               "tloop": lambda: _per_extent(tl, tb, dst, True, True),
               "torch": lambda: [c.index_copy_(1, td, o) for c, o in zip(tl, tb)]}
        fns.update(_limit(np, torch, other, buf))
        tim = core.time_interleaved(fns, opts.repeat, opts.warmup)
        for c in layers:
            c[:, dst] = 0
        kv.scatter_blocks(layout, dst, buf, plan=plan)
        correct = bool(np.array_equal(_gather_ref(np, layers, dst).view(np.int16), bv))
    else:  # copy
        mapping = np.stack([src, dst], axis=1)
        plan = kv.plan(layout, src, layout, dst)

        def loop():
            for c in layers:
                for p in range(2):
                    cp = c[p]
                    for s, d in mapping:
                        cp[d] = cp[s]

        def tloop():
            for c in tl:
                for p in range(2):
                    cp = c[p]
                    for s, d in mapping.tolist():
                        cp[d].copy_(cp[s])

        fns = {"hauler": lambda: kv.copy_blocks(layout, layout, mapping, plan=plan, threads=opts.threads),
               "loop": loop, "tloop": tloop,
               "torch": lambda: [c.index_copy_(1, td, c.index_select(1, ts)) for c in tl]}
        fns.update(_limit(np, torch, buf, other))
        tim = core.time_interleaved(fns, opts.repeat, opts.warmup)
        for c in layers:
            c[:, dst] = 0
        kv.copy_blocks(layout, layout, mapping, plan=plan)
        correct = bool(np.array_equal(_gather_ref(np, layers, dst).view(np.int16),
                                      _gather_ref(np, layers, src).view(np.int16)))
    return tim, correct, plan


def _plan_time(opts: Options, rep: Report) -> List[str]:
    """Median time of kv.plan for PLAN_EXTENTS 4 KiB extents, random block ids."""
    import numpy as np

    from hauler import kv
    nb = PLAN_EXTENTS // (2 * LAYERS)
    rng = np.random.default_rng(opts.seed + 1)
    layers = [np.empty((2, 2 * nb, TOKENS, 1, HEAD), np.float16) for _ in range(LAYERS)]
    layout = kv.KVLayout.vllm_flash(layers)
    buf = np.empty(nb * int(layout.block_bytes), np.uint8)
    contig = kv.contiguous_layout_like(layout, nb, buf)
    ids = rng.permutation(2 * nb)[:nb].astype(np.int64)
    dst = np.arange(nb, dtype=np.int64)
    t = core.time_call(lambda: kv.plan(layout, ids, contig, dst), repeat=max(opts.repeat, 5) * 3, warmup=2)
    plan = kv.plan(layout, ids, contig, dst)
    rep.info["plan_build"] = {"extents": PLAN_EXTENTS, "segments": int(plan.num_segments), **t.as_dict()}
    return [f"plan build: {PLAN_EXTENTS} extents of 4 KiB ({nb} random blocks x {2 * LAYERS}) -> "
            f"{plan.num_segments} segments in {t.median * 1e3:.3f} ms median ({t.best * 1e3:.3f} ms best) "
            f"of {len(t.times)} builds"]


# -- swap -----------------------------------------------------------------------------------------

def _rounds(contenders: Dict[str, Tuple[Callable[[], Any], Callable[[], Any]]], repeat: int,
            warmup: int) -> Dict[str, core.Timing]:
    """time_interleaved with an untimed setup before each call: name -> (setup, fn)."""
    names = list(contenders)
    for name in names:
        for _ in range(max(warmup, 0)):
            setup, fn = contenders[name]
            setup()
            fn()
    times: Dict[str, List[float]] = {n: [] for n in names}
    for i in range(repeat):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            setup, fn = contenders[name]
            setup()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {n: core.Timing(t) for n, t in times.items()}


def _nothing() -> None:
    pass


def _swap(opts: Options, rep: Report, out: core.Output, directory: Optional[str]) -> None:
    import numpy as np
    import torch

    from hauler import kv
    from hauler.kv.swap import SwapSpace

    rng = np.random.default_rng(opts.seed + 2)
    nb = opts.swap_blocks
    layers = _cache(np, SWAP_LAYERS, 2 * nb, SWAP_HEADS, rng)
    layout = kv.KVLayout.vllm_flash(layers)
    tl = [torch.from_numpy(c.view(np.int16)) for c in layers]
    extent = TOKENS * SWAP_HEADS * HEAD * 2
    count = nb * SWAP_LAYERS * 2
    nbytes = extent * count
    ids = rng.permutation(2 * nb)[:nb].astype(np.int64)
    tid = torch.from_numpy(ids)
    want = _gather_ref(np, layers, ids)
    shape = want.shape
    host = np.empty(shape, np.float16)
    th = torch.from_numpy(host.view(np.int16))
    other = np.empty(shape, np.float16)
    rep.notes.append(f"swap: one request of {nb} blocks ({nb * TOKENS} tokens), {SWAP_LAYERS} layers x K/V, "
                     f"{SWAP_HEADS} heads of {HEAD}, fp16: {format_size(nbytes)} in {count} extents of "
                     f"{format_size(extent)}, random block ids in a cache of {2 * nb} blocks")

    def restore() -> None:
        for c, w in zip(layers, want):
            c[:, ids] = w

    def live_ok() -> bool:
        return bool(np.array_equal(_gather_ref(np, layers, ids).view(np.int16), want.view(np.int16)))

    with SwapSpace(host_bytes=4 * nbytes + (1 << 20), path=directory if opts.ssd else None) as space:
        # out to host memory
        tim = _rounds({"hauler": (_nothing, lambda: space.swap_out("r", layout, ids, dirty="all").result()),
                       "loop": (_nothing, lambda: _per_extent(layers, host, ids, False)),
                       "torch": (_nothing, lambda: [torch.index_select(c, 1, tid, out=o) for c, o in zip(tl, th)]),
                       **{k: (_nothing, f) for k, f in _limit(np, torch, other, want).items()}},
                      opts.repeat, opts.warmup)
        space.discard("r")
        space.swap_out("r", layout, ids).result()
        for c in layers:
            c[:, ids] = 0
        space.swap_in("r", layout, ids).result()
        ok = live_ok()
        row = _row("swap", "out-host", extent, count, "random", nbytes, tim, tim["loop"], None, tim["torch"],
                   _best(tim["memcpy1"], tim["memcpyT"]), ok)
        rep.rows.append(row)
        out.row(rep, row)
        # back in from host memory
        host[...] = want

        def poison() -> None:
            for c in layers:
                c[:, ids] = 0
        tim = _rounds({"hauler": (poison, lambda: space.swap_in("r", layout, ids).result()),
                       "loop": (poison, lambda: _per_extent(layers, host, ids, True)),
                       "torch": (poison, lambda: [c.index_copy_(1, tid, o) for c, o in zip(tl, th)]),
                       **{k: (_nothing, f) for k, f in _limit(np, torch, other, want).items()}},
                      opts.repeat, opts.warmup)
        poison()
        space.swap_in("r", layout, ids).result()
        row = _row("swap", "in-host", extent, count, "random", nbytes, tim, tim["loop"], None, tim["torch"],
                   _best(tim["memcpy1"], tim["memcpyT"]), live_ok())
        rep.rows.append(row)
        out.row(rep, row)
        if opts.ssd and directory is not None:
            _swap_ssd(opts, rep, out, space, layout, layers, tl, ids, tid, want, host, th, directory,
                      extent, count, nbytes, live_ok, poison, restore)
        rep.footer += _multi_turn(opts, rep, layout, layers, ids, want)


def _swap_ssd(opts: Options, rep: Report, out: core.Output, space: Any, layout: Any, layers: List[Any],
              tl: List[Any], ids: Any, tid: Any, want: Any, host: Any, th: Any, directory: str, extent: int,
              count: int, nbytes: int, live_ok: Any, poison: Any, restore: Any) -> None:
    import numpy as np
    import torch

    from hauler import config

    from .io import drop_cache, run_fio
    loop_path = os.path.join(directory, "loop.bin")
    torch_path = os.path.join(directory, "torch.pt")
    fio_path = os.path.join(directory, "fio.bin")
    order = [(l, p, i) for l in range(len(layers)) for p in range(2) for i in range(len(ids))]

    def loop_out() -> None:
        fd = os.open(loop_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            off = 0
            for l, p, i in order:
                off += os.pwrite(fd, memoryview(layers[l][p, ids[i]].reshape(-1).view(np.uint8)), off)
            os.fsync(fd)
        finally:
            os.close(fd)

    def loop_in() -> None:
        fd = os.open(loop_path, os.O_RDONLY)
        try:
            off = 0
            for l, p, i in order:
                dst = layers[l][p, ids[i]]
                off += os.preadv(fd, [memoryview(dst.reshape(-1).view(np.uint8))], off)
        finally:
            os.close(fd)

    def torch_out() -> None:
        for c, o in zip(tl, th):
            torch.index_select(c, 1, tid, out=o)
        with open(torch_path, "wb") as f:
            torch.save(th, f)
            f.flush()
            os.fsync(f.fileno())

    def torch_in() -> None:
        t = torch.load(torch_path)
        for c, o in zip(tl, t):
            c.index_copy_(1, tid, o)

    def cold(path: str) -> Callable[[], None]:
        def setup() -> None:
            poison()
            if os.path.exists(path):
                drop_cache(path)
        return setup

    leg: Dict[str, List[float]] = {"write": [], "read": []}   # the SSD leg alone, inside hauler's calls

    def hauler_out() -> None:
        space.swap_out("r", layout, ids, dirty="all").result()
        t0 = time.perf_counter()
        space.evict("r").result()
        leg["write"].append(time.perf_counter() - t0)

    def hauler_in() -> None:
        t0 = time.perf_counter()
        space.prefetch("r").result()
        leg["read"].append(time.perf_counter() - t0)
        space.swap_in("r", layout, ids).result()

    def evicted() -> None:
        poison()
        if space.location("r") != "ssd":
            space.evict("r").result()

    fio = rep.info.get("fio") and opts.fio
    task, qd = int(config.get("HAULER_IO_TASK_SIZE")), int(config.get("HAULER_IO_QUEUE_DEPTH"))
    from hauler import io
    engine = "io_uring" if io.backend() == "io_uring" else "psync"
    fio_t: Dict[str, List[float]] = {"write": [], "read": []}
    for kind in ("write", "read"):
        if kind == "write":
            restore()
            cont = {"hauler": (_nothing, hauler_out), "loop": (_nothing, loop_out), "torch": (_nothing, torch_out)}
        else:
            cont = {"hauler": (evicted, hauler_in),
                    "loop": (cold(loop_path), loop_in), "torch": (cold(torch_path), torch_in)}
        tim = _rounds(cont, opts.repeat, opts.warmup)
        if fio:
            try:
                for _ in range(opts.repeat):
                    fio_t[kind].append(nbytes / run_fio(fio_path, kind, task, qd, nbytes, nbytes, True, engine))
            except (RuntimeError, OSError) as e:
                rep.warnings.append(f"fio failed, no SSD limit: {e}")
                fio = False
        # correctness: the whole path through the SSD, the live blocks poisoned in between
        restore()
        space.swap_out("r", layout, ids, dirty="all").result()
        space.evict("r").result()
        poison()
        space.swap_in("r", layout, ids).result()
        ok = live_ok()
        limit = core.Timing(fio_t[kind]) if fio_t[kind] else None
        row = _row("swap", "out-ssd" if kind == "write" else "in-ssd", extent, count, "random", nbytes, tim,
                   tim["loop"], None, tim["torch"], limit, ok,
                   limit_peer=f"fio {kind} bs={format_size(task)} qd={qd} direct=1 {engine}" if limit else None)
        own = statistics.median(leg[kind][-opts.repeat:])
        row["ssd_leg_gbps"] = core.gbps(nbytes, own)
        if limit is not None:   # fio runs apart: the ratio of the medians
            row["vs_limit"] = statistics.median(fio_t[kind]) / tim["hauler"].median
            row["ssd_leg_vs_limit"] = statistics.median(fio_t[kind]) / own
        rep.rows.append(row)
        out.row(rep, row)
        rep.footer.append(f"{row['op']}: the SSD leg alone ({'host -> SSD' if kind == 'write' else 'SSD -> host'}, "
                          f"inside hauler's calls) {row['ssd_leg_gbps']:.2f} GB/s"
                          + (f", {row['ssd_leg_vs_limit']:.2f}x fio" if limit is not None else ""))
    for p in (loop_path, torch_path, fio_path):
        if os.path.exists(p):
            os.unlink(p)


def _multi_turn(opts: Options, rep: Report, layout: Any, layers: List[Any], ids: Any, want: Any) -> List[str]:
    """A conversation of TURNS turns, each adding tokens: bytes copied out of the live cache per
    swap-out, with dirty tracking and with every block rewritten."""
    import numpy as np

    from hauler.kv.swap import SwapSpace
    nb = len(ids)
    step = max(1, nb * TOKENS // (2 * TURNS))
    tokens = [nb * TOKENS - (TURNS - 1 - t) * step for t in range(TURNS)]
    res: Dict[str, Any] = {}
    for mode in ("tracked", "all"):
        with SwapSpace(host_bytes=2 * nb * int(layout.block_bytes) + (1 << 20)) as space:
            times, moved = [], 0
            for t in tokens:
                n = -(-t // TOKENS)
                t0 = time.perf_counter()
                moved += space.swap_out("chat", layout, ids[:n], num_tokens=t,
                                        dirty=None if mode == "tracked" else "all").result()
                times.append(time.perf_counter() - t0)
                space.swap_in("chat", layout, ids[:n]).result()
            for c in layers:
                c[:, ids] = 0
            space.swap_in("chat", layout, ids[:-(-tokens[-1] // TOKENS)]).result()
            n = -(-tokens[-1] // TOKENS)
            ok = bool(np.array_equal(_gather_ref(np, layers, ids[:n]).view(np.int16),
                                     want[:, :, :n].view(np.int16)))
            res[mode] = {"bytes": moved, "median_s": statistics.median(times), "correct": ok}
    rep.info["multi_turn"] = {"turns": TURNS, "tokens": tokens, **res}
    ok = res["tracked"]["correct"] and res["all"]["correct"]
    if not ok:
        rep.warnings.append("multi-turn swap-in INCORRECT")
        rep.rows.append({"section": "swap", "op": "turns", "correct": False, "correct_text": "WRONG",
                         "extent": 0, "extents": 0, "order": ""})
    tr, al = res["tracked"], res["all"]
    return [f"multi-turn: {TURNS} swap-outs of one request at {tokens[0]}..{tokens[-1]} tokens (+{step} "
            f"a turn): {tr['bytes'] / 2**20:.1f} MiB copied out with dirty tracking, {al['bytes'] / 2**20:.1f} MiB "
            f"rewriting every block ({al['bytes'] / max(tr['bytes'], 1):.1f}x); median swap-out "
            f"{tr['median_s'] * 1e3:.2f} ms vs {al['median_s'] * 1e3:.2f} ms; swap-in "
            f"{'ok' if ok else 'WRONG'}"]


def evaluate_targets(rep: Report) -> List[Dict[str, Any]]:
    res = []
    for key, desc, sel, fig, need, unit in TARGETS:
        chosen = [r for r in rep.rows if sel(r) and r.get(fig) is not None]
        t: Dict[str, Any] = {"key": key, "target": desc, "threshold": need}
        if not chosen:
            t.update(status="N/A", measured="no such rows in this run", worst=None)
        else:
            worst = min(chosen, key=lambda r: r[fig])
            misses = [r for r in chosen if r[fig] < need]
            name = lambda r: f"{r['op']} {format_size(r['extent'])}x{r['extents']} {r['order']}"  # noqa: E731
            t.update(status="MISS" if misses else "PASS", worst=worst[fig],
                     misses=[f"{name(r)} {r[fig]:.2f}" for r in misses],
                     measured=(f"{len(misses)} of {len(chosen)} below" if misses else f"all {len(chosen)} met")
                     + f"; worst {name(worst)} {worst[fig]:.2f} {unit}")
        res.append(t)
    plan = rep.info.get("plan_build")
    t = {"key": "plan_16k", "target": f"plan build < 1 ms for {PLAN_EXTENTS} extents", "threshold": 1e-3}
    if plan is None:
        t.update(status="N/A", measured="not measured", worst=None)
    else:
        t.update(status="PASS" if plan["median_s"] < 1e-3 else "MISS", worst=plan["median_s"],
                 measured=f"{plan['median_s'] * 1e3:.3f} ms median")
    res.append(t)
    return res
