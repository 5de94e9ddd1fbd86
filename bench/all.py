"""``hauler-bench all``: every benchmark in one run, its results as files and pictures.

    hauler-bench all [--quick] [--out DIR] [--skip mpi] [--output FILE]

For each benchmark (pack, mpi, gather, io, kv) DIR gets ``NAME.json`` (the whole report),
``NAME.csv`` (one row per case, a header line of column names and nothing else, so
``pandas.read_csv`` reads it without options), ``NAME.meta.txt`` (the ``#`` header: configuration,
versions, machine, warnings, targets) and ``NAME.txt`` (the table as ``hauler-bench NAME`` prints
it). Then ``summary.csv`` / ``summary.txt``: every target of every benchmark with PASS or MISS,
and plots (PNG and SVG, matplotlib): bandwidth against block, row or request size per contender
with the limit (memcpy, fio) drawn dashed, the ratios against the peers, and the interposer's
speedup per message size. The summary is printed (or written to ``--output FILE``); progress
goes to stderr.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from . import core

NAME = "all"
ORDER = ("pack", "mpi", "gather", "io", "kv")

# What each benchmark's plots show: the x column, the columns whose values split the rows into
# panels, the contenders (GB/s), the limits drawn dashed, and the ratio columns.
PLOTS: Dict[str, Dict[str, Any]] = {
    "pack": {"x": "block", "xlabel": "block (bytes)", "panels": ("case", "base"),
             "series": ("hauler_pack_gbps", "hauler_unpack_gbps", "mpi_pack_gbps", "mpi_unpack_gbps"),
             "limits": ("memcpy1_gbps", "memcpyN_gbps"),
             "ratios": ("pack_vs_mpi", "unpack_vs_mpi", "pack_vs_memcpy", "unpack_vs_memcpy")},
    "mpi": {"x": "bytes", "xlabel": "message (bytes)", "panels": ("mpi", "case", "block"),
            "series": ("lib_gbps", "shim_gbps"), "limits": (), "ratios": ("speedup", "one_run", "bound")},
    "gather": {"x": "row_bytes", "xlabel": "row (bytes)", "panels": ("order",),
               "series": ("hauler_gbps", "numpy_gbps", "index_select_gbps", "fancy_gbps"),
               "limits": ("memcpy_gbps",), "ratios": ("vs_numpy", "vs_index_select", "vs_fancy", "vs_memcpy")},
    "io": {"x": "bs", "xlabel": "request (bytes)", "panels": ("part", "pattern", "qd"),
           "series": ("hauler_gbps",), "limits": ("peer_gbps",), "ratios": ("vs_peer",)},
    "kv": {"x": "extent", "xlabel": "extent (bytes)", "panels": ("op", "order", "extents"),
           "series": ("hauler_gbps", "loop_gbps", "tloop_gbps", "torch_gbps"), "limits": ("limit_gbps",),
           "ratios": ("vs_loop", "vs_torch", "vs_limit")},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="pass --quick to every benchmark (small sizes, few rounds: minutes, not tens of minutes)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for the results (made if missing; default bench-results/<date-time>)")
    p.add_argument("--skip", type=core.list_arg(ORDER), default=(), metavar="mpi,io",
                   help="benchmarks not to run (comma-separated)")
    p.add_argument("--no-plots", action="store_true", help="write the data and the summary, no pictures")
    for name in ORDER:
        p.add_argument(f"--{name}-args", default="", metavar="ARGS",
                       help=f"extra arguments for hauler-bench {name}, one string (e.g. \"--repeat 3\")")


def main(args: argparse.Namespace) -> int:
    out_dir = args.out or os.path.join("bench-results", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out_dir, exist_ok=True)
    names = [n for n in ORDER if n not in args.skip]
    t0 = time.monotonic()
    results: Dict[str, Dict[str, Any]] = {}
    rc = 0
    for i, name in enumerate(names):
        _progress(f"[{i + 1}/{len(names)}] {name}: starting ({len(names) - i - 1} after it)", t0)
        extra = getattr(args, f"{name}_args", "").split()
        if args.quick:
            extra = ["--quick"] + extra
        res = run_one(name, extra, t0)
        results[name] = res
        write_files(out_dir, name, res)
        rc = rc or res["rc"]
        _progress(f"[{i + 1}/{len(names)}] {name}: done, exit {res['rc']}, {len(res['rows'])} rows", t0)
    summary = summarize(results)
    write_summary(out_dir, summary)
    plots: List[str] = []
    if not args.no_plots:
        _progress("plotting", t0)
        plots = plot_all(out_dir, results)
    text = format_summary(summary, out_dir, plots)
    sys.stdout.write(text)
    sys.stdout.flush()
    _progress(f"all done; results in {os.path.abspath(out_dir)}", t0)
    return rc


def _progress(msg: str, t0: float) -> None:
    sys.stderr.write(f"hauler-bench all: {time.monotonic() - t0:7.1f} s  {msg}\n")
    sys.stderr.flush()


class _Capture(core.Output):
    """The table into a buffer, the report kept, a progress line per row on stderr."""

    def __init__(self, name: str, t0: float):
        super().__init__("table", io.StringIO())
        self.name, self.t0, self.rows, self.report = name, t0, 0, None

    def row(self, rep: core.Report, row: Dict[str, Any]) -> None:
        super().row(rep, row)
        self.rows += 1
        _progress(f"    {self.name}: {self.rows} case(s) measured", self.t0)

    def end(self, rep: core.Report) -> None:
        super().end(rep)
        self.report = rep


def run_one(name: str, argv: Sequence[str], t0: float) -> Dict[str, Any]:
    """Runs `hauler-bench name argv...` in this process and returns its report as data."""
    from .cli import COMMANDS
    mod = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"hauler-bench {name}")
    mod.add_arguments(parser)
    args = parser.parse_args(list(argv))
    cap = _Capture(name, t0)
    saved = core.output_of
    core.output_of = lambda _args: cap  # every benchmark's main asks core.output_of for its Output
    try:
        rc = int(mod.main(args))
        error = None
    except Exception as e:  # noqa: BLE001 - one benchmark failing must not lose the others' results
        rc, error = 1, f"{type(e).__name__}: {e}"
    finally:
        core.output_of = saved
    rep = cap.report
    table = cap.stream.getvalue()
    if rep is None:
        return {"rc": rc or 1, "error": error or "the benchmark made no report", "rows": [], "targets": [],
                "columns": [], "table": table, "report": None}
    return {"rc": rc, "error": error, "rows": rep.rows, "targets": rep.targets,
            "columns": [c.key for c in rep.columns], "table": table, "report": rep.as_dict()}


def _scalar(v: Any) -> Any:
    """v when it is one value; None for a list or dict (those stay out of the CSV)."""
    return v if v is None or isinstance(v, (int, float, str, bool)) else None


def write_files(out_dir: str, name: str, res: Dict[str, Any]) -> None:
    base = os.path.join(out_dir, name)
    with open(base + ".json", "w") as f:
        json.dump(res["report"] or {"benchmark": name, "error": res["error"]}, f, indent=1, default=str)
        f.write("\n")
    # scalar columns only (the table's first); nested values (timings, checks) are in the JSON
    keys = list(res["columns"])
    for r in res["rows"]:
        keys += [k for k in r if k not in keys]
    keys = [k for k in keys if all(_scalar(r.get(k)) is r.get(k) for r in res["rows"])]
    with open(base + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in res["rows"]:
            w.writerow(["" if r.get(k) is None else r.get(k) for k in keys])
    with open(base + ".meta.txt", "w") as f:
        f.writelines(line + "\n" for line in res["table"].splitlines() if line.startswith("#"))
        if res["error"]:
            f.write(f"# ERROR: {res['error']}\n")
    with open(base + ".txt", "w") as f:
        f.write(res["table"])


def summarize(results: Dict[str, Dict[str, Any]]) -> List[Dict[str, str]]:
    out = []
    for name, res in results.items():
        if res["error"]:
            out.append({"benchmark": name, "target": "runs to the end", "measured": res["error"], "status": "MISS"})
        for t in res["targets"]:
            out.append({"benchmark": name, "target": str(t.get("target")), "measured": str(t.get("measured")),
                        "status": str(t.get("status"))})
        if not res["targets"] and not res["error"]:
            out.append({"benchmark": name, "target": "(no targets)", "measured": f"{len(res['rows'])} rows",
                        "status": "-"})
    return out


def write_summary(out_dir: str, summary: List[Dict[str, str]]) -> None:
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["benchmark", "target", "measured", "status"])
        w.writeheader()
        w.writerows(summary)
    with open(os.path.join(out_dir, "summary.txt"), "w") as f:
        f.write(format_summary(summary, out_dir, []))


def format_summary(summary: List[Dict[str, str]], out_dir: str, plots: Sequence[str]) -> str:
    count = {k: sum(s["status"] == k for s in summary) for k in ("PASS", "MISS", "N/A")}
    lines = [f"# hauler-bench all: {count['PASS']} PASS, {count['MISS']} MISS, {count['N/A']} N/A; "
             f"results in {os.path.abspath(out_dir)}"]
    for s in summary:
        lines.append(f"{s['status']:<4}  {s['benchmark']:<6}  {s['target']}: {s['measured']}")
    if plots:
        lines.append(f"# plots: {', '.join(os.path.basename(p) for p in plots)}")
    return "\n".join(lines) + "\n"


# -- plots ----------------------------------------------------------------------------------------

def _num(v: Any) -> Optional[float]:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return None


def _panels(rows: List[Dict[str, Any]], spec: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        if _num(r.get(spec["x"])) is None or _num(r.get(spec["x"])) <= 0:
            continue
        key = " ".join(str(r.get(k)) for k in spec["panels"] if r.get(k) is not None) or "all"
        out.setdefault(key, []).append(r)
    return out


def _figure(n: int):
    import matplotlib.pyplot as plt
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _line(ax: Any, rows: List[Dict[str, Any]], x: str, key: str, label: str, **kw: Any) -> bool:
    pts = sorted((_num(r[x]), _num(r.get(key))) for r in rows if _num(r.get(key)) is not None)
    if not pts:
        return False
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label, **kw)
    return True


def _label(key: str) -> str:
    return key[:-5] if key.endswith("_gbps") else key


def _save(fig: Any, out_dir: str, stem: str, made: List[str]) -> None:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    for ext in ("png", "svg"):
        path = os.path.join(out_dir, f"{stem}.{ext}")
        fig.savefig(path, dpi=110)
        made.append(path)
    plt.close(fig)


def plot_all(out_dir: str, results: Dict[str, Dict[str, Any]]) -> List[str]:
    """Bandwidth and ratio plots of every benchmark with rows; the interposer's speedup."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    made: List[str] = []
    for name, res in results.items():
        spec = PLOTS.get(name)
        if spec is None or not res["rows"]:
            continue
        panels = _panels(res["rows"], spec)
        if not panels:
            continue
        for kind, keys in (("bandwidth", spec["series"]), ("ratios", spec["ratios"])):
            fig, axes = _figure(len(panels))
            drawn = False
            for ax, (title, rows) in zip(axes, panels.items()):
                for k in keys:
                    drawn |= _line(ax, rows, spec["x"], k, _label(k))
                if kind == "bandwidth":
                    for k in spec["limits"]:
                        drawn |= _line(ax, rows, spec["x"], k, "limit" if k == "limit_gbps" else f"limit: {_label(k)}", linestyle="--", alpha=0.7)
                else:
                    ax.axhline(1.0, color="grey", linewidth=0.8)
                ax.set_xscale("log", base=2)
                ax.set_title(f"{name}: {title}", fontsize=9)
                ax.set_xlabel(spec["xlabel"])
                ax.set_ylabel("GB/s" if kind == "bandwidth" else "ratio (x)")
                ax.grid(True, alpha=0.3)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7)
            if drawn:
                _save(fig, out_dir, f"{name}_{kind}", made)
            else:
                import matplotlib.pyplot as plt
                plt.close(fig)
    mpi = results.get("mpi")
    if mpi and mpi["rows"]:
        made += _plot_speedup(out_dir, mpi["rows"])
    return made


def _plot_speedup(out_dir: str, rows: List[Dict[str, Any]]) -> List[str]:
    """The interposer's speedup (library time / time with the shim) per message size, one line per
    MPI flavour and case."""
    fig, axes = _figure(1)
    ax = axes[0]
    lines: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        if _num(r.get("bytes")) and _num(r.get("speedup")) is not None:
            lines.setdefault(f"{r.get('mpi')} {r.get('case')}", []).append(r)
    made: List[str] = []
    if not lines:
        import matplotlib.pyplot as plt
        plt.close(fig)
        return made
    for label, rs in lines.items():
        pts = sorted((_num(r["bytes"]), _num(r["speedup"])) for r in rs)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message (bytes)")
    ax.set_ylabel("speedup with the interposer (x)")
    ax.set_title("hauler interposer: library time / time with the shim", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, out_dir, "mpi_speedup", made)
    return made
