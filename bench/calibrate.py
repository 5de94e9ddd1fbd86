"""``hauler-bench calibrate``: measure when the interposer's packing pays, write a model file.

For each installed MPI with a built interposer, 2 ranks ping-pong vector types (blocks of
MPI_DOUBLEs, MPI_BYTEs below 8 bytes; stride 2 x block) under the interposer with a pack-everything
model, each case timed in batches with the interposer paused by MPI_Pcontrol(0) (the library
alone) interleaved with batches packing, in the same launch; and each rank sends the same
messages to itself (the library copies those in process, where packing pays far less often).
The same launch, not alternate launches: on a shared or virtual machine one launch's transfers
can run at a third of the next one's speed, which turned single cells of the grid upside down.
Every (peer or self, block, message) speedup is written as a ``<flavour>.grid`` line: the shim
packs a point-to-point message only where the median of its 3 nearest measured cells was faster
packed.
For MPI_Pack and the collectives it also picks, per flavour:

  max_block  the largest block size (bytes) at which packing is faster for messages of 16 KiB
             and more (and at every smaller block size);
  min_bytes  the smallest message size from which packing 8-byte blocks is faster.

and writes them as ``<flavour>.max_block N`` / ``<flavour>.min_bytes N`` lines to the model file
(``--out``, default ``$XDG_CONFIG_HOME/hauler/interpose-model.txt``, else
``~/.config/hauler/interpose-model.txt``), which the shim reads whenever HAULER_INTERPOSE_MODEL is
unset (or from the file that variable names). On a noisy machine rerun it with a larger ``--budget``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from . import core
from .core import Column, Report, format_size
from .mpi import _flavours, measured

NAME = "calibrate"
HELP = "measure pack vs pass-through per block and message size; write the interposer's model file"

BLOCKS = (1, 8, 64, 256, 1024, 4096, 16384)
MESSAGES = (256, 1 << 10, 16 << 10, 256 << 10, 1 << 20)
PACK_ALL = "max_block 1000000000000\nmin_bytes 0\n"

COLUMNS = [
    Column("mpi", "mpi", "", left=True, width=7),
    Column("to", "to", "", left=True, width=4),
    Column("block", "block", "B", format_size, width=5),
    Column("bytes", "message", "B", format_size, width=7),
    Column("lib_us", "library", "us", lambda v: f"{v:.1f}", width=8),   # the shim paused, same launch
    Column("shim_us", "packed", "us", lambda v: f"{v:.1f}", width=8),
    Column("speedup", "speedup", "x", lambda v: f"{v:.2f}"),
    Column("correct_text", "correct", "", left=True, width=7),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mpi", default="all", type=core.mpi_flavours,
                   help="flavours: all, openmpi, mpich (comma-separated)")
    p.add_argument("--budget", type=core.positive_float, default=0.05, help="seconds per timed batch (default 0.05)")
    p.add_argument("--rounds", type=core.positive_int, default=2, help="launches (default 2)")
    from hauler.interpose import default_model_path

    out = default_model_path()
    p.add_argument("--out", default=out, help=f"model file to write (default {out}: the shim reads it "
                                             f"whenever HAULER_INTERPOSE_MODEL is unset)")
    p.add_argument("--quick", action="store_true", help="fewer block and message sizes")
    core.add_format_args(p)


def main(args: argparse.Namespace) -> int:
    flavours = core.flavours_arg(args.mpi)
    rep = run(flavours, args.budget, args.rounds, args.out, args.quick, core.output_of(args))
    return 0 if rep.rows and all(r["correct"] for r in rep.rows) else 1


def choose_model(rows: List[Dict[str, Any]]) -> Dict[str, int]:
    """max_block and min_bytes from one flavour's rows (see the module text)."""
    sp = {(r["block"], r["bytes"]): r["speedup"] for r in rows}
    blocks = sorted({b for b, _ in sp})
    max_block = 0
    for b in blocks:
        big = [v for (bb, m), v in sp.items() if bb == b and m >= 16 << 10]
        if not big or statistics.median(big) <= 1.0:
            break
        max_block = b
    msgs = sorted({m for _, m in sp})
    min_bytes = msgs[-1] + 1 if msgs else 0
    for m in reversed(msgs):  # the smallest size from which every larger one wins too
        v = sp.get((8, m))
        if v is None or v <= 1.0:
            break
        min_bytes = m
    return {"max_block": max_block, "min_bytes": min_bytes}


