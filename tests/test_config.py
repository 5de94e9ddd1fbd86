"""The HAULER_* settings: one table in runtime/config.py, documented once in docs/settings.md."""
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import test_interpose as interposer
from hauler import config
from test_interpose import built  # noqa: F401 - the fixture compiling tests/interpose programs

ROOT = pathlib.Path(__file__).resolve().parent.parent
SETTINGS_DOC = ROOT / "docs" / "settings.md"
TABLE_HEADER = re.compile(r"^\|\s*Setting\s*\|\s*Default\s*\|", re.M)


def readme_table():
    """{name: (default, values, when, meaning)} from the settings table of docs/settings.md."""
    rows = {}
    header_seen = False
    for line in SETTINGS_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[:5] == ["Setting", "Default", "Values", "When", "Meaning"]:
            header_seen = True
            continue
        if header_seen and line.startswith("|") and cells[0].startswith("`HAULER_"):
            assert len(cells) == 5, f"docs/settings.md: a settings row has {len(cells)} cells: {line}"
            name = cells[0].strip("`")
            assert name not in rows, f"{name} is listed twice in docs/settings.md"
            rows[name] = (cells[1].strip("`"), cells[2], cells[3], cells[4])
    assert header_seen, "docs/settings.md has no '| Setting | Default | Values | When | Meaning |' table"
    return rows


def test_readme_lists_exactly_the_settings_with_their_defaults():
    table = readme_table()
    code = {s.name: s for s in config.SETTINGS}
    assert sorted(table) == sorted(code), "docs/settings.md and runtime/config.py disagree on names"
    for name, (default, values, when, meaning) in table.items():
        s = code[name]
        assert default == s.doc_default, f"{name}: docs default {default!r} != {s.doc_default!r}"
        assert values == s.doc_values, f"{name}: docs values {values!r} != {s.doc_values!r}"
        assert when == s.when, f"{name}: docs say {when!r}, config.py says {s.when!r}"
        assert meaning, f"{name}: docs give no meaning"


def test_the_settings_table_is_in_one_place():
    pages = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    holding = [p.relative_to(ROOT).as_posix() for p in pages if TABLE_HEADER.search(p.read_text())]
    assert holding == ["docs/settings.md"], f"a settings table in {holding}: keep the one in docs/settings.md"


def test_every_setting_named_in_the_code_is_in_the_table():
    """A HAULER_* string literal in the sources is a setting: it must be in the one table."""
    names = set()
    pattern = re.compile(r"""["'](HAULER_[A-Z0-9_]+)["']""")
    files = [ROOT / "setup.py"]
    for top, exts in (("runtime", ("*.py",)), ("bench", ("*.py",)), ("interpose", ("*.c", "*.cpp")),
                      ("csrc", ("*.cpp", "*.hpp", "*.h", "*.cu", "*.cuh"))):
        for ext in exts:
            files += list((ROOT / top).rglob(ext))
    for f in files:
        names |= set(pattern.findall(f.read_text(errors="replace")))
    unknown = sorted(names - {s.name for s in config.SETTINGS})
    assert not unknown, f"settings used in the code but missing from runtime/config.py: {unknown}"


def test_generated_cpp_table_is_current():
    """csrc/common/settings_table.h is config.cpp_table()'s output (setup.py rewrites it; the core
    tests and CI's nvcc runs compile the checked-in copy)."""
    header = ROOT / "csrc" / "common" / "settings_table.h"
    assert header.read_text() == config.cpp_table(), (
        "csrc/common/settings_table.h is stale: rebuild (setup.py regenerates it) and commit it")
    run = [s for s in config.SETTINGS if s.when == config.RUN]
    assert header.read_text().count("\nHAULER_SETTING(") == len(run)


