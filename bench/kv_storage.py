"""``hauler-bench kv --storage-attention``: decode attention in an emulated computational drive
(hauler.kv.StorageAttention, after InstInfer) against the FlexGen-style baseline, SIMULATED.

For each context length a batch of requests' KV is put on the drive (files in --dir, read with
hauler.io). A decode step is one attention call per layer for the whole batch: in storage, the
queries go to the drive and the outputs come back; the baseline loads each request's layer of KV
from the same files through the same link and computes on the host (the same torch math). The link is a
token bucket per direction at each bandwidth of the sweep, and unthrottled. Reported: decode
steps/s of both, the bytes crossing the link per step, and the crossover: the link bandwidth
below which in-storage attention wins, measured on the sweep and estimated from the unthrottled
times (t + bytes / bandwidth for each side). Drive and host share this machine's cores, and the
drive's "internal bandwidth" is this machine's file system: the figures simulate a device that
is not here.

    from hauler.bench import kv_storage
    report = kv_storage.run(kv_storage.Options(quick=True))
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from . import core
from .core import Column, Report, format_size

NAME = "kv-storage-attention"
CONTEXTS = (1024, 4096, 16384)
QUICK_CONTEXTS = (256, 2048)
LINKS = (0.5, 2.0, 8.0, 32.0)          # GB/s per direction (PCIe 3 x1 .. PCIe 5 x4-ish)
QUICK_LINKS = (0.5, 8.0)
# the model: 32 query heads over 8 KV heads of 128 (GQA 4), fp16, 16-token blocks
Q_HEADS, KV_HEADS, HEAD, BLOCK = 32, 8, 128, 16
LAYERS, QUICK_LAYERS = 4, 2
BATCH, QUICK_BATCH = 2, 2
REPEAT, QUICK_REPEAT = 3, 1


@dataclass
class Options:
    contexts: Tuple[int, ...] = CONTEXTS
    links: Tuple[float, ...] = LINKS
    layers: int = LAYERS
    batch: int = BATCH
    repeat: int = REPEAT
    threads: int = 1
    host_threads: int = 1
    directory: Optional[str] = None
    quick: bool = False
    seed: int = 12345
    notes: List[str] = field(default_factory=list)


def _ints_arg(text: str) -> Tuple[int, ...]:
    try:
        vals = tuple(core.parse_size(t) for t in text.split(",") if t.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"give positive token counts, got {text!r}")
    return vals


def _floats_arg(text: str) -> Tuple[float, ...]:
    try:
        vals = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"give link bandwidths in GB/s, comma-separated, got {text!r}") from None
    if not vals or min(vals) <= 0:
        raise argparse.ArgumentTypeError(f"give positive link bandwidths in GB/s, got {text!r}")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this section, added to ``hauler-bench kv``'s parser (which has --quick,
    --repeat, --dir and --seed)."""
    p.add_argument("--storage-attention", action="store_true",
                   help="run only the in-storage attention section (SIMULATED drive, bench/kv_storage.py)")
    p.add_argument("--contexts", type=_ints_arg, default=None, metavar="1K,4K,...",
                   help=f"storage attention: context lengths in tokens (default {','.join(map(str, CONTEXTS))})")
    p.add_argument("--links", type=_floats_arg, default=None, metavar="0.5,2,...",
                   help=f"storage attention: link bandwidths in GB/s (default {','.join(map(str, LINKS))})")
    p.add_argument("--drive-threads", type=core.positive_int, default=1,
                   help="storage attention: the emulated drive's compute threads (default 1)")
    p.add_argument("--host-threads", type=core.positive_int, default=1,
                   help="storage attention: the host's torch threads for the baseline (default 1: on a machine "
                        "the drive shares, more threads spin against it)")


def options_from_args(a: argparse.Namespace) -> Options:
    q = bool(a.quick)
    return Options(contexts=a.contexts or (QUICK_CONTEXTS if q else CONTEXTS),
                   links=a.links or (QUICK_LINKS if q else LINKS),
                   layers=QUICK_LAYERS if q else LAYERS, batch=QUICK_BATCH if q else BATCH,
                   repeat=a.repeat or (QUICK_REPEAT if q else REPEAT), threads=a.drive_threads,
                   host_threads=a.host_threads,
                   directory=a.directory, quick=q, seed=a.seed)


def main(args: argparse.Namespace) -> int:
    rep = run(options_from_args(args), core.output_of(args))
    return 0 if all(r.get("correct") is not False for r in rep.rows) else 1


def _fx(v: float) -> str:
    return f"{v:.2f}"