def in_launch(launches: List[Tuple]) -> Tuple[float, float, Optional[float], bool]:
    """(library time, packed time, speedup, correct) of one case from the interposer's launches,
    each row (time packing, correct, checksum, time paused): median times, the median of each
    launch's own ratio, and whether every launch checked out and left the same receive checksum."""
    tl = statistics.median(v[3] for v in launches)
    ts = statistics.median(v[0] for v in launches)
    ratios = [v[3] / v[0] for v in launches if v[0] > 0]
    correct = all(v[1] for v in launches) and len({v[2] for v in launches}) == 1
    return tl, ts, (statistics.median(ratios) if ratios else None), correct


def run(flavours: Optional[List[str]], budget: float, rounds: int, out_path: str, quick: bool = False,
        out: Optional[core.Output] = None) -> Report:
    mach = core.machine_info()
    found, warnings = _flavours(flavours)
    blocks = (1, 8, 256, 4096) if quick else BLOCKS
    messages = (1 << 10, 256 << 10) if quick else MESSAGES
    # blocks of 8 bytes and more as MPI_DOUBLEs, as scientific codes send them
    specs = [f"{kind}:{b}:{m}" for kind in ("dvector", "dself") for m in messages for b in blocks if b <= m]
    header = [("MPI", ", ".join(f"{f}: {cc}" for f, cc, _, _ in found) or "none"),
              ("machine", f"{mach['cpu']}, {mach['cores_usable']} usable cores; {mach['host']}; {mach['date']}"),
              ("method", f"2-rank ping-pong under the interposer packing everything, in each launch 3 batches "
                         f"paused by MPI_Pcontrol(0) (the library alone) interleaved with 3 packing, ~{budget:g} s "
                         f"each, medians; {rounds} launches, median times and the median of the launches' own "
                         f"ratios"),
              ("model", f"written to {out_path}")]
    rep = Report(benchmark=NAME, config={"budget": budget, "rounds": rounds, "out": out_path, "cases": specs},
                 header=header, columns=COLUMNS, warnings=warnings, info={"machine": mach})
    out = out or core.Output("table")
    out.begin(rep)
    models: Dict[str, Dict[str, int]] = {}
    grids: Dict[str, List[Any]] = {}
    with tempfile.TemporaryDirectory(prefix="hauler-calibrate-") as tmp:
        pack_all = os.path.join(tmp, "pack-all.txt")
        with open(pack_all, "w") as f:
            f.write(PACK_ALL)
        # every message packed, no trials: the packing itself is what is measured
        env = {"HAULER_INTERPOSE_MODEL": pack_all, "HAULER_INTERPOSE_TRIALS": "0"}
        for flav, _, shim in measured(found, budget, specs, rounds, env, rep.warnings, with_alone=False):
            rows = []
            for key in sorted(shim, key=lambda k: (k[0], k[1], k[2])):
                tl, ts, speedup, correct = in_launch(shim[key])
                row = {"mpi": flav, "to": "self" if key[0] == "dself" else "peer", "block": key[1], "bytes": key[2],
                       "lib_us": tl / 2 * 1e6, "shim_us": ts / 2 * 1e6, "speedup": speedup or 0.0, "correct": correct}
                row["correct_text"] = "yes" if row["correct"] else "NO"
                rows.append(row)
                rep.rows.append(row)
                out.row(rep, row)
            if not rows:   # a model from no measurement would switch packing off: write none
                rep.warnings.append(f"{flav}: nothing measured; no model written for it")
                continue
            models[flav] = choose_model([r for r in rows if r["to"] == "peer"])
            grids[flav] = [(r["to"], r["block"], r["bytes"], r["speedup"]) for r in rows if r["correct"]]
    if models:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(out_path, "w") as f:
            f.write(f"# hauler interposer model, written by hauler-bench calibrate "
                    f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}\n")
            f.write("# <flavour>.max_block: pack when the mean contiguous block is at most this many bytes\n")
            f.write("# <flavour>.min_bytes: pass messages smaller than this through\n")
            f.write("# <flavour>.grid peer|self BLOCK BYTES SPEEDUP: point-to-point, packed over the library alone\n")
            for flav, m in models.items():
                for k, v in m.items():
                    f.write(f"{flav}.{k} {v}\n")
                for to, b, n, x in grids.get(flav, []):
                    f.write(f"{flav}.grid {to} {b} {n} {x:.3f}\n")
        rep.info["model"] = models
        for flav, m in models.items():
            rep.footer.append(f"model {flav}: max_block {m['max_block']} B, min_bytes {m['min_bytes']} B")
        rep.footer.append(f"use it: export HAULER_INTERPOSE_MODEL={out_path}")
    out.end(rep)
    return rep