def test_defaults_and_types(monkeypatch):
    for s in config.SETTINGS:
        monkeypatch.delenv(s.name, raising=False)
    assert config.get("HAULER_THREADS") == 0
    assert config.get("HAULER_PACK_PARALLEL_MIN") == 1048576
    assert config.get("HAULER_NO_CUDA") is False
    assert config.get("HAULER_CUDA_ARCH") == ("80",)
    assert config.get("HAULER_INTERPOSE_LOG") == "warning"
    assert config.get("HAULER_IO_BACKEND") == "auto"
    assert config.get("HAULER_CUDA_LIB") is None
    assert dict(config.items()).keys() == {s.name for s in config.SETTINGS}
    assert all(config.source(s.name) == "default" for s in config.SETTINGS)
    for s in config.SETTINGS:  # every default is a value of its own setting
        if s.default is not None:
            assert config.parse(s.name, config._to_text(s, s.default)) == s.default


@pytest.mark.parametrize("name,text,value", [
    ("HAULER_THREADS", "4", 4),
    ("HAULER_THREADS", " 8 ", 8),
    ("HAULER_THREADS", "\t1024\n", 1024),
    ("HAULER_THREADS", "007", 7),
    ("HAULER_PACK_PARALLEL_MIN", "0", 0),
    ("HAULER_PACK_PARALLEL_MIN", "9223372036854775807", 2**63 - 1),
    ("HAULER_IO_QUEUE_DEPTH", "1", 1),
    ("HAULER_NO_CUDA", "1", True),
    ("HAULER_NO_CUDA", "off", False),
    ("HAULER_INTERPOSE_P2P", " YES ", True),
    ("HAULER_CUDA_ARCH", "80,90", ("80", "90")),
    ("HAULER_CUDA_ARCH", "sm_90a, 8.6", ("90a", "86")),
    ("HAULER_INTERPOSE_LOG", "DEBUG", "debug"),
    ("HAULER_IO_BACKEND", "IO_uring", "io_uring"),
    ("HAULER_INTERPOSE_REPORT", " /tmp/r.%r ", "/tmp/r.%r"),
    ("HAULER_THREADS", "", 0),  # empty counts as unset
    ("HAULER_THREADS", "  ", 0),
])
def test_env_values_parse(monkeypatch, name, text, value):
    monkeypatch.setenv(name, text)
    assert config.get(name) == value


@pytest.mark.parametrize("name,text", [
    ("HAULER_THREADS", "abc"),
    ("HAULER_THREADS", "-1"),
    ("HAULER_THREADS", "+1"),
    ("HAULER_THREADS", "1.5"),
    ("HAULER_THREADS", "1 2"),
    ("HAULER_THREADS", "1025"),
    ("HAULER_PACK_PARALLEL_MIN", "1M"),
    ("HAULER_PACK_PARALLEL_MIN", "9223372036854775808"),
    ("HAULER_PACK_PARALLEL_MIN", "99999999999999999999"),
    ("HAULER_IO_QUEUE_DEPTH", "0"),
    ("HAULER_IO_QUEUE_DEPTH", "4097"),
    ("HAULER_NO_CUDA", "maybe"),
    ("HAULER_FORCE_CUDA", "2"),
    ("HAULER_INTERPOSE", "enabled"),
    ("HAULER_CUDA_ARCH", "volta"),
    ("HAULER_CUDA_ARCH", "80,,90"),
    ("HAULER_INTERPOSE_LOG", "loud"),
    ("HAULER_IO_BACKEND", "uring"),
    ("HAULER_INTERPOSE_MODEL", "a\nb"),
])
def test_bad_env_values_name_the_variable_and_the_value(monkeypatch, name, text):
    monkeypatch.setenv(name, text)
    with pytest.raises(config.ConfigError) as e:
        config.get(name)
    msg = str(e.value)
    assert msg == config.error_text(name, text)
    assert msg.startswith(f"{name}={config._quote(text)}: expected {config.setting(name).accepted}"), msg
    assert isinstance(e.value, ValueError)