def _link(v: Optional[float]) -> str:
    return "none" if v is None else f"{v:g}"


COLUMNS = [
    Column("context", "context", "tok", width=7),
    Column("link_text", "link", "GB/s", width=5),
    Column("instorage_sps", "in-stor", "step/s", _fx, width=7),
    Column("baseline_sps", "baseline", "step/s", _fx, width=8),
    Column("speedup", "x base", "x", _fx, width=6),
    Column("instorage_bytes", "in-stor", "B/step", format_size, width=7),
    Column("baseline_bytes", "baseline", "B/step", format_size, width=8),
    Column("drive_read_bytes", "drive rd", "B/step", format_size, width=8),
    Column("correct_text", "correct", "", left=True, width=7),
]


def run(opts: Options, out: Optional[core.Output] = None) -> Report:
    import torch

    from hauler import io, kv

    hinfo = core.hauler_info()
    mach = core.machine_info()
    base = opts.directory or os.environ.get("TMPDIR") or "/var/tmp"
    os.makedirs(base, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="hauler-bench-kvsa-", dir=base)
    probe = os.path.join(directory, "probe")
    with io.File(probe, "w") as f:
        direct, why = f.direct, f.direct_reason
    os.unlink(probe)
    from .io import _fs_type
    warnings = ["SIMULATED: no computational drive exists here; a process on this machine plays it and a token "
                "bucket plays the link (see the header)"]
    if not direct:
        warnings.append(f"the drive directory refuses O_DIRECT ({why}): its reads come from the page cache")
    per_req_layer = lambda t: -(-t // BLOCK) * BLOCK * KV_HEADS * HEAD * 2 * 2  # noqa: E731
    header = [
        ("simulated", "an emulated computational drive: a separate process reading the KV files with hauler.io and "
                      f"computing attention with {opts.threads} torch thread(s); the host<->drive link a token "
                      "bucket per direction; both on this machine's cores and file system"),
        ("model", f"{opts.layers} layers, {Q_HEADS} query heads over {KV_HEADS} KV heads of {HEAD} (GQA "
                  f"{Q_HEADS // KV_HEADS}), float16, {BLOCK}-token blocks; batch {opts.batch} requests, one token "
                  f"each; a step = attention of every layer (KV of one request and layer: "
                  f"{format_size(per_req_layer(opts.contexts[0]))} at {opts.contexts[0]} tokens)"),
        ("contenders", "in-stor: StorageAttention.attend (queries in, outputs out); baseline: attend_on_host "
                       "(FlexGen-style: the layer's KV loaded through the same link, then the same attention math on "
                       f"the host with {opts.host_threads} torch thread(s))"),
        ("rounds", f"1 warm-up step, then {opts.repeat} timed step(s) each, alternating; step/s of the median step; "
                   "B/step: bytes crossing the link both ways (control messages included); drive rd: KV the drive "
                   "read inside (never crossing)"),
        ("correct", "in-storage outputs == the baseline's within rtol = atol = 2e-3 (float16 outputs; both are "
                    "checked against torch SDPA in tests/test_kv_storage_attention.py)"),
        ("drive files", f"{directory} ({_fs_type(os.path.realpath(directory))}); "
                        f"{'O_DIRECT' if direct else 'BUFFERED: ' + why}; I/O backend {io.backend_description()}"),
        ("versions", f"hauler {hinfo['version']}, torch {torch.__version__}, python {mach['python']}"),
        ("machine", f"{mach['cpu']}, {mach['cores_usable']} usable cores of {mach['cores_os']}, {mach['memory']}; "
                    f"{mach['host']}, {mach['os']}; {mach['date']}"),
    ]
    rep = Report(NAME, config={k: getattr(opts, k) for k in opts.__dataclass_fields__ if k != "notes"},
                 header=header, columns=COLUMNS, warnings=warnings, info={"hauler": hinfo, "machine": mach})
    out = out or core.Output("table")
    out.begin(rep)
    gen = torch.Generator().manual_seed(opts.seed)
    crossings = []
    threads = torch.get_num_threads()
    torch.set_num_threads(opts.host_threads)
    try:
        with kv.StorageAttention(directory, threads=opts.threads, timeout=3600) as sa:
            for ctx in opts.contexts:
                crossings.append(_context(opts, rep, out, sa, ctx, gen))
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(directory, ignore_errors=True)
    rep.footer += [f"crossover at {c['context']} tokens: {c['text']}" for c in crossings]
    rep.info["crossover"] = crossings
    bad = [r for r in rep.rows if r.get("correct") is False]
    if bad:
        rep.warnings.append(f"{len(bad)} row(s) INCORRECT: " + "; ".join(
            f"{r['context']} tokens, link {_link(r['link_gbps'])}" for r in bad))
    out.end(rep)
    return rep


def _context(opts: Options, rep: Report, out: core.Output, sa: Any, ctx: int, gen: Any) -> Dict[str, Any]:
    """Rows of one context length (each link bandwidth, then unthrottled) and its crossover."""
    import torch
    ids = [f"ctx{ctx}-{i}" for i in range(opts.batch)]
    sa.link.bandwidth = None
    for name in ids:
        k = torch.randn(opts.layers, ctx, KV_HEADS, HEAD, generator=gen).to(torch.float16)
        v = torch.randn(opts.layers, ctx, KV_HEADS, HEAD, generator=gen).to(torch.float16)
        sa.put(name, k, v, block_size=BLOCK)
        del k, v
    qs = [torch.randn(opts.batch, Q_HEADS, HEAD, generator=gen).to(torch.float16) for _ in range(opts.layers)]

    def step(fn: Any) -> List[Any]:
        return [fn(qs[layer], ids, layer) for layer in range(opts.layers)]

    measured = {}
    try:
        for gbps in list(opts.links) + [None]:
            sa.link.bandwidth = None if gbps is None else gbps * 1e9
            got = {}
            times: Dict[str, List[float]] = {"in": [], "base": []}
            traffic: Dict[str, Dict[str, float]] = {}
            for mode, fn in (("in", sa.attend), ("base", sa.attend_on_host)):
                got[mode] = step(fn)   # warm-up (and the outputs compared)
            for _ in range(opts.repeat):
                for mode, fn in (("in", sa.attend), ("base", sa.attend_on_host)):
                    sa.reset_counters()
                    t0 = time.perf_counter()
                    step(fn)
                    times[mode].append(time.perf_counter() - t0)
                    traffic[mode] = sa.counters
            ok = all(torch.allclose(a.float(), b.float(), rtol=2e-3, atol=2e-3) for a, b in zip(got["in"], got["base"]))
            t_in, t_base = statistics.median(times["in"]), statistics.median(times["base"])
            row = {"section": "storage-attention", "context": ctx, "link_gbps": gbps, "link_text": _link(gbps),
                   "instorage_sps": 1 / t_in,
                   "baseline_sps": 1 / t_base, "speedup": t_base / t_in,
                   "instorage_bytes": int(traffic["in"]["to_drive_bytes"] + traffic["in"]["from_drive_bytes"]),
                   "baseline_bytes": int(traffic["base"]["to_drive_bytes"] + traffic["base"]["from_drive_bytes"]),
                   "drive_read_bytes": int(traffic["in"]["kv_read_bytes"]), "instorage_s": t_in,
                   "baseline_s": t_base, "correct": ok, "correct_text": "yes" if ok else "NO"}
            measured[gbps] = row
            rep.rows.append(row)
            out.row(rep, row)
    finally:
        for name in ids:
            sa.drop(name)
    return _crossover(ctx, measured, opts.links)


def _crossover(ctx: int, measured: Dict[Optional[float], Dict[str, Any]], links: Tuple[float, ...]) -> Dict[str, Any]:
    """Where the baseline catches up: the first swept bandwidth at which it is at least as fast,
    and the estimate from the unthrottled times, t + bytes / B for each side."""
    free = measured[None]
    wins = [g for g in sorted(links) if measured[g]["baseline_s"] <= measured[g]["instorage_s"]]
    dt = free["instorage_s"] - free["baseline_s"]
    db = free["baseline_bytes"] - free["instorage_bytes"]
    est = db / dt / 1e9 if dt > 0 else None
    sweep = (f"in-storage faster at every swept link up to {max(links):g} GB/s" if not wins else
             f"baseline at least as fast from {wins[0]:g} GB/s on the sweep")
    model = (f"estimated {est:.2f} GB/s (in-storage faster below it)" if est is not None else
             "in-storage faster at any link bandwidth (it is faster unthrottled)")
    return {"context": ctx, "estimate_gbps": est, "baseline_wins_from_gbps": wins[0] if wins else None,
            "text": f"{sweep}; {model}"}


def _main() -> int:
    p = argparse.ArgumentParser(prog="python -m hauler.bench.kv_storage", description=__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeat", type=core.positive_int, default=None)
    p.add_argument("--dir", dest="directory", default=None)
    p.add_argument("--seed", type=int, default=12345)
    core.add_format_args(p)
    return main(p.parse_args())


if __name__ == "__main__":
    raise SystemExit(_main())
