"""``hauler-bench gather``: row gather GB/s against numpy and torch, memcpy as the limit.

For each row size (64 B .. 4 KiB) and index order (random, sorted) one row: hauler's gather,
numpy.take(out=), torch.index_select(out=), torch fancy indexing (``t[idx]``, which allocates
its output) and memcpy of the same bytes, timed in interleaved rounds (every contender once per
round, back to back) over one table of ``--size`` bytes (default 1 GiB), with ratios of the
median round. Then a DataLoader epoch over a generated graph (neighbour-sampled mini-batches,
features gathered per batch) with torch indexing and with hauler, in the same run. Then an NVMe
table block: a file table (backend="file", read through hauler.io) against numpy fancy indexing
on an np.memmap of the same file (as mapped, and with madvise(MADV_RANDOM)), all on a cold cache
(posix_fadvise DONTNEED before every timed call, a fresh mapping each time), with the useful
bytes / bytes read ratio. Then the feature cache block: an R-MAT power-law graph whose node
features live in a file, neighbour-sampled batches, one epoch of feature loading per case (no
cache, the cache with policies lru, static (degree) and hybrid at the same host memory, and the
table in memory as the limit) with epoch time and bytes read. A ``# targets`` block says where
issue 5's and issue 22's targets stand.

    from hauler.bench import gather
    report = gather.run(gather.Options(size=64 << 20, repeat=3))
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from . import core
from .core import Column, Report, format_size

NAME = "gather"
HELP = "row gather GB/s: hauler vs numpy.take, torch.index_select, torch indexing and memcpy; DataLoader epoch"

ROWS = (64, 128, 256, 512, 1024, 2048, 4096)
QUICK_ROWS = (64, 256, 1024)
ORDERS = ("random", "sorted")
DEFAULT_SIZE = 1 << 30
QUICK_SIZE = 32 << 20
DEFAULT_BATCH = 32 << 20
QUICK_BATCH = 2 << 20
DEFAULT_REPEAT = 9
QUICK_REPEAT = 3
NVME_ROWS = (256, 1024, 4096)
QUICK_NVME_ROWS = (256, 4096)
NVME_BATCH = 1 << 20  # useful bytes per cold gather: random 4 KiB reads dominate, keep it short
NVME_REPEAT = 5

CACHE_NODES = 1 << 20        # the cache block's graph: nodes (rows of 128 float32)
QUICK_CACHE_NODES = 1 << 14
CACHE_TRAIN = 0.10           # share of the nodes that are training seeds (an epoch visits each once)
CACHE_WARMUP = 2             # untimed epochs that warm the caches before the timed one
QUICK_CACHE_WARMUP = 1
CACHE_SHARE = 0.10           # host memory for the cache, as a share of the table: ...
VICTIM_SHARE = 0.01          # ... of which the victim buffer takes this much
CACHE_SEEDS = 512            # seeds per batch
CACHE_FANOUTS = (10, 5)
HYBRID_WEIGHTS = (1.0, 1.0)
HYBRID_HALF_LIFE = 256

TARGETS = (  # key, description, row filter, figure key, threshold, unit
    ("gbps_512", ">= 8 GB/s for rows >= 512 B", lambda r: r["row_bytes"] >= 512, "hauler_gbps", 8.0, "GB/s"),
    ("numpy_256", ">= 2x numpy.take(out=) for rows >= 256 B", lambda r: r["row_bytes"] >= 256, "vs_numpy", 2.0, "x"),
    ("isel_256", ">= 1.5x torch.index_select(out=) for rows >= 256 B", lambda r: r["row_bytes"] >= 256,
     "vs_index_select", 1.5, "x"),
    ("memcpy_1k", ">= 60% of memcpy for rows >= 1 KiB", lambda r: r["row_bytes"] >= 1024, "vs_memcpy", 0.6, "x"),
)


@dataclass
class Options:
    size: int = DEFAULT_SIZE
    batch: int = DEFAULT_BATCH
    repeat: int = DEFAULT_REPEAT
    warmup: int = 1
    rows: Tuple[int, ...] = ROWS
    orders: Tuple[str, ...] = ORDERS
    threads: Optional[int] = None
    loader: bool = True
    loader_batches: int = 20
    nvme: bool = True
    nvme_dir: Optional[str] = None
    nvme_rows: Tuple[int, ...] = NVME_ROWS
    quick: bool = False
    seed: int = 12345
    cache: bool = True
    cache_nodes: int = CACHE_NODES
    cache_warmup: int = CACHE_WARMUP






def _rows_arg(text: str) -> Tuple[int, ...]:
    try:
        vals = tuple(core.parse_size(t) for t in text.split(",") if t.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not vals:
        raise argparse.ArgumentTypeError("give at least one row size")
    return vals


def _orders_arg(text: str) -> Tuple[str, ...]:
    vals = tuple(t.strip() for t in text.split(",") if t.strip())
    if not vals or any(v not in ORDERS for v in vals):
        raise argparse.ArgumentTypeError(f"choose from {','.join(ORDERS)}, got {text!r}")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=core.size_arg, default=None,
                   help=f"table bytes (default {format_size(DEFAULT_SIZE)}; {format_size(QUICK_SIZE)} with --quick)")
    p.add_argument("--batch", type=core.size_arg, default=None,
                   help=f"gathered bytes per call (default {format_size(DEFAULT_BATCH)}; "
                        f"{format_size(QUICK_BATCH)} with --quick)")
    p.add_argument("--rows", type=_rows_arg, default=None, metavar="64,256,...",
                   help=f"row sizes in bytes (default {','.join(map(str, ROWS))})")
    p.add_argument("--orders", type=_orders_arg, default=ORDERS, metavar="random,sorted",
                   help="index orders to measure (comma-separated; default all)")
    p.add_argument("--repeat", type=core.positive_int, default=None,
                   help=f"timed rounds per row (default {DEFAULT_REPEAT}; {QUICK_REPEAT} with --quick)")
    p.add_argument("--warmup", type=core.non_negative_int, default=1,
                   help="untimed calls of each contender before the rounds (default 1)")
    p.add_argument("--threads", type=core.positive_int, default=None,
                   help="threads for hauler's gather (default: HAULER_GATHER_THREADS, else the core count)")
    p.add_argument("--no-loader", action="store_true", help="skip the DataLoader epoch")
    p.add_argument("--loader-batches", type=core.positive_int, default=20, help="mini-batches per DataLoader epoch")
    p.add_argument("--no-nvme", action="store_true", help="skip the NVMe (file) table block")
    p.add_argument("--nvme-dir", default=None,
                   help="directory for the NVMe table file (default: $TMPDIR or /var/tmp; put it on the drive)")
    p.add_argument("--nvme-rows", type=_rows_arg, default=None, metavar="256,4096",
                   help=f"row sizes of the NVMe block (default {','.join(map(str, NVME_ROWS))})")
    p.add_argument("--no-cache", action="store_true", help="skip the feature cache block")
    p.add_argument("--cache-nodes", type=core.positive_int, default=None,
                   help=f"nodes of the cache block's graph (default {CACHE_NODES}; {QUICK_CACHE_NODES} with --quick)")
    p.add_argument("--cache-warmup", type=core.non_negative_int, default=None,
                   help=f"untimed epochs warming the caches before the timed one (default {CACHE_WARMUP}; "
                        f"{QUICK_CACHE_WARMUP} with --quick)")
    p.add_argument("--quick", action="store_true", help="small table, three row sizes, three rounds (for tests)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the random table and indices")
    core.add_format_args(p)


def options_from_args(args: argparse.Namespace) -> Options:
    q = args.quick
    return Options(size=args.size or (QUICK_SIZE if q else DEFAULT_SIZE),
                   batch=args.batch or (QUICK_BATCH if q else DEFAULT_BATCH),
                   repeat=args.repeat or (QUICK_REPEAT if q else DEFAULT_REPEAT), warmup=max(0, args.warmup),
                   rows=args.rows or (QUICK_ROWS if q else ROWS), orders=tuple(args.orders), threads=args.threads,
                   loader=not args.no_loader, loader_batches=args.loader_batches if not q else 3,
                   nvme=not args.no_nvme, nvme_dir=args.nvme_dir,
                   nvme_rows=args.nvme_rows or (QUICK_NVME_ROWS if q else NVME_ROWS), quick=q, seed=args.seed,
                   cache=not args.no_cache, cache_nodes=args.cache_nodes or (QUICK_CACHE_NODES if q else CACHE_NODES),
                   cache_warmup=(args.cache_warmup if args.cache_warmup is not None else
                                 QUICK_CACHE_WARMUP if q else CACHE_WARMUP))


def main(args: argparse.Namespace) -> int:
    rep = run(options_from_args(args), core.output_of(args))
    return 0 if all(r["correct"] for r in rep.rows + rep.info.get("nvme", []) + rep.info.get("cache", [])) else 1


def _fx(v: float) -> str:
    return f"{v:.2f}"


def _f1(v: float) -> str:
    return f"{v:.1f}"


COLUMNS = [
    Column("row_bytes", "row", "B", format_size, width=4),
    Column("order", "order", "", left=True, width=6),
    Column("hauler_gbps", "hauler", "GB/s", _f1, width=6),
    Column("numpy_gbps", "np.take", "GB/s", _f1),
    Column("index_select_gbps", "isel", "GB/s", _f1, width=5),
    Column("fancy_gbps", "t[idx]", "GB/s", _f1),
    Column("memcpy_gbps", "memcpy", "GB/s", _f1),
    Column("vs_numpy", "x np", "x", _fx, width=5),
    Column("vs_index_select", "x isel", "x", _fx),
    Column("vs_fancy", "x t[i]", "x", _fx),
    Column("vs_memcpy", "/mcpy", "x", _fx, width=5),
    Column("correct_text", "correct", "", left=True, width=7),
    Column("copy", "copy", "", left=True),
]


def run(opts: Options, out: Optional[core.Output] = None) -> Report:
    import numpy as np
    import torch

    from hauler import _core
    from hauler.gather import FeatureStore

    hinfo = core.hauler_info()
    mach = core.machine_info()
    threads = opts.threads or hinfo["threads_default"] or core.usable_cores()
    torch_threads = torch.get_num_threads()
    header = [
        ("hauler", f"{hinfo['version']} ({hinfo['core']}); build: {hinfo['build_summary']}; "
                   f"cuda: {'available' if hinfo['cuda_available'] else 'not available'}: {hinfo['cuda_status']}"),
        ("threads", f"hauler gather {threads}; torch {torch_threads} (intra-op); numpy 1"),
        ("versions", f"numpy {hinfo['numpy']}, torch {torch.__version__}, python {mach['python']}"),
        ("machine", f"{mach['cpu']}, {mach['cores_usable']} usable cores of {mach['cores_os']}, {mach['memory']}; "
                    f"{mach['host']}, {mach['os']}; {mach['date']}"),
        ("table", f"{format_size(opts.size)} (rows = size / row bytes), random bytes; {format_size(opts.batch)} "
                  f"gathered per call; int64 indices, random (uniform, with repeats) or the same sorted"),
        ("rounds", f"{opts.warmup} warm-up call(s) each, then {opts.repeat} rounds timing every contender once, "
                   "back to back; GB/s of the median round = gathered bytes / s / 1e9"),
        ("x", "median over rounds of the within-round ratio (hauler bandwidth / peer bandwidth); /mcpy against "
              "memcpy of the same bytes: the faster of numpy.copyto (1 thread) and hauler's threaded slice copy"),
        ("correct", "hauler's rows == numpy.take's, byte for byte, checked outside the timed calls"),
    ]
    rep = Report(NAME, config={k: getattr(opts, k) for k in opts.__dataclass_fields__}, header=header,
                 columns=COLUMNS, info={"hauler": hinfo, "machine": mach, "torch": torch.__version__})
    out = out or core.Output("table")
    out.begin(rep)

    rng = np.random.default_rng(opts.seed)
    raw = np.empty(opts.size, dtype=np.uint8)
    step = 64 << 20
    for a in range(0, opts.size, step):  # random bytes, in pieces so memory stays flat
        raw[a:a + step] = rng.integers(0, 256, min(step, opts.size - a), dtype=np.uint8)
    for rb in opts.rows:
        nrows = opts.size // rb
        if nrows < 2:
            continue
        table = raw[:nrows * rb].reshape(nrows, rb)
        n = max(1, opts.batch // rb)
        fs = FeatureStore({"t": table})
        tt = torch.from_numpy(table)
        for order in opts.orders:
            idx = rng.integers(0, nrows, n, dtype=np.int64)
            if order == "sorted":
                idx.sort()
            ti = torch.from_numpy(idx)
            o_h = np.empty((n, rb), np.uint8)
            o_np = np.empty((n, rb), np.uint8)
            o_t = torch.empty((n, rb), dtype=torch.uint8)
            src = np.ascontiguousarray(table[:n])
            o_m = np.empty((n, rb), np.uint8)
            slice_idx = np.arange(n, dtype=np.int64)
            fns = {
                "hauler": lambda: fs.gather("t", idx, out=o_h, threads=opts.threads),
                "numpy": lambda: np.take(table, idx, axis=0, out=o_np),
                "index_select": lambda: torch.index_select(tt, 0, ti, out=o_t),
                "fancy": lambda: tt[ti],
                "memcpy1": lambda: np.copyto(o_m, src),
                "memcpyN": lambda: fs.gather("t", slice_idx, out=o_m, threads=opts.threads),
            }
            tim = core.time_interleaved(fns, opts.repeat, opts.warmup)
            fs.gather("t", idx, out=o_h)
            np.take(table, idx, axis=0, out=o_np)
            correct = bool(np.array_equal(o_h, o_np))
            nbytes = n * rb
            best_m = core.Timing([min(a, b) for a, b in zip(tim["memcpy1"].times, tim["memcpyN"].times)])
            row: Dict[str, Any] = {
                "row_bytes": rb, "order": order, "rows_gathered": n, "table_rows": nrows,
                "hauler_gbps": core.gbps(nbytes, tim["hauler"].median),
                "numpy_gbps": core.gbps(nbytes, tim["numpy"].median),
                "index_select_gbps": core.gbps(nbytes, tim["index_select"].median),
                "fancy_gbps": core.gbps(nbytes, tim["fancy"].median),
                "memcpy_gbps": core.gbps(nbytes, best_m.median),
                "vs_numpy": core.paired_ratio(tim["hauler"], tim["numpy"]),
                "vs_index_select": core.paired_ratio(tim["hauler"], tim["index_select"]),
                "vs_fancy": core.paired_ratio(tim["hauler"], tim["fancy"]),
                "vs_memcpy": core.paired_ratio(tim["hauler"], best_m),
                "correct": correct, "correct_text": "ok" if correct else "WRONG",
                "copy": _core.gather_copy_kind(rb, nbytes >= _stream_min()),
                "timings": {k: v.as_dict(nbytes) for k, v in tim.items()},
            }
            rep.rows.append(row)
            out.row(rep, row)
        del fs, tt
    if opts.loader:
        rep.footer += loader_epoch(opts, raw, rep)
    if opts.nvme:
        rep.footer += nvme_tables(opts, raw, rep)
    if opts.nvme and opts.cache:
        rep.footer += cache_epochs(opts, rep)
    rep.targets = evaluate_targets(rep.rows) + cache_targets(rep.info.get("cache"))
    out.end(rep)
    return rep


def _stream_min() -> int:
    from hauler import config
    return int(config.get("HAULER_GATHER_STREAM_MIN"))


def evaluate_targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    res = []
    for key, desc, sel, fig, need, unit in TARGETS:
        chosen = [r for r in rows if sel(r) and r.get(fig) is not None]
        t: Dict[str, Any] = {"key": key, "target": desc, "threshold": need}
        if not chosen:
            t.update(status="N/A", measured="no such rows in this run", worst=None)
        else:
            worst = min(chosen, key=lambda r: r[fig])
            misses = [r for r in chosen if r[fig] < need]
            t["status"] = "MISS" if misses else "PASS"
            t["worst"] = worst[fig]
            t["misses"] = [f"{format_size(r['row_bytes'])}/{r['order']} {r[fig]:.2f}" for r in misses]
            t["measured"] = (f"{len(misses)} of {len(chosen)} below" if misses else f"all {len(chosen)} met") + \
                f"; worst {format_size(worst['row_bytes'])}/{worst['order']} {worst[fig]:.2f} {unit}"
        res.append(t)
    return res


# -- DataLoader epoch -----------------------------------------------------------------------------

class _Collate:
    """Seeds -> sampled sub-graph -> its nodes' features: by torch indexing or by hauler."""

    def __init__(self, x: Any, store: Any, rowptr: Any, col: Any, fanouts: Tuple[int, ...], use_hauler: bool):
        self.x, self.store, self.rowptr, self.col = x, store, rowptr, col
        self.fanouts, self.use_hauler = fanouts, use_hauler

    def __call__(self, seeds: List[int]) -> Dict[str, Any]:
        import numpy as np
        import torch

        from hauler.sampling import sample_neighbors
        n_id, hops = sample_neighbors(self.rowptr, self.col, np.asarray(seeds), self.fanouts,
                                      np.random.default_rng(int(seeds[0])))
        ids = torch.from_numpy(n_id)
        feats = self.store.gather("x", ids) if self.use_hauler else self.x[ids]
        return {"n_id": ids, "x": feats, "hops": len(hops)}


