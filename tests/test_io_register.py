"""io_uring registration (HAULER_IO_REGISTER): bounced tasks run as read_fixed/write_fixed on the
registered bounce arena and requests of many tasks on a registered file; the bytes are the same
with registration on and off; a registration that fails (RLIMIT_MEMLOCK without CAP_IPC_LOCK)
falls back to the plain ops and says so."""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hauler import config, io
from support.io_backends import disk_bytes, using


@pytest.fixture
def uring():
    with using("io_uring", HAULER_IO_TASK_SIZE=64 * 1024):
        try:
            yield
        finally:
            config.set("HAULER_IO_REGISTER", None)


def exercise(path, seed):
    """Unaligned (bounced) and aligned many-task writes and reads; returns what was read."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, 2 << 20, dtype=np.uint8)        # 32 tasks of 64 KiB, aligned
    odd = rng.integers(0, 256, 700001, dtype=np.uint8)
    with io.File(path, "w+") as f:
        assert f.direct, f.direct_reason    # bounce buffers exist only for O_DIRECT
        f.write(big)
        f.write(odd[3:], offset=(2 << 20) + 777)               # misaligned: bounced tasks
        back = np.zeros(len(odd) + 5, np.uint8)
        f.read_into(back[2:2 + len(odd) - 3], offset=(2 << 20) + 777)
        whole = np.zeros(2 << 20, np.uint8)
        f.read_into(whole)
    assert bytes(back[2:2 + len(odd) - 3]) == odd[3:].tobytes()
    assert whole.tobytes() == big.tobytes()
    assert disk_bytes(path, 0, len(big)) == big.tobytes()
    assert disk_bytes(path, (2 << 20) + 777, len(odd) - 3) == odd[3:].tobytes()
    return back, whole


@pytest.mark.parametrize("register", [True, False])
def test_same_bytes_and_fixed_ops_only_when_on(tmp_path, uring, register):
    config.set("HAULER_IO_REGISTER", register)
    before = io.counters()
    exercise(tmp_path / "f", 5)
    after = io.counters()
    fixed_buf = after["fixed_buffer_ops"] - before["fixed_buffer_ops"]
    fixed_file = after["fixed_file_ops"] - before["fixed_file_ops"]
    assert after["ops"] > before["ops"]
    if register:
        assert fixed_buf > 0 and fixed_file > 0, (before, after, io.registration())
        assert "bounce arena registered" in io.registration()
        assert "file registered" in io.registration()
        assert not io.registration_failed()
        assert "registration: bounce arena registered" in io.backend_description()
    else:
        assert fixed_buf == 0 and fixed_file == 0, (before, after)
        assert io.registration() == "off (HAULER_IO_REGISTER=0)"


def test_on_and_off_read_the_same_file_identically(tmp_path, uring):
    p = tmp_path / "f"
    data = np.random.default_rng(9).integers(0, 256, 3 << 20, dtype=np.uint8)
    data.tofile(p)
    got = {}
    for register in (True, False):
        config.set("HAULER_IO_REGISTER", register)
        with io.File(p, "r") as f:
            out = np.zeros(len(data) + 1, np.uint8)
            f.read_into(out[1:len(data) - 4096], offset=4097)   # misaligned memory and offset
            got[register] = out.tobytes()
    assert got[True] == got[False]
    assert got[True][1:len(data) - 4096] == data[4097:].tobytes()


FALLBACK = textwrap.dedent(r"""
    import os, sys
    import numpy as np
    from hauler import io
    path = sys.argv[1]
    data = np.random.default_rng(3).integers(0, 256, 1 << 20, dtype=np.uint8)
    with io.File(path, "w+") as f:
        f.write(data[5:], offset=11)                      # bounced: the arena is registered now
        out = np.zeros(len(data) - 5, np.uint8)
        f.read_into(out, offset=11)
    assert out.tobytes() == data[5:].tobytes()
    c = io.counters()
    assert c["ops"] > 0 and c["fixed_buffer_ops"] == 0, c
    assert io.registration_failed()
    print(io.registration())
    print(io.backend_description())
""")


def test_memlock_too_small_falls_back_and_says_so(tmp_path, uring):
    # root has CAP_IPC_LOCK, which lifts RLIMIT_MEMLOCK for io_uring: drop it with setpriv
    setpriv = shutil.which("setpriv")
    if os.geteuid() == 0 and setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_IPC_LOCK as root")
    cmd = [sys.executable, "-c", FALLBACK, str(tmp_path / "f")]
    if os.geteuid() == 0:
        cmd = [setpriv, "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--"] + cmd

    def tiny_memlock():
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, 64 * 1024))

    env = dict(os.environ, HAULER_IO_BACKEND="io_uring", HAULER_IO_REGISTER="1")
    r = subprocess.run(cmd, env=env, preexec_fn=tiny_memlock, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    reg, desc = r.stdout.strip().splitlines()[-2:]
    assert "FALLBACK: bounce arena NOT registered" in reg and "ENOMEM" in reg, reg
    assert "RLIMIT_MEMLOCK" in reg
    assert "FALLBACK" in desc and "ENOMEM" in desc, desc


@pytest.mark.parametrize("qd", [32, 4])
def test_a_request_within_the_queue_depth_sleeps_once(tmp_path, qd):
    """16 tasks of 64 KiB: with all of them in the queue (qd 32) the thread sleeps once for the
    whole request, not once per completion; with qd 4 it wakes to refill the queue (at least 4
    times). The bytes read are the file's either way."""
    with using("io_uring", HAULER_IO_TASK_SIZE=64 * 1024, HAULER_IO_QUEUE_DEPTH=qd):
        data = np.random.default_rng(qd).integers(0, 256, 1 << 20, dtype=np.uint8)
        path = tmp_path / "f"
        path.write_bytes(data.tobytes())
        raw = np.zeros((1 << 20) + 4096, np.uint8)
        back = raw[(-raw.ctypes.data) % 4096:][:1 << 20]
        with io.File(path, "r") as f:
            before = io.counters()["waits"]
            f.read_into(back)
            waits = io.counters()["waits"] - before
        assert back.tobytes() == data.tobytes()
        if qd == 32:
            assert waits == 1 if f.direct else waits >= 1   # buffered reads may come back short
        else:
            assert waits >= 4
