"""The HAULER_* settings: one table in runtime/config.py, documented once in the README."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

from hauler import config

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def readme_table():
    """{name: (default, when, meaning)} from the README's settings table."""
    rows = {}
    header_seen = False
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[:4] == ["Setting", "Default", "When", "Meaning"]:
            header_seen = True
            continue
        if header_seen and line.startswith("|") and cells[0].startswith("`HAULER_"):
            assert len(cells) == 4, f"README settings row has {len(cells)} cells: {line}"
            name = cells[0].strip("`")
            assert name not in rows, f"{name} is listed twice in the README"
            rows[name] = (cells[1].strip("`"), cells[2], cells[3])
    assert header_seen, "README has no '| Setting | Default | When | Meaning |' table"
    return rows


def test_readme_lists_exactly_the_settings_with_their_defaults():
    table = readme_table()
    code = {s.name: s for s in config.SETTINGS}
    assert sorted(table) == sorted(code), "README table and runtime/config.py disagree on names"
    for name, (default, when, meaning) in table.items():
        s = code[name]
        assert default == s.doc_default, f"{name}: README default {default!r} != {s.doc_default!r}"
        assert when == s.when, f"{name}: README says {when!r}, config.py says {s.when!r}"
        assert meaning, f"{name}: README gives no meaning"


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


def test_defaults_and_types(monkeypatch):
    for s in config.SETTINGS:
        monkeypatch.delenv(s.name, raising=False)
    assert config.get("HAULER_THREADS") == 0
    assert config.get("HAULER_PACK_PARALLEL_MIN") == 1048576
    assert config.get("HAULER_NO_CUDA") is False
    assert config.get("HAULER_CUDA_ARCH") == ("80",)
    assert config.get("HAULER_LOG_LEVEL") == "warning"
    assert config.get("HAULER_CUDA_LIB") is None
    assert dict(config.items()).keys() == {s.name for s in config.SETTINGS}
    assert all(config.source(s.name) == "default" for s in config.SETTINGS)


@pytest.mark.parametrize("name,text,value", [
    ("HAULER_THREADS", "4", 4),
    ("HAULER_THREADS", " 8 ", 8),
    ("HAULER_PACK_PARALLEL_MIN", "0", 0),
    ("HAULER_NO_CUDA", "1", True),
    ("HAULER_NO_CUDA", "off", False),
    ("HAULER_CUDA_ARCH", "80,90", ("80", "90")),
    ("HAULER_CUDA_ARCH", "sm_90a, 8.6", ("90a", "86")),
    ("HAULER_LOG_LEVEL", "DEBUG", "debug"),
    ("HAULER_THREADS", "", 0),  # empty counts as unset
])
def test_env_values_parse(monkeypatch, name, text, value):
    monkeypatch.setenv(name, text)
    assert config.get(name) == value


@pytest.mark.parametrize("name,text", [
    ("HAULER_THREADS", "abc"),
    ("HAULER_THREADS", "-1"),
    ("HAULER_THREADS", "1.5"),
    ("HAULER_PACK_PARALLEL_MIN", "1M"),
    ("HAULER_PACK_PARALLEL_MIN", "99999999999999999999"),
    ("HAULER_NO_CUDA", "maybe"),
    ("HAULER_FORCE_CUDA", "2"),
    ("HAULER_CUDA_ARCH", "volta"),
    ("HAULER_CUDA_ARCH", "80,,90"),
    ("HAULER_LOG_LEVEL", "loud"),
])
def test_bad_env_values_name_the_variable_and_the_value(monkeypatch, name, text):
    monkeypatch.setenv(name, text)
    with pytest.raises(config.ConfigError) as e:
        config.get(name)
    msg = str(e.value)
    assert msg.startswith(f"{name}={text!r}: expected "), msg
    assert isinstance(e.value, ValueError)


def test_runtime_override_validates_and_reaches_the_environment(monkeypatch):
    monkeypatch.setenv("HAULER_THREADS", "3")
    try:
        config.set("HAULER_THREADS", 5)
        assert config.get("HAULER_THREADS") == 5
        assert config.source("HAULER_THREADS") == "override"
        assert os.environ["HAULER_THREADS"] == "5"  # the C++ core reads the variable itself
        with pytest.raises(config.ConfigError, match=r"HAULER_THREADS='-2'"):
            config.set("HAULER_THREADS", -2)
        assert config.get("HAULER_THREADS") == 5  # a rejected value changes nothing
        with pytest.raises(config.ConfigError, match="build-time"):
            config.set("HAULER_NO_CUDA", True)
        with pytest.raises(KeyError, match="HAULER_NOPE"):
            config.set("HAULER_NOPE", 1)
    finally:
        config.set("HAULER_THREADS", None)
    assert config.get("HAULER_THREADS") == 3
    assert os.environ["HAULER_THREADS"] == "3"
    assert config.source("HAULER_THREADS") == "env"


def test_bad_value_in_a_fresh_process_gives_the_precise_error():
    env = dict(os.environ, HAULER_PACK_PARALLEL_MIN="lots")
    p = subprocess.run([sys.executable, "-c",
                        "from hauler import config; config.get('HAULER_PACK_PARALLEL_MIN')"],
                       env=env, capture_output=True, text=True)
    assert p.returncode != 0
    assert "ConfigError: HAULER_PACK_PARALLEL_MIN='lots': expected a non-negative integer" in p.stderr