def test_error_text_quotes_every_byte_the_same_way():
    assert config.error_text("HAULER_THREADS", "x") == "HAULER_THREADS='x': expected an integer from 0 to 1024"
    assert config._quote("a'b\\c\t\u00e9") == "'a\\x27b\\x5cc\\x09\\xc3\\xa9'"


def _core():
    from hauler import _core
    return _core


def _corpus(s):
    """Values around the edges of every rule: valid and invalid, spaces, case, bytes."""
    base = ["", " ", "0", "1", "01", " 8 ", "\t8\n", "-1", "+1", "1.0", "1e3", "0x10", "abc", "8 8",
            "\u0661", "\u00e9", "a\tb", "a\x7fb", "a'b", "\\", "TRUE", "yes", "On", "oFF", "no ",
            "maybe", "DEBUG", "Warning", "loud", "auto", "IO_URING", "threads", "uring", "builtin",
            "/tmp/x", "9223372036854775807", "9223372036854775808", "99999999999999999999"]
    if s.type in ("int", "bytes"):
        base += [str(s.lo), str(s.lo - 1), str(s.hi), str(s.hi + 1), f" {s.hi} "]
    return base


def test_core_parses_every_value_as_python_does():
    """csrc/common/settings.cpp's parse and config.parse agree on every run-time setting: the
    same canonical value, or the same error text."""
    core = _core()
    for s in config.SETTINGS:
        if s.when != config.RUN:
            continue
        for text in _corpus(s):
            try:
                want = config._to_text(s, config.parse(s.name, text))
            except config.ConfigError as e:
                want = e
            if isinstance(want, Exception):
                with pytest.raises(ValueError) as got:
                    core.parse_setting(s.name, text)
                assert str(got.value) == str(want), (s.name, text)
            else:
                assert core.parse_setting(s.name, text) == want, (s.name, text)


def test_set_reaches_the_core_and_leaves_the_environment_alone(monkeypatch):
    core = _core()
    monkeypatch.setenv("HAULER_THREADS", "3")
    config.set("HAULER_THREADS", None)  # drop any cached read: the environment applies again
    assert core.setting("HAULER_THREADS") == "3" and core.threads() == 3
    try:
        config.set("HAULER_THREADS", 5)
        assert config.get("HAULER_THREADS") == 5
        assert config.source("HAULER_THREADS") == "override"
        assert core.setting("HAULER_THREADS") == "5" and core.threads() == 5
        assert os.environ["HAULER_THREADS"] == "3"  # child processes see the environment
        with pytest.raises(config.ConfigError, match=r"HAULER_THREADS='-2'"):
            config.set("HAULER_THREADS", -2)
        with pytest.raises(config.ConfigError, match=r"HAULER_THREADS=True"):
            config.set("HAULER_THREADS", True)
        assert config.get("HAULER_THREADS") == 5 and core.threads() == 5  # a rejected value changes nothing
        with pytest.raises(config.ConfigError, match="build-time"):
            config.set("HAULER_NO_CUDA", True)
        with pytest.raises(KeyError, match="HAULER_NOPE"):
            config.set("HAULER_NOPE", 1)
        with pytest.raises(ValueError, match="unknown hauler setting 'HAULER_NOPE'"):
            core.set_setting("HAULER_NOPE", "1")
        config.set("HAULER_IO_BACKEND", "THREADS")
        assert core.setting("HAULER_IO_BACKEND") == "threads" and config.get("HAULER_IO_BACKEND") == "threads"
        from hauler import io
        assert io.backend() == "threads"
    finally:
        config.reset()
    assert config.get("HAULER_THREADS") == 3 and core.threads() == 3
    assert config.source("HAULER_THREADS") == "env"
    assert core.setting("HAULER_IO_BACKEND") == (os.environ.get("HAULER_IO_BACKEND", "").strip().lower() or "auto")


