"""hauler.offload's failures are never silent, and its files never outlive it: a full file
system (a real 2 MiB tmpfs) and a file size limit (RLIMIT_FSIZE: EFBIG) raise in the step, or with
on_error="keep" train on from memory with one warning and a count; bytes_written counts only
bytes written. Files go with close(), garbage collection, interpreter exit, and a SIGKILL'd
run's files with the next run in the same directory."""
from __future__ import annotations

import contextlib
import errno
import gc
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import pytest

torch = pytest.importorskip("torch")

from hauler.errors import HaulerIOError  # noqa: E402
from hauler.offload import OffloadPathNotice, offload  # noqa: E402
from support.offload_device import emulated_device, train_step  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EACH = 256 * 256 * 4   # bytes of one saved activation of mlp() on a (256, 256) batch


def mlp(seed=0, width=256, depth=8):
    torch.manual_seed(seed)
    return torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU())
                                 for _ in range(depth)])


@pytest.fixture
def small_fs(tmp_path):
    """A real 2 MiB file system: 17 activations of 256 KiB do not fit."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        gc.collect()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("device", [None, "bounce", "direct"])
def test_full_disk_raises_in_the_step(small_fs, device):
    model, x = mlp(), torch.randn(256, 256)
    with emulated_device(device == "direct") if device else contextlib.nullcontext(), warnings.catch_warnings():
        warnings.simplefilter("ignore", OffloadPathNotice)
        off = offload(small_fs, min_bytes=1024, keep_last=0, keep_files=0)
        with pytest.raises(HaulerIOError) as e:
            train_step(model, x, off, wait=True)
        try:   # a raise in the forward pass leaves writes in flight: let them end
            off.wait_writes()
        except HaulerIOError:
            pass
        assert e.value.errno == errno.ENOSPC
        assert "still in memory" in str(e.value)
        s = off.stats
        assert s["failed_writes"] > 0
        written = sum(1 for r in off._handles if r() is not None and r().written)
        assert s["bytes_written"] == written * EACH < 2 << 20      # only what reached the disk
        # every saved tensor is written, failed, or freed by autograd before its write began
        assert s["bytes_written"] + s["bytes_failed"] + s["bytes_dropped"] == s["saved"] * EACH
        off.close()


@pytest.mark.parametrize("device", [None, "bounce", "direct"])
def test_full_disk_with_keep_trains_on_from_memory(small_fs, device):
    model, x = mlp(), torch.randn(256, 256)
    ref = train_step(model, x)
    with emulated_device(device == "direct") if device else contextlib.nullcontext(), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        off = offload(small_fs, min_bytes=1024, keep_last=0, keep_files=0, on_error="keep")
        for _ in range(2):
            got = train_step(model, x, off, wait=True)
            assert all(torch.equal(a, b) for a, b in zip(ref, got))
        full = [w for w in seen if issubclass(w.category, ResourceWarning) and "could not be written" in str(w.message)]
        assert len(full) == 1 and "on_error='keep'" in str(full[0].message)
        s = off.stats
        assert s["failed_writes"] > 0 and s["bytes_read"] > 0      # some went to disk and came back
        # every saved tensor is written, failed, or freed by autograd before its write began
        assert s["bytes_written"] + s["bytes_failed"] + s["bytes_dropped"] == s["saved"] * EACH
        off.close()
    assert os.listdir(small_fs) == []


EFBIG_SCRIPT = textwrap.dedent("""
    import errno, json, resource, sys, warnings, torch
    from hauler.errors import HaulerIOError
    from hauler.offload import offload
    resource.setrlimit(resource.RLIMIT_FSIZE, (128 << 10, 128 << 10))   # python ignores SIGXFSZ
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 256))
    x = torch.randn(256, 256)
    from support.offload_device import train_step
    res = {}
    off = offload(sys.argv[1], min_bytes=1024)
    try:
        train_step(model, x, off, wait=True)
    except HaulerIOError as e:
        res["raised"] = errno.errorcode.get(e.errno)
    res["bytes_written"] = off.stats["bytes_written"]
    off.close()
    ref = train_step(model, x)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        off = offload(sys.argv[1], min_bytes=1024, on_error="keep")
        got = train_step(model, x, off, wait=True)
    res["equal"] = all(torch.equal(a, b) for a, b in zip(ref, got))
    res["failed_writes"] = off.stats["failed_writes"]
    res["warnings"] = [str(w.message) for w in seen]
    off.close()
    print(json.dumps(res))
""")


def test_file_size_limit_efbig(tmp_path):
    import json
    r = subprocess.run([sys.executable, "-c", EFBIG_SCRIPT, str(tmp_path / "acts")], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests")))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["raised"] == "EFBIG" and res["bytes_written"] == 0
    assert res["equal"] and res["failed_writes"] >= 3
    assert len(res["warnings"]) == 1 and "EFBIG" in res["warnings"][0]


def _subdirs(d):
    return sorted(n for n in os.listdir(d) if n.startswith("offload-"))


def test_files_go_with_close_and_garbage_collection(tmp_path):
    model, x = mlp(), torch.randn(256, 256)
    off = offload(tmp_path, min_bytes=1024)
    train_step(model, x, off, wait=True)
    assert _subdirs(tmp_path)
    off.close()
    assert _subdirs(tmp_path) == []
    off = offload(tmp_path, min_bytes=1024)
    with off:
        loss = model(x).square().mean()
    off.wait_writes()
    assert len(os.listdir(off.directory)) > 1
    del off, loss       # the graph's handles held the Offload; now nothing does
    gc.collect()
    assert _subdirs(tmp_path) == []


EXIT_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    from hauler.offload import offload
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 256))
    off = offload(sys.argv[1], min_bytes=1024, keep_last=0)
    with off:
        loss = model(torch.randn(256, 256)).square().mean()
    off.wait_writes()
    print(off.directory, len(os.listdir(off.directory)), flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    GLOBAL = (off, loss)    # neither closed nor collected before the interpreter exits
""")


def test_files_go_at_interpreter_exit(tmp_path):
    r = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(tmp_path), "exit"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    path, n = r.stdout.split()
    assert int(n) > 1 and os.path.dirname(path) == str(tmp_path)
    assert not os.path.exists(path) and _subdirs(tmp_path) == []


def test_killed_runs_files_removed_by_the_next_run(tmp_path):
    r = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(tmp_path), "kill"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    path, n = r.stdout.split()
    assert int(n) > 1 and len(os.listdir(path)) == int(n)    # SIGKILL: nothing ran, the files stay
    off = offload(tmp_path)                                  # the next run in the same directory
    assert not os.path.exists(path) and _subdirs(tmp_path) == [os.path.basename(off.directory)]
    off.close()


def test_default_directory_is_found_again_after_a_crash(tmp_path):
    """Without a directory, offload writes under <tmp>/hauler-offload-<uid>, so a killed run's
    files there are removed by the next run too."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    script = EXIT_SCRIPT.replace("offload(sys.argv[1], ", "offload(None, ")
    r = subprocess.run([sys.executable, "-c", script, "-", "kill"], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == -signal.SIGKILL, r.stderr
    path = r.stdout.split()[0]
    parent = tmp_path / f"hauler-offload-{os.geteuid()}"
    assert os.path.dirname(path) == str(parent) and os.path.isdir(path)
    r = subprocess.run([sys.executable, "-c", "from hauler.offload import offload; offload().close()"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(path) and os.listdir(parent) == []
