"""`hauler-bench all` as a user runs it: the files it writes (JSON, plain CSV, metadata, summary,
valid PNG and SVG plots), --output FILE, help text for every option. Never speed."""
import csv
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from hauler.bench import all as bench_all
from hauler.bench import cli

pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install -e '.[plot]')")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# the smallest cases of each benchmark: the test checks the files, not the figures
SMALL = ["--pack-args", "--cases vector --base double --threads 1 --no-mpi --repeat 1",
         "--gather-args", "--orders random --no-loader --no-nvme --repeat 1 --threads 1",
         "--io-args", "--parts sweep --no-fio --repeat 1",
         "--kv-args", "--ops gather --orders random --no-swap --no-transfer --repeat 1 --threads 1"]


def run_cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "hauler.bench.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=timeout)


def check_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC, path
    import matplotlib.image
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100, path


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("all") / "tmp"
    p = run_cli("all", "--quick", "--out", str(out), "--skip", "mpi", *SMALL)
    assert p.returncode in (0, 1), p.stderr  # 1: a benchmark's correctness failed; checked below
    return out, p


def test_quick_run_writes_every_file(quick_run):
    out, p = quick_run
    for name in ("pack", "gather", "io", "kv"):
        rep = json.loads((out / f"{name}.json").read_text())
        assert rep["benchmark"] == name and rep["rows"], name
        with open(out / f"{name}.csv", newline="") as f:
            lines = f.read().splitlines()
        assert not any(line.startswith("#") for line in lines), name  # plain CSV: no comment lines
        rows = list(csv.DictReader(lines))
        assert len(rows) == len(rep["rows"]), name
        meta = (out / f"{name}.meta.txt").read_text().splitlines()
        assert meta[0] == f"# hauler-bench {name}" and all(line.startswith("#") for line in meta)
        assert (out / f"{name}.txt").read_text().startswith(f"# hauler-bench {name}")
    assert not (out / "mpi.json").exists()
    assert all(r["correct"] for r in json.loads((out / "pack.json").read_text())["rows"])
    summary = list(csv.DictReader(open(out / "summary.csv", newline="")))
    assert summary and {s["benchmark"] for s in summary} >= {"pack", "gather", "io", "kv"}
    assert all(s["status"] in ("PASS", "MISS", "N/A", "-") for s in summary)
    text = (out / "summary.txt").read_text()
    assert text.startswith("# hauler-bench all:") and all(s["target"] in text for s in summary)
    assert p.stdout.startswith("# hauler-bench all:") and "# plots:" in p.stdout
    assert "hauler-bench all:" in p.stderr and "[1/4] pack: starting" in p.stderr  # progress on stderr


def test_quick_run_plots(quick_run):
    out, _ = quick_run
    for stem in ("pack_bandwidth", "pack_ratios", "gather_bandwidth", "gather_ratios", "kv_bandwidth"):
        check_png(out / f"{stem}.png")
        root = ET.parse(out / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg")


def test_pandas_reads_the_csv_without_options(quick_run):
    pd = pytest.importorskip("pandas")
    out, _ = quick_run
    df = pd.read_csv(out / "gather.csv")
    assert "hauler_gbps" in df.columns and len(df) > 0


def test_interposer_speedup_plot(tmp_path):
    # the plotting half alone, on rows shaped like hauler-bench mpi's (the mpi run is slow)
    rows = [{"mpi": "openmpi", "case": c, "block": 8, "bytes": b, "lib_gbps": 1.0, "shim_gbps": s,
             "speedup": s, "one_run": s, "bound": 4.0, "correct": True}
            for c in ("vector", "halo") for b, s in ((1024, 0.9), (65536, 1.7), (1 << 20, 2.5))]
    made = bench_all.plot_all(str(tmp_path), {"mpi": {"rows": rows}})
    names = {os.path.basename(m) for m in made}
    assert {"mpi_speedup.png", "mpi_speedup.svg", "mpi_bandwidth.png", "mpi_ratios.png"} <= names
    check_png(tmp_path / "mpi_speedup.png")


def test_output_file_like_fio(tmp_path):
    target = tmp_path / "report.txt"
    p = run_cli("--output", str(target), "pack", "--quick", "--cases", "vector", "--base", "double",
                "--threads", "1", "--no-mpi", "--repeat", "1", timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    assert target.read_text().startswith("# hauler-bench pack")


def test_every_option_has_help():
    for name in cli.COMMANDS:
        parser = cli.build_parser([name])
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"hauler-bench {name} {action.option_strings[0]} has no help text"