def loader_epoch(opts: Options, raw: Any, rep: Report) -> List[str]:
    """Epoch time of a neighbour-sampled DataLoader with and without hauler (same seeds)."""
    import numpy as np
    import torch

    from hauler.gather import FeatureStore
    from hauler.sampling import random_graph

    dim = 128  # float32 features: 512 B rows
    nodes = max(1000, min(opts.size, 1 << 30) // (dim * 4))
    x = torch.from_numpy(raw[:nodes * dim * 4].view(np.float32).reshape(nodes, dim))
    rowptr, col = random_graph(nodes, avg_degree=10, seed=opts.seed)
    store = FeatureStore({"x": x})
    batch_size, fanouts = 1024, (15, 10)
    seeds = torch.randperm(nodes, generator=torch.Generator().manual_seed(opts.seed))
    seeds = seeds[:batch_size * opts.loader_batches]
    nbatches = max(1, seeds.numel() // batch_size)
    lines = [f"DataLoader epoch: {nodes} nodes x {dim} float32 features ({format_size(nodes * dim * 4)}), "
             f"avg degree 10, {seeds.numel() // batch_size} batches of {batch_size} seeds, fanouts {fanouts}; "
             "collate = sample (numpy) + gather the sampled nodes' features"]
    results: Dict[Tuple[int, bool], float] = {}
    gathered = 0
    for workers in (0, 2):
        for use in (False, True):
            loader = torch.utils.data.DataLoader(seeds.tolist(), batch_size=batch_size, num_workers=workers,
                                                 collate_fn=_Collate(x, store, rowptr, col, fanouts, use),
                                                 **({"multiprocessing_context": "fork"} if workers else {}))
            t0 = time.perf_counter()
            total = 0
            for b in loader:
                total += b["x"].numel() * 4
            results[(workers, use)] = time.perf_counter() - t0
            gathered = total
    for workers in (0, 2):
        t_torch, t_h = results[(workers, False)], results[(workers, True)]
        lines.append(f"  num_workers={workers}: torch x[n_id] {t_torch:.2f} s, hauler {t_h:.2f} s per epoch "
                     f"({t_torch / t_h:.2f}x as fast); {gathered / nbatches / 1e6:.1f} MB of features per batch")
    rep.info["loader"] = {f"workers{w}_{'hauler' if u else 'torch'}_s": v for (w, u), v in results.items()}
    return lines


# -- NVMe (file) tables ---------------------------------------------------------------------------

def _read_bytes() -> Optional[int]:
    """Bytes this process has fetched from storage (/proc/self/io read_bytes), None if unknown."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def nvme_tables(opts: Options, raw: Any, rep: Report) -> List[str]:
    """Cold gathers from a file table (hauler.io: only the 4 KiB blocks holding the rows, one
    request) against numpy fancy indexing on an np.memmap of the same file (page faults with the
    kernel's readahead). Every timed call starts on a cold cache: posix_fadvise(DONTNEED) of the
    whole file first (untimed) and, for the memmap, a fresh mapping (mapped pages cannot be dropped)."""
    import mmap
    import os
    import shutil
    import tempfile

    import numpy as np

    from hauler.gather import FeatureStore

    from .io import _fs_type, drop_cache

    rounds = min(opts.repeat, NVME_REPEAT)

    base = opts.nvme_dir or os.environ.get("TMPDIR") or "/var/tmp"
    os.makedirs(base, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="hauler-bench-gather-", dir=base)
    size = min(opts.size, raw.size)
    free = shutil.disk_usage(directory).free
    if size > free // 2:
        size = max(1 << 20, free // 4)
        rep.warnings.append(f"NVMe table scaled down to {format_size(size)} (free space {free >> 20} MiB)")
    path = os.path.join(directory, "table.bin")
    lines: List[str] = []
    results: List[Dict[str, Any]] = []
    try:
        raw[:size].tofile(path)
        rng = np.random.default_rng(opts.seed + 1)
        direct_note = None
        for rb in opts.nvme_rows:
            nrows = size // rb
            if nrows < 2:
                continue
            n = max(1, min(nrows, NVME_BATCH // rb))
            fs = FeatureStore()
            fs.add("t", path, backend="file", dtype=np.uint8, shape=(nrows, rb))
            t = fs._get("t")
            if direct_note is None:
                direct_note = "O_DIRECT" if t.file.direct else f"BUFFERED ({t.file.direct_reason})"
                if not t.file.direct:
                    rep.warnings.append(f"NVMe table: the file is not O_DIRECT here ({t.file.direct_reason}): hauler "
                                        "read it BUFFERED; cold only through fadvise DONTNEED")
            for order in opts.orders:
                idx = rng.integers(0, nrows, n, dtype=np.int64)
                if order == "sorted":
                    idx.sort()
                out = np.empty((n, rb), np.uint8)

                def via_memmap(advice: Optional[int]) -> Any:
                    mm = np.memmap(path, np.uint8, "r", shape=(nrows, rb))
                    if advice is not None:
                        mm._mmap.madvise(advice)  # numpy keeps the mmap object; no readahead around faults
                    return mm[idx]  # a copy; the mapping goes with mm

                fns = {"hauler": lambda: fs.gather("t", idx, out=out), "memmap": lambda: via_memmap(None),
                       "memmap_random": lambda: via_memmap(mmap.MADV_RANDOM)}
                times: Dict[str, List[float]] = {k: [] for k in fns}
                read: Dict[str, List[int]] = {k: [] for k in fns}
                correct = True
                names = list(fns)
                for i in range(rounds):
                    for name in names[i % 3:] + names[:i % 3]:  # rotated, as time_interleaved does
                        drop_cache(path)
                        r0 = _read_bytes()
                        t.reset_counters()
                        t0 = time.perf_counter()
                        got = fns[name]()
                        times[name].append(time.perf_counter() - t0)
                        r1 = _read_bytes()
                        read[name].append(t.bytes_read if name == "hauler" else
                                          (r1 - r0 if r0 is not None and r1 is not None else -1))
                        if name != "hauler":
                            correct = correct and bool(np.array_equal(out, got))
                tim = {k: core.Timing(v) for k, v in times.items()}
                res: Dict[str, Any] = {"row_bytes": rb, "order": order, "rows": n,
                                       "useful_bytes": np.unique(idx).size * rb,  # a repeated row is read once
                                       "correct": correct}
                for k in fns:
                    med_read = int(np.median(read[k]))
                    res[f"{k}_ms"] = tim[k].median * 1e3
                    res[f"{k}_read"] = med_read if med_read >= 0 else None
                    if k != "hauler":
                        res[f"vs_{k}"] = core.paired_ratio(tim["hauler"], tim[k])
                results.append(res)
            fs.close()
        lines.append(f"NVMe table: {format_size(size)} file in {directory} ({_fs_type(os.path.realpath(directory))}), "
                     f"hauler {direct_note}; {format_size(NVME_BATCH)} of rows per gather; cold cache (fadvise "
                     f"DONTNEED before each timed call, a fresh np.memmap each time); median of {rounds} rotated "
                     "rounds; mmap-rnd = the memmap with madvise(MADV_RANDOM)")
        lines.append("  u/r = bytes of the distinct rows gathered / bytes read from the file (hauler: its block "
                     "counters; memmaps: /proc/self/io read_bytes, n/a when the file system does not count them)")
        lines.append(f"  {'row':>5} {'order':<6} {'hauler ms':>9} {'mmap ms':>8} {'x mmap':>7} {'mmap-rnd ms':>11} "
                     f"{'x mmap-rnd':>10} {'u/r':>6} {'mmap u/r':>8} {'mmap-rnd u/r':>12} correct")

        def ratio(r: Dict[str, Any], k: str) -> str:
            return f"{r['useful_bytes'] / r[k]:.3f}" if r[k] else "n/a"

        for r in results:
            lines.append(f"  {format_size(r['row_bytes']):>5} {r['order']:<6} {r['hauler_ms']:9.1f} "
                         f"{r['memmap_ms']:8.1f} {r['vs_memmap']:7.2f} {r['memmap_random_ms']:11.1f} "
                         f"{r['vs_memmap_random']:10.2f} {ratio(r, 'hauler_read'):>6} {ratio(r, 'memmap_read'):>8} "
                         f"{ratio(r, 'memmap_random_read'):>12} {'ok' if r['correct'] else 'WRONG'}")
        bad = [r for r in results if not r["correct"]]
        if bad:
            rep.warnings.append(f"NVMe table: {len(bad)} row(s) INCORRECT (hauler's rows != the memmap's)")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    rep.info["nvme"] = results
    return lines


# -- feature cache in front of an NVMe table (issue 22) --------------------------------------------

def rmat_graph(scale: int, edge_factor: int, seed: int,
               abcd: Tuple[float, float, float, float] = (0.57, 0.19, 0.19, 0.05)) -> Tuple[Any, Any, Any]:
    """CSR (rowptr, col) of an undirected R-MAT graph of 2**scale nodes and about
    2 * edge_factor * 2**scale directed edges (each edge both ways, self loops dropped): every edge
    picks one quadrant of the adjacency matrix per level with probabilities abcd, which gives a
    power-law degree distribution. Node ids are permuted, so hot nodes are spread over the file:
    node perm[i] is the generator's node i (ids close in the generator's order share quadrants,
    so they are closer in the graph). Returns (rowptr, col, perm)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    n, m = 1 << scale, edge_factor << scale
    a, b, c, _ = abcd
    src = np.zeros(m, np.int64)
    dst = np.zeros(m, np.int64)
    for level in range(scale):
        r = rng.random(m)
        src |= (r >= a + b).astype(np.int64) << level
        dst |= (((r >= a) & (r < a + b)) | (r >= a + b + c)).astype(np.int64) << level
    perm = rng.permutation(n)
    src, dst = perm[src], perm[dst]
    keep = src != dst
    s2 = np.concatenate((src[keep], dst[keep]))
    d2 = np.concatenate((dst[keep], src[keep]))
    col = s2[np.argsort(d2, kind="stable")]
    rowptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(d2, minlength=n), out=rowptr[1:])
    return rowptr, col, perm


def cache_epochs(opts: Options, rep: Report) -> List[str]:
    """One epoch of feature loading (prefetch of the next batch, gather of this one) over
    neighbour-sampled batches of an R-MAT graph whose features are in a file, per case: no cache,
    the cache with lru / static (by degree) / hybrid at the same host memory, and the table in
    memory. The cache cases first run an untimed epoch of other batches (warm-up); the file is
    read with O_DIRECT where the file system allows it and dropped from the page cache before
    each case."""
    import os
    import shutil
    import tempfile

    import numpy as np

    from hauler.gather import FeatureStore
    from hauler.sampling import sample_neighbors

    from .io import drop_cache

    scale = max(8, int(opts.cache_nodes - 1).bit_length())
    nodes, dim = 1 << scale, 128
    row_bytes = dim * 4
    rowptr, col, perm = rmat_graph(scale, 8, opts.seed)
    degree = np.diff(rowptr).astype(np.float64)
    rng = np.random.default_rng(opts.seed + 2)
    train = rng.choice(nodes, max(1, int(nodes * CACHE_TRAIN)), replace=False)
    nb = -(-train.size // CACHE_SEEDS)
    t0 = time.perf_counter()
    batches = []
    for e in range(opts.cache_warmup + 1):   # each epoch: the training nodes shuffled, in batches
        order = rng.permutation(train)
        batches += [sample_neighbors(rowptr, col, order[k * CACHE_SEEDS:(k + 1) * CACHE_SEEDS], CACHE_FANOUTS,
                                     np.random.default_rng(opts.seed + e * nb + k))[0] for k in range(nb)]
    sample_s = time.perf_counter() - t0
    warm, timed = batches[:-nb], batches[-nb:]
    size = nodes * row_bytes
    budget = int(size * CACHE_SHARE)
    victim = int(size * VICTIM_SHARE)
    base = opts.nvme_dir or os.environ.get("TMPDIR") or "/var/tmp"
    os.makedirs(base, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="hauler-bench-cache-", dir=base)
    path = os.path.join(directory, "features.bin")
    results: List[Dict[str, Any]] = []
    try:
        if shutil.disk_usage(directory).free < 2 * size:
            rep.warnings.append(f"feature cache block skipped: {format_size(size)} of features do not fit twice in "
                                f"{directory}")
            return []
        table = np.empty((nodes, dim), np.float32)
        with open(path, "wb") as f:
            step = max(1, (64 << 20) // row_bytes)
            for a in range(0, nodes, step):
                table[a:a + step] = rng.standard_normal((min(step, nodes - a), dim), np.float32)
                table[a:a + step].tofile(f)
        cases = [("none", None), ("lru", {"policy": "lru"}), ("static", {"policy": "static", "scores": degree}),
                 ("hybrid", {"policy": "hybrid", "scores": degree, "weights": HYBRID_WEIGHTS,
                             "half_life": HYBRID_HALF_LIFE}), ("memory", None)]
        buf = np.empty((max(b.size for b in batches), dim), np.float32)
        direct = None
        for name, kw in cases:
            fs = FeatureStore()
            if name == "memory":
                fs.add("x", table)
            elif kw is None:
                fs.add("x", path, backend="file", dtype=np.float32, shape=(nodes, dim))
            else:
                fs.add("x", path, backend="file", dtype=np.float32, shape=(nodes, dim),
                       cache_bytes=budget - victim, victim_bytes=victim, **kw)
            if name != "memory":
                direct = fs._get("x").file.direct
                drop_cache(path)
            cached = kw is not None

            def epoch(bs: List[Any]) -> float:
                start = time.perf_counter()
                for k, ids in enumerate(bs):
                    if cached and k + 1 < len(bs):
                        fs.prefetch("x", bs[k + 1])
                    fs.gather("x", ids, out=buf[:ids.size])
                return time.perf_counter() - start

            if cached:
                epoch(warm)
                fs.stats("x", reset=True)
            elif name == "none":
                fs.stats("x", reset=True)
            secs = epoch(timed)
            st = fs.stats("x") if name != "memory" else {}
            correct = all(bool(np.array_equal(fs.gather("x", ids), table[ids])) for ids in timed[:3])
            res: Dict[str, Any] = {"case": name, "epoch_s": secs, "bytes_read": st.get("bytes_read", 0),
                                   "correct": correct}
            for k in ("hits", "misses", "victim_hits", "prefetch_used", "prefetch_wasted", "bytes_read_prefetch"):
                if k in st:
                    res[k] = st[k]
            results.append(res)
            fs.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    rows = sum(int(b.size) for b in timed)
    by = {r["case"]: r for r in results}
    mib = 1 << 20
    lines = [f"feature cache: R-MAT graph of {nodes} nodes (avg degree {col.size / nodes:.1f}, max "
             f"{int(degree.max())}), {dim} float32 features per node ({size / mib:.0f} MiB file, "
             f"{'O_DIRECT' if direct else 'BUFFERED'}, page cache dropped before each case); training seeds: "
             f"{train.size} random nodes ({CACHE_TRAIN:.0%}), an epoch = {nb} batches of {CACHE_SEEDS} seeds, "
             f"fanouts {CACHE_FANOUTS} ({rows / nb:.0f} sampled nodes per batch; sampling done beforehand, "
             f"{sample_s:.1f} s); per batch: prefetch(next batch) + gather(this batch)",
             f"  cache cases: {budget / mib:.1f} MiB of host memory ({CACHE_SHARE:.0%} of the table: cache "
             f"{(budget - victim) / mib:.1f} MiB + victim buffer {victim / mib:.1f} MiB), timed epoch after "
             f"{opts.cache_warmup} untimed epoch(s); static and hybrid scores = degree; hybrid weights "
             f"{HYBRID_WEIGHTS}, half-life {HYBRID_HALF_LIFE} gathers",
             f"  {'case':<7} {'epoch s':>8} {'x none':>7} {'read MiB':>9} {'cache %':>8} {'victim %':>8} "
             f"{'pf %':>6} {'pf wasted':>9} correct"]

    def share(r: Dict[str, Any], k: str) -> str:
        asked = sum(r.get(c, 0) for c in ("hits", "misses", "victim_hits", "prefetch_used"))
        return f"{100 * r[k] / asked:.1f}" if k in r and asked else "-"

    for r in results:
        lines.append(f"  {r['case']:<7} {r['epoch_s']:8.3f} {by['none']['epoch_s'] / r['epoch_s']:7.2f} "
                     f"{r['bytes_read'] / mib:9.1f} {share(r, 'hits'):>8} {share(r, 'victim_hits'):>8} "
                     f"{share(r, 'prefetch_used'):>6} {r.get('prefetch_wasted', '-'):>9} "
                     f"{'ok' if r['correct'] else 'WRONG'}")
    lines.append("  cache/victim/pf % = distinct rows per gather found in the cache / the victim buffer / rows a "
                 "prefetch loaded (the rest: read by the gather); read MiB includes prefetch reads")
    if any(not r["correct"] for r in results):
        rep.warnings.append("feature cache: a case gathered rows that differ from the table (WRONG)")
    rep.info["cache"] = results
    return lines


def cache_targets(results: Optional[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """Issue 22: hybrid reads fewer bytes than lru and static; its epoch >= 2x faster than no cache."""
    keys = [("cache_bytes", "hybrid reads fewer bytes than lru and static (same cache size)"),
            ("cache_epoch", ">= 2x faster epoch than no cache with hybrid at 10% of the table")]
    if not results:
        return [{"key": k, "target": d, "threshold": None, "status": "N/A", "measured": "cache block not run",
                 "worst": None} for k, d in keys]
    by = {r["case"]: r for r in results}
    h = by["hybrid"]["bytes_read"]
    others = min(by["lru"]["bytes_read"], by["static"]["bytes_read"])
    speed = by["none"]["epoch_s"] / by["hybrid"]["epoch_s"]
    return [
        {"key": keys[0][0], "target": keys[0][1], "threshold": None, "worst": h / others if others else None,
         "status": "PASS" if h < others else "MISS",
         "measured": f"hybrid {h / 1e6:.1f} MB, lru {by['lru']['bytes_read'] / 1e6:.1f} MB, static "
                     f"{by['static']['bytes_read'] / 1e6:.1f} MB"},
        {"key": keys[1][0], "target": keys[1][1], "threshold": 2.0, "worst": speed,
         "status": "PASS" if speed >= 2.0 else "MISS", "measured": f"{speed:.2f}x"},
    ]