def test_core_reads_a_setting_once_until_the_setter_changes_it(monkeypatch):
    """Use sites read the cached value: a later change of the environment (which the core no
    longer reads per call) takes effect only through config.set / reset."""
    core = _core()
    monkeypatch.setenv("HAULER_GATHER_PREFETCH", "512")
    config.set("HAULER_GATHER_PREFETCH", None)
    assert core.setting("HAULER_GATHER_PREFETCH") == "512"
    monkeypatch.setenv("HAULER_GATHER_PREFETCH", "1024")
    assert core.setting("HAULER_GATHER_PREFETCH") == "512"
    config.set("HAULER_GATHER_PREFETCH", None)
    assert core.setting("HAULER_GATHER_PREFETCH") == "1024"
    monkeypatch.setenv("HAULER_GATHER_PREFETCH", "lots")
    config.set("HAULER_GATHER_PREFETCH", None)
    for _ in range(2):  # an invalid value is not cached: every read reports it
        with pytest.raises(ValueError, match="HAULER_GATHER_PREFETCH='lots'"):
            core.setting("HAULER_GATHER_PREFETCH")
    monkeypatch.delenv("HAULER_GATHER_PREFETCH")
    config.set("HAULER_GATHER_PREFETCH", None)
    assert core.setting("HAULER_GATHER_PREFETCH") == "4096"
    assert core.setting("HAULER_CUDA_LIB") is None or "HAULER_CUDA_LIB" in os.environ


def _invalid(s):
    """One invalid spelling of setting s (every setting has one)."""
    if s.type in ("int", "bytes"):
        return str(s.lo - 1) if s.lo > 0 else str(s.hi + 1)
    return {"bool": "maybe", "choice": "loud", "arch": "volta", "str": "a\tb", "path": "a\tb"}[s.type]


_CHILD = r"""
import json, sys
from hauler import config, _core
out = {}
for name in sys.argv[1:]:
    try:
        config.get(name)
        py = None
    except config.ConfigError as e:
        py = str(e)
    core = None
    if config.setting(name).when == config.RUN:
        try:
            _core.setting(name)
        except ValueError as e:
            core = [type(e).__name__, str(e)]
    out[name] = [py, core]
print(json.dumps(out))
"""


