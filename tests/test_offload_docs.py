"""The python blocks of docs/training-offload.md run as written (until tests/test_readme.py runs
every docs/*.md block)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch")

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "training-offload.md")


def blocks():
    with open(DOC) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_doc_has_an_example():
    assert blocks()


@pytest.mark.parametrize("i", range(len(blocks())))
def test_doc_example_runs(i, tmp_path):
    r = subprocess.run([sys.executable, "-c", blocks()[i]], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    path, saved, written, failed = r.stdout.split()
    assert path == "host" and int(saved) > 0 and int(written) > 0 and failed == "0"
