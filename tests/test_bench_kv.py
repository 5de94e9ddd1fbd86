"""`hauler-bench kv --quick` as a user runs it (a subprocess): structure and correctness, never speed."""
import json

import pytest

from test_bench import bench

ROW_KEYS = {"section", "op", "extent", "extents", "order", "bytes", "hauler_gbps", "loop_gbps", "torch_gbps",
            "limit_gbps", "vs_loop", "vs_torch", "vs_limit", "correct", "correct_text", "timings"}


@pytest.fixture(scope="module")
def quick_json(tmp_path_factory):
    d = tmp_path_factory.mktemp("kvbench")
    return json.loads(bench("kv", "--quick", "--json", "--no-transfer", "--dir", str(d)).stdout)


def test_quick_json_rows_parse_and_are_correct(quick_json):
    rows = quick_json["rows"]
    assert quick_json["benchmark"] == "kv"
    local = [r for r in rows if r["section"] == "local"]
    assert {(r["op"], r["order"]) for r in local} == {(op, o) for op in ("gather", "scatter", "copy")
                                                      for o in ("random", "sequential")}
    assert {r["extent"] for r in local} == {4096, 65536} and {r["extents"] for r in local} >= {256}
    swap = {r["op"]: r for r in rows if r["section"] == "swap"}
    assert set(swap) == {"out-host", "in-host", "out-ssd", "in-ssd"}
    for r in rows:
        assert ROW_KEYS <= set(r), f"missing {ROW_KEYS - set(r)} in {r['section']}/{r['op']}"
        assert r["correct"] is True and r["correct_text"] == "ok", r
        assert r["hauler_gbps"] > 0 and r["loop_gbps"] > 0 and r["torch_gbps"] > 0
        assert r["bytes"] == r["extent"] * r["extents"]
    for r in local:
        assert r["tloop_gbps"] > 0 and r["limit_gbps"] > 0 and r["plan_segments"] >= 1
    info = quick_json["info"]
    assert info["plan_build"]["extents"] == 16384 and info["plan_build"]["median_s"] > 0
    mt = info["multi_turn"]
    assert mt["tracked"]["correct"] and mt["all"]["correct"]
    assert 0 < mt["tracked"]["bytes"] < mt["all"]["bytes"]
    assert [t["key"] for t in quick_json["targets"]] == ["loop_4k", "memcpy_64k", "fio_ssd", "plan_16k"]
    assert all(t["status"] in ("PASS", "MISS", "N/A") for t in quick_json["targets"])


def test_table_output(tmp_path):
    out = bench("kv", "--quick", "--no-ssd", "--no-transfer", "--ops", "gather", "--orders", "random",
                "--counts", "256", "--extents", "4K").stdout
    lines = out.splitlines()
    assert lines[0] == "# hauler-bench kv"
    header = [l for l in lines if l.startswith("#")]
    rows = [l for l in lines if l.strip() and not l.startswith("#")]
    for word in ("hauler", "machine", "local", "peers", "correct"):
        assert any(l.startswith("# " + word) for l in header), f"no '# {word}' line in:\n{out}"
    assert any("plan build: 16384 extents" in l for l in header)
    assert any("multi-turn:" in l and "swap-in ok" in l for l in header)
    assert [l.split()[:5] for l in rows] == [["local", "gather", "4K", "256", "random"],
                                            ["swap", "out-host", "32K", "256", "random"],
                                            ["swap", "in-host", "32K", "256", "random"]], out
    assert all(l.rstrip().endswith("ok") for l in rows), out
    assert any(l.startswith("# targets") for l in header)