def test_every_setting_refuses_an_invalid_value_alike_in_python_and_the_core():
    """A fresh process with every HAULER_* variable invalid: config.get and the core's own read
    (the cached slot its use sites read) raise the same text, naming the value and what is accepted."""
    import json
    env = dict(os.environ)
    env.update({s.name: _invalid(s) for s in config.SETTINGS})
    p = subprocess.run([sys.executable, "-c", _CHILD] + [s.name for s in config.SETTINGS],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    for s in config.SETTINGS:
        want = config.error_text(s.name, _invalid(s))
        py, core = got[s.name]
        assert py == want, s.name
        if s.when == config.RUN:
            assert core == ["InvalidArgument", want], s.name


_USE_SITES = r"""
import numpy as np, sys
from hauler import io
from hauler.datatype import Datatype, DOUBLE
try:
    Datatype.vector(4, 1, 2, DOUBLE).pack(np.zeros(8))
except ValueError as e:
    print("pack:", e)
try:
    with io.File(sys.argv[1], "w") as f:
        f.pwrite(np.zeros(4096, np.uint8)).result()
except ValueError as e:
    print("io:", e)
"""


def test_use_sites_refuse_an_invalid_environment_value(tmp_path):
    """The core's readers themselves (a pack, a file write) refuse the invalid variable."""
    env = dict(os.environ, HAULER_PACK_STREAM_MIN="lots", HAULER_IO_QUEUE_DEPTH="0")
    p = subprocess.run([sys.executable, "-c", _USE_SITES, str(tmp_path / "f.bin")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert ("pack: " + config.error_text("HAULER_PACK_STREAM_MIN", "lots")) in p.stdout, p.stdout
    assert ("io: " + config.error_text("HAULER_IO_QUEUE_DEPTH", "0")) in p.stdout, p.stdout


def test_bad_value_in_a_fresh_process_gives_the_precise_error():
    env = dict(os.environ, HAULER_PACK_PARALLEL_MIN="lots")
    p = subprocess.run([sys.executable, "-c",
                        "from hauler import config; config.get('HAULER_PACK_PARALLEL_MIN')"],
                       env=env, capture_output=True, text=True)
    assert p.returncode != 0
    assert ("ConfigError: HAULER_PACK_PARALLEL_MIN='lots': expected a number of bytes from 0 to 2^63-1"
            in p.stderr), p.stderr


# The settings the MPI shim reads at MPI_Init (interpose/settings.cpp).
SHIM_READS = ["HAULER_INTERPOSE", "HAULER_INTERPOSE_PACK", "HAULER_INTERPOSE_P2P", "HAULER_INTERPOSE_COLL",
              "HAULER_INTERPOSE_GPU", "HAULER_INTERPOSE_LOG", "HAULER_INTERPOSE_REPORT",
              "HAULER_INTERPOSE_MODEL", "HAULER_INTERPOSE_TRIALS", "HAULER_INTERPOSE_PIPELINE",
              "HAULER_INTERPOSE_PIPELINE_CHUNK", "HAULER_THREADS", "HAULER_PACK_PARALLEL_MIN",
              "HAULER_PACK_STREAM_MIN", "HAULER_CUDA_LIB"]


def test_shim_reads_its_settings_through_the_table():
    src = (ROOT / "interpose" / "settings.cpp").read_text()
    read = {"HAULER_" + i.upper() for i in re.findall(r"hs::Id::(\w+)", src)}
    assert read == set(SHIM_READS)
    for f in (ROOT / "interpose").glob("*.cpp"):  # no HAULER_* variable read around the table
        assert not re.search(r"getenv\(\s*\"HAULER_(?!THREADS\"\))", f.read_text()), f


@pytest.mark.parametrize("flav", ["openmpi", "mpich"])
def test_shim_refuses_every_invalid_value_once_and_passes_through(flav, built, tmp_path):
    """Every setting the shim reads invalid at once: each is reported on stderr once per rank
    with the text Python and the core give, and the program gets the library's own results."""
    prog = built(flav, "p2p")
    lib, out = str(tmp_path / "lib"), str(tmp_path / "shim")
    interposer._launch(flav, 2, [prog, lib, "11"], shim=False)
    bad = {n: _invalid(config.setting(n)) for n in SHIM_READS}
    p = interposer._launch(flav, 2, [prog, out, "11"], shim=True, env_extra=bad)
    text = p.stdout.decode(errors="replace")
    for name, value in bad.items():
        assert text.count(config.error_text(name, value)) == 2, (name, text[-3000:])
    interposer._compare(lib, out, 2)


@pytest.mark.parametrize("bad,off", [
    ({"HAULER_INTERPOSE_P2P": "sometimes", "HAULER_INTERPOSE_PACK": "2", "HAULER_INTERPOSE_COLL": "x"},
     "p2p pack coll"),
    ({"HAULER_PACK_STREAM_MIN": "lots"}, "p2p pack coll"),
    ({"HAULER_INTERPOSE_P2P": "nope"}, "p2p"),
])
def test_shim_turns_off_what_an_invalid_setting_steers(bad, off, built, tmp_path):
    """An invalid switch or engine setting falls back to pass-through for what it steers (never
    to "on"); the report shows it and the rest still packs."""
    flav = "openmpi" if shutil.which("mpiexec.openmpi") else "mpich"
    rep = interposer._run_pair(flav, 2, [built(flav, "p2p"), "7"], tmp_path, extra=bad)
    t = interposer._report(rep, 2)
    assert (t["packed_msgs"] == 0) == ("p2p" in off), t
    assert (t["mpi_pack"] == 0) == ("pack" in off), t
    assert (t["coll_packed"] == 0) == ("coll" in off), t
